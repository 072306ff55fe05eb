"""`make demo` protects the first thing a new user runs: it must finish and show its results."""

from cutout.demo import run_demo


def test_demo_runs_every_step_and_writes_the_report(tmp_path):
    run_demo(tmp_path, pairs=8, epochs=1, input_size=64, batch_size=4, held_out=2)

    cutouts = sorted(p.name for p in (tmp_path / "cutouts" / "int8").iterdir())
    assert len(cutouts) == 2 and all(name.endswith(".png") for name in cutouts)
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("IoU") == 3  # the mean in the summary and one per photo
    assert len(list((tmp_path / "report" / "img").iterdir())) == 2 * 4  # photo, true, predicted, cutout
    assert (tmp_path / "model" / "u2netp-demo.onnx").stat().st_size > 1_000_000
    assert (tmp_path / "model" / "u2netp-demo-int8.onnx").exists()
