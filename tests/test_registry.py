"""The registry protects: the MLflow round trip against a live server (log, register, alias, load by
`models:/cutout@champion` through MLflow and through our loader) and the promotion gate."""

from __future__ import annotations

import base64
import io
import uuid
from pathlib import Path
from types import SimpleNamespace

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from cutout.model.inference import predict_probabilities
from cutout.model.loader import load_predictor
from cutout.model.weights import load_model, save_checkpoint
from cutout.platform import registry
from cutout.platform.tracking import configure_tracking, start_run
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
                    registry.log_model(str(checkpoint), onnx=onnx)
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
    decision = registry.promote("cutout", version)
    assert decision.promoted and decision.champion_version is None
    assert registry.champion_version("cutout").version == version

    photos = _photos()
    expected = predict_probabilities(load_predictor(runs["a_checkpoint"]), photos)
    served = mlflow.pyfunc.load_model("models:/cutout@champion")
    masks = served.predict(pd.DataFrame({"image": [_as_base64(photo) for photo in photos]}))
    assert [mask.shape for mask in masks] == [(300, 200), (77, 123)]
    for mask, reference in zip(masks, expected, strict=True):
        assert mask.dtype == np.float32 and mask.min() >= 0.0 and mask.max() <= 1.0
        np.testing.assert_allclose(mask, reference, atol=1e-5)

    ours = load_predictor("models:/cutout@champion")
    assert ours.input_size == INPUT_SIZE
    for mask, reference in zip(predict_probabilities(ours, photos), expected, strict=True):
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


def test_the_gate_refuses_a_worse_model_and_records_why(runs, mlflow_tracking):
    name = f"cutout-{uuid.uuid4().hex[:8]}"
    client = MlflowClient()
    first = registry.register_model(runs["a"], name, metrics={"mean_iou": 0.90, "mae": 0.02})
    assert registry.promote(name, first).promoted
    assert client.get_model_version(name, first).tags["mean_iou"] == "0.9"

    worse = registry.register_model(runs["b"], name, metrics={"mean_iou": 0.85})
    refused = registry.promote(name, worse)
    assert not refused.promoted
    assert (refused.score, refused.champion_score, refused.champion_version) == (0.85, 0.9, first)
    assert client.get_model_version_by_alias(name, "champion").version == first
    tags = client.get_model_version(name, worse).tags
    assert tags["promotion.promoted"] == "False"
    assert float(tags["promotion.score"]) == 0.85 and float(tags["promotion.champion_score"]) == 0.9

    better = registry.promote(name, registry.register_model(runs["b"], name, metrics={"mean_iou": 0.93}))
    assert better.promoted and better.champion_score == 0.9
    assert client.get_model_version_by_alias(name, "champion").version == better.version
    assert client.get_model_version(name, better.version).tags["promotion.promoted"] == "True"


def _version(version: str, **tags: str) -> SimpleNamespace:
    return SimpleNamespace(name="cutout", version=version, tags=tags)


def test_the_gate_on_margins_holdouts_and_missing_scores():
    champion = _version("1", mean_iou="0.9", holdout="aaa")
    assert registry.decide(_version("2", mean_iou="0.9"), champion, "mean_iou").promoted  # a tie is enough
    assert not registry.decide(_version("2", mean_iou="0.905"), champion, "mean_iou", margin=0.01).promoted
    other_holdout = registry.decide(_version("2", mean_iou="0.99", holdout="bbb"), champion, "mean_iou")
    assert not other_holdout.promoted and "holdout" in other_holdout.reason
    with pytest.raises(ValueError, match="no 'mean_iou' tag"):
        registry.decide(_version("2"), champion, "mean_iou")
    # Re-evaluated on the candidate's holdout, the champion is compared there, both ways.
    candidate = _version("2", mean_iou="0.95", holdout="bbb")
    rescored = registry.decide(candidate, champion, "mean_iou", champion_score=0.94)
    assert rescored.promoted and rescored.champion_score == 0.94 and "re-evaluated" in rescored.reason
    assert not registry.decide(candidate, champion, "mean_iou", champion_score=0.96).promoted


def test_promote_rescores_a_champion_from_another_holdout(runs, mlflow_tracking):
    name = f"cutout-{uuid.uuid4().hex[:8]}"
    first = registry.register_model(runs["a"], name, metrics={"mean_iou": 0.97}, holdout="old-holdout")
    assert registry.promote(name, first).promoted
    second = registry.register_model(runs["b"], name, metrics={"mean_iou": 0.95}, holdout="new-holdout")
    asked = []

    def rescore(uri: str) -> float:
        asked.append(uri)
        return 0.93  # the champion on the new holdout, which holds harder photos

    decision = registry.promote(name, second, rescore=rescore)
    assert asked == [f"models:/{name}/{first}"]
    assert decision.promoted and decision.champion_score == 0.93
    assert MlflowClient().get_model_version_by_alias(name, "champion").version == second


def test_no_champion_for_an_unknown_model(mlflow_tracking):
    assert registry.champion_version(f"missing-{uuid.uuid4().hex[:8]}") is None
