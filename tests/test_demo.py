"""`make demo` protects the first thing a new user runs: every step of the loop, and where its results are."""

import json

from mlflow.tracking import MlflowClient

from cutout.demo import DemoSettings, run_demo
from cutout.model.loader import load_predictor

TINY = DemoSettings(pairs=36, photo_size=(80, 120), copies=1, epochs=1, input_size=48, finish_epochs=1,
                    finish_size=64, batch_size=2, workers=2, held_out=2, served=2)  # fmt: skip


def test_demo_runs_the_loop_and_promotes_its_model(tmp_path):
    mean_iou = run_demo(tmp_path, TINY)

    assert 0.0 <= mean_iou <= 1.0
    for step in ("raw", "clean", "clustered", "augmented"):  # each data step wrote its manifest
        assert (tmp_path / step / "manifest.jsonl").stat().st_size > 0
    # two Horovod workers trained at a low resolution, then fine-tuned that model at a higher one
    low, run = (
        json.loads((tmp_path / f"run-{stage}.json").read_text()) for stage in ("low-resolution", "final")
    )
    assert run["model_uri"].startswith("models:/") and run["run_id"] != low["run_id"]
    assert load_predictor(run["checkpoint"]).input_size == TINY.finish_size
    metrics = json.loads((tmp_path / "evaluation" / "metrics.json").read_text())
    assert {"mean_iou", "iou_ge_0.95", "mean_boundary_iou"} <= metrics.keys()

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    champion = client.get_model_version_by_alias("cutout", "champion")
    assert str(champion.version) == "1" and champion.run_id == run["run_id"]
    assert float(champion.tags["mean_iou"]) == metrics["mean_iou"]

    cutouts = sorted(p.name for p in (tmp_path / "cutouts").iterdir())
    assert len(cutouts) == 2 and all(name.endswith(".png") for name in cutouts)
    page = (tmp_path / "report" / "index.html").read_text()
    assert page.count("IoU") == 3  # the mean in the summary and one per photo
    assert len(list((tmp_path / "report" / "img").iterdir())) == 2 * 4  # photo, true, predicted, cutout

    assert "routing_threshold" in client.get_model_version("cutout", "1").tags  # calibrated on the holdout
    feedback = tmp_path / "feedback"  # the photos sent through the local servers were routed
    routed = list((feedback / "retrain" / "auto" / "records").glob("*.json"))
    routed += list((feedback / "review" / "pending").glob("*/item.json"))
    assert len(routed) == TINY.served
