"""The registry protects: the MLflow round trip against a live server (log, register, alias, load by
`models:/cutout@champion` through MLflow and through our loader), a registry started from a built-in
model, and `cutout promote` applying the promotion gate."""

from __future__ import annotations

import base64
import io
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner, Result

from cutout.cli import app
from cutout.data.manifest import copy_pairs, read_manifest
from cutout.data.real import REAL_PHOTOS
from cutout.model.inference import predict_probabilities
from cutout.model.loader import load_predictor
from cutout.model.weights import load_model, save_checkpoint
from cutout.platform import registry
from cutout.platform.names import CHAMPION, CHAMPION_URI, ModelRef, is_registry_uri, version_uri
from cutout.platform.tracking import configure_tracking, start_run
from cutout.train import logged_model
from helpers import official_state_dict, product_photo

INPUT_SIZE = 160  # small, to keep the test fast; it travels in the checkpoint


@pytest.fixture(scope="module")
def runs(mlflow_server, u2netp_weights, tmp_path_factory) -> dict[str, str]:
    """Two training runs on the live server, each with a logged model: `a` (with ONNX) and `b`."""
    folder = tmp_path_factory.mktemp("registry")
    model = load_model(u2netp_weights)[0]
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        configure_tracking(mlflow_server)
        try:
            ids = {}
            for label, seed, onnx in (("a", 1, True), ("b", 2, False)):
                model.load_state_dict(official_state_dict("u2netp", seed))
                checkpoint = folder / f"{label}.ckpt"
                save_checkpoint(checkpoint, model, "u2netp", input_size=INPUT_SIZE)
                with start_run(run_name=label) as run:
                    logged_model.log_model(str(checkpoint), onnx=onnx)
                ids[label] = run.info.run_id
                ids[f"{label}_checkpoint"] = str(checkpoint)
        finally:
            mlflow.set_tracking_uri(None)
    return ids


def _photos() -> list:
    return [product_photo(200, 300, seed=0), product_photo(123, 77, seed=1)]


def _as_base64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_round_trip_through_the_champion_alias(runs, mlflow_tracking):
    version = registry.register_model(runs["a"], "cutout", metrics={"mean_iou": 0.9})
    registry.record_promotion("cutout", version, True, {"reason": "test"})
    assert registry.champion_version("cutout").version == version

    photos = _photos()
    expected = predict_probabilities(load_predictor(runs["a_checkpoint"]), photos)
    served = mlflow.pyfunc.load_model("models:/cutout@champion")
    masks = served.predict(pd.DataFrame({"image": [_as_base64(photo) for photo in photos]}))
    assert [mask.shape for mask in masks] == [(300, 200), (77, 123)]
    for mask, reference in zip(masks, expected, strict=True):
        assert mask.dtype == np.float32 and mask.min() >= 0.0 and mask.max() <= 1.0
        np.testing.assert_allclose(mask, reference, atol=1e-5)

    # On a CPU the version's ONNX export runs by default; its checkpoint on request, to the same figures.
    ours, checkpoint = (
        load_predictor("models:/cutout@champion"),
        load_predictor(CHAMPION_URI, prefer="checkpoint"),
    )
    assert (
        ours.description.startswith("onnxruntime") and ours.input_size == checkpoint.input_size == INPUT_SIZE
    )
    for mask, reference in zip(predict_probabilities(ours, photos), expected, strict=True):
        np.testing.assert_allclose(mask, reference, atol=1e-5)
    for mask, reference in zip(predict_probabilities(checkpoint, photos), expected, strict=True):
        np.testing.assert_allclose(mask, reference, atol=1e-6)


def test_registered_versions_resolve_to_the_checkpoint_and_the_onnx_file(runs, mlflow_tracking, tmp_path):
    name = f"cutout-{uuid.uuid4().hex[:8]}"
    registry.register_model(runs["a"], name, metrics={"mean_iou": 0.9})
    checkpoint = registry.resolve_model_uri(f"models:/{name}/1", dst=tmp_path)
    assert checkpoint.suffix == ".ckpt" and checkpoint.read_bytes() == Path(runs["a_checkpoint"]).read_bytes()
    onnx = registry.resolve_model_uri(f"models:/{name}/1", prefer="onnx", dst=tmp_path)
    assert onnx.suffix == ".onnx"
    assert load_predictor(f"models:/{name}/1", prefer="onnx").input_size == INPUT_SIZE

    registry.register_model(runs["b"], name, metrics={"mean_iou": 0.9})
    with pytest.raises(ValueError, match="no onnx file"):
        registry.resolve_model_uri(f"models:/{name}/2", prefer="onnx")


def _cutout(*args: str) -> Result:
    return CliRunner().invoke(app, list(args))


def test_a_registry_starts_from_a_builtin_model_and_promote_applies_the_gate(runs, mlflow_tracking, tmp_path):
    name = f"cutout-{uuid.uuid4().hex[:8]}"
    client = MlflowClient()
    holdout = str(tmp_path / "real")
    copy_pairs(holdout, [(str(REAL_PHOTOS), list(read_manifest(str(REAL_PHOTOS)))[:12])])

    random = registry.register_model(runs["b"], name)  # untrained weights: the worst possible champion
    first = _cutout("promote", "--version", random, "--name", name)
    assert first.exit_code == 0 and "promoted: first model: no champion yet" in first.output

    registered = _cutout("register", "--model", "u2netp", "--name", name)
    assert registered.exit_code == 0, registered.output
    official = registered.stdout.strip().splitlines()[-1]  # the version, printed last for scripts
    version = client.get_model_version(name, official)
    assert version.tags["builtin"] == "u2netp"
    assert client.get_run(version.run_id).data.params["builtin"] == "u2netp"
    photo = [product_photo(200, 300, seed=3)]
    registered_masks = predict_probabilities(load_predictor(f"models:/{name}/{official}"), photo)
    official_masks = predict_probabilities(load_predictor("u2netp"), photo)
    np.testing.assert_allclose(registered_masks[0], official_masks[0], atol=1e-4)

    unjudged = _cutout("promote", "--version", official, "--name", name)
    assert unjudged.exit_code == 2 and "give --holdout DATA" in unjudged.output
    promoted = _cutout("promote", "--version", official, "--name", name, "--holdout", holdout)
    assert promoted.exit_code == 0 and "promoted: better on real beyond noise" in promoted.output
    assert client.get_model_version_by_alias(name, "champion").version == official

    worse = registry.register_model(runs["b"], name)
    refused = _cutout("promote", "--version", worse, "--name", name, "--holdout", holdout)
    assert refused.exit_code == 0 and "not promoted: loses" in refused.output
    assert client.get_model_version_by_alias(name, "champion").version == official
    tags = client.get_model_version(name, worse).tags
    assert tags["promotion.promoted"] == "False" and tags["promotion.real_interval"].endswith("(12)")


def test_register_refuses_an_unknown_builtin_name_in_one_line(mlflow_tracking):
    result = _cutout("register", "--model", "u2netx")
    assert result.exit_code == 2
    assert "unknown built-in model 'u2netx': choose one of u2netp, u2netp-fashion" in result.output
    assert "Traceback" not in result.output


def test_no_champion_for_an_unknown_model(mlflow_tracking):
    assert registry.champion_version(f"missing-{uuid.uuid4().hex[:8]}") is None


@pytest.mark.parametrize(
    ("uri", "ref"),
    [
        ("models:/cutout@champion", ModelRef(alias="champion")),
        ("models:/cutout/7", ModelRef(version="7")),
        ("models:/studio-shoes@challenger", ModelRef("studio-shoes", alias="challenger")),
    ],
)
def test_a_model_reference_reads_back_as_written(uri, ref):
    assert ModelRef.parse(uri) == ref and str(ref) == uri
    assert str(ModelRef(alias=CHAMPION)) == CHAMPION_URI == "models:/cutout@champion"
    assert version_uri(3) == "models:/cutout/3" and is_registry_uri(uri) and not is_registry_uri("u2netp")


@pytest.mark.parametrize("uri", ["models:/cutout", "models:/@champion", "models:/cutout/", "u2netp", "x.pt"])
def test_a_reference_naming_no_version_is_refused_with_the_forms_it_takes(uri):
    with pytest.raises(ValueError, match="models:/NAME/VERSION or models:/NAME@ALIAS"):
        ModelRef.parse(uri)
