"""The official pretrained U²-NetP as the built-in `u2netp`: what a newcomer gets out of the box.

The weights come from the set-up's cache (`make` runs scripts/fetch-weights.sh); the real photos are the
subset the package ships (`src/cutout/data/ccp`, Clothing Co-Parsing, Apache-2.0).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cutout.cli import app
from cutout.data.real import REAL_PHOTOS
from cutout.model.builtin import WEIGHTS_CACHE_ENV, BuiltinModelError, builtin_model_path
from cutout.model.folded import FoldedWeightsError, load_folded_onnx
from cutout.model.inference import OnnxPredictor, preprocess
from cutout.model.loader import load_predictor
from cutout.model.weights import load_model

# `cutout remove --model u2netp` on the 200 shipped real photos (their 400-pixel copies), measured when
# they were added: the true masks' mean IoU. rembg with the same weights scores 0.948 on similar photos.
OFFICIAL_REAL_IOU = 0.9504


def real_photo(index: int) -> Image.Image:
    return Image.open(sorted((REAL_PHOTOS / "images").glob("*.jpg"))[index]).convert("RGB")


def with_dynamic_input(path: Path, out: Path) -> Path:
    """A copy of a fixed-size ONNX file whose input and outputs take any batch and size."""
    exported = onnx.load(str(path))
    names = ("batch", "channels", "height", "width")
    for tensor in [*exported.graph.input, *exported.graph.output]:
        for dim, name in zip(tensor.type.tensor_type.shape.dim, names, strict=True):
            dim.dim_param = name
    del exported.graph.value_info[:]
    onnx.save(exported, str(out))
    return out


@pytest.mark.parametrize("size", [320, 448])
def test_official_weights_in_pytorch_agree_with_onnx_runtime(size, tmp_path):
    official = builtin_model_path("u2netp")
    # The file itself is fixed at 1×3×320×320; its graph runs at other sizes once the input says so.
    reference = official if size == 320 else with_dynamic_input(official, tmp_path / "dynamic.onnx")
    session = ort.InferenceSession(str(reference), providers=["CPUExecutionProvider"])
    model, variant = load_folded_onnx(official)

    for index in (0, 57, 123):
        batch = preprocess(real_photo(index), size)[np.newaxis]
        expected = session.run(None, {session.get_inputs()[0].name: batch})[0]
        with torch.no_grad():
            ours = torch.sigmoid(model(torch.from_numpy(batch))[0]).numpy()
        assert variant == "u2netp"
        assert np.abs(ours - expected).max() <= 1e-4


def test_the_official_model_cuts_out_real_photos_as_measured(tmp_path):
    """`cutout remove` with no --model uses the official weights, at its default batch size (4) although
    the file's batch is fixed at 1, and its masks reach the IoU measured on these photos."""
    out = tmp_path / "masks"
    result = CliRunner().invoke(app, ["remove", str(REAL_PHOTOS / "images"), "-o", str(out), "--mask-only"])

    assert result.exit_code == 0, result.output
    assert "200 written" in result.output and "u2netp.onnx" in result.output
    ious = []
    for record in map(json.loads, (REAL_PHOTOS / "manifest.jsonl").read_text().splitlines()):
        predicted = np.asarray(Image.open(out / f"{record['id']}.png")) >= 128
        truth = np.asarray(Image.open(REAL_PHOTOS / record["mask"])) >= 128
        ious.append(np.count_nonzero(predicted & truth) / np.count_nonzero(predicted | truth))
    assert len(ious) == 200
    assert np.mean(ious) >= OFFICIAL_REAL_IOU - 0.0005


def test_a_fixed_batch_file_runs_any_batch_photo_by_photo():
    predictor = OnnxPredictor(builtin_model_path("u2netp"))
    photos = np.stack([preprocess(real_photo(index)) for index in range(3)])

    together = predictor.predict(photos)
    alone = np.concatenate([predictor.predict(photos[i : i + 1]) for i in range(3)])

    assert (predictor.fixed_batch, predictor.input_size) == (1, 320)
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_export_of_the_builtin_model_has_a_dynamic_batch_and_the_same_masks(tmp_path):
    out = tmp_path / "u2netp-dynamic.onnx"
    result = CliRunner().invoke(app, ["export", "onnx", "--model", "u2netp", "-o", str(out)])
    assert result.exit_code == 0, result.output

    exported, official = OnnxPredictor(out), OnnxPredictor(builtin_model_path("u2netp"))
    photos = np.stack([preprocess(real_photo(index)) for index in (3, 4)])
    assert exported.fixed_batch is None and exported.input_size == 320
    np.testing.assert_allclose(exported.predict(photos), official.predict(photos), atol=1e-4)


def test_every_loader_takes_the_builtin_name():
    model, metadata = load_model("u2netp")
    torch_predictor = load_predictor("u2netp", prefer="checkpoint")
    onnx_predictor = load_predictor("u2netp")
    batch = preprocess(real_photo(9))[np.newaxis]

    assert metadata == {"variant": "u2netp", "input_size": 320, "builtin": "u2netp"}
    assert sum(p.numel() for p in model.parameters()) == 1_131_181
    np.testing.assert_allclose(torch_predictor.predict(batch), onnx_predictor.predict(batch), atol=1e-4)


def test_a_missing_or_damaged_builtin_model_says_how_to_get_it_back(tmp_path, monkeypatch):
    monkeypatch.setenv(WEIGHTS_CACHE_ENV, str(tmp_path))
    with pytest.raises(BuiltinModelError, match=r"u2netp\.onnx is missing; run `make`"):
        builtin_model_path("u2netp")

    (tmp_path / "u2netp.onnx").write_bytes(b"not the weights")
    result = CliRunner().invoke(app, ["remove", str(REAL_PHOTOS / "images"), "-o", str(tmp_path / "out")])
    assert result.exit_code == 2
    assert "is damaged" in result.output and "run `make`" in result.output


def test_an_onnx_file_of_another_network_is_refused_by_name(tmp_path):
    path = tmp_path / "other.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 1, 3), (torch.zeros(1, 3, 8, 8),), str(path), dynamo=False)

    with pytest.raises(FoldedWeightsError, match="1 convolutions match neither U²-NetP nor U²-Net"):
        load_model(path)
