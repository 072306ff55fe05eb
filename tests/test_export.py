"""ONNX export protects: the I/O contract rembg and Triton rely on, and agreement with PyTorch."""

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from cutout.cli import app
from cutout.model import load_weights
from cutout.model.inference import OnnxPredictor, TorchPredictor, preprocess
from helpers import product_photo


@pytest.fixture(scope="module")
def exported(u2netp_weights, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "u2netp.onnx"
    result = CliRunner().invoke(app, ["export", "onnx", "--model", str(u2netp_weights), "-o", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_onnx_takes_input_and_gives_the_fused_map_first(exported):
    graph = onnx.load(str(exported)).graph
    assert [i.name for i in graph.input] == ["input"]
    assert graph.output[0].name == "fused"
    dims = graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and dims[1].dim_value == 3


@pytest.mark.parametrize(("batch", "height", "width"), [(1, 320, 320), (3, 320, 320), (1, 321, 241)])
def test_onnx_runtime_matches_pytorch(exported, u2netp_weights, batch, height, width):
    rng = np.random.default_rng(batch)
    inputs = rng.standard_normal((batch, 3, height, width)).astype(np.float32)
    expected = TorchPredictor(load_weights(u2netp_weights)).predict(inputs)
    actual = OnnxPredictor(exported).predict(inputs)
    assert actual.shape == (batch, height, width)
    assert np.abs(actual - expected).max() <= 1e-4


def test_int8_export_needs_calibration_photos(u2netp_weights, tmp_path):
    runner = CliRunner()
    refused = runner.invoke(app, ["export", "onnx", "--model", str(u2netp_weights), "-o", "x.onnx", "--int8"])
    assert refused.exit_code == 2
    assert "--calibration" in refused.output

    photos = tmp_path / "calibration"
    photos.mkdir()
    for seed in range(4):
        product_photo(seed=seed).save(photos / f"{seed}.jpg")
    (photos / "broken.jpg").write_bytes(b"not a photo")
    out = tmp_path / "int8.onnx"
    args = [
        "export",
        "onnx",
        "--model",
        str(u2netp_weights),
        "-o",
        str(out),
        "--int8",
        "--calibration",
        str(photos),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    model = onnx.load(str(out))
    assert any(node.op_type == "QuantizeLinear" for node in model.graph.node)
    probabilities = OnnxPredictor(out).predict(preprocess(product_photo(seed=9))[np.newaxis])
    assert probabilities.shape == (1, 320, 320)
    assert probabilities.min() >= 0.0 and probabilities.max() <= 1.0


def test_int8_calibration_folder_without_photos_is_an_error(u2netp_weights, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["export", "onnx", "--model", str(u2netp_weights), "-o", str(tmp_path / "q.onnx"), "--int8",
            "--calibration", str(empty)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "no readable photos" in result.output


def test_export_takes_a_registered_model(u2netp_checkpoint, mlflow_local, tmp_path):
    """`cutout export onnx --model models:/cutout@champion`: every model reference, not only files."""
    from cutout.platform import registry
    from cutout.platform.tracking import configure_tracking, start_run
    from cutout.train import logged_model

    configure_tracking()
    with start_run(run_name="export") as run:
        logged_model.log_model(str(u2netp_checkpoint), onnx=False)
    version = registry.register_model(run.info.run_id, metrics={"mean_iou": 0.9})
    registry.record_promotion("cutout", version, True, {"reason": "first model"})
    out = tmp_path / "champion.onnx"

    result = CliRunner().invoke(app, ["export", "onnx", "--model", "models:/cutout@champion", "-o", str(out)])

    assert result.exit_code == 0, result.output
    exported, original = OnnxPredictor(out), TorchPredictor(load_weights(u2netp_checkpoint), input_size=160)
    batch = preprocess(product_photo(120, 160, seed=4), 160)[np.newaxis]
    assert exported.input_size == 160  # the checkpoint's size travelled through the registry
    np.testing.assert_allclose(exported.predict(batch), original.predict(batch), atol=1e-4)
