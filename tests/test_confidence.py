"""The quality score protects: its properties (crisp beats blurry, empty/full/undecided score 0, bounded,
any size), that it ranks degraded masks by their true IoU, the threshold rule, `calibrate_threshold`'s
figures against its own per-image data, and the threshold's round trip through the MLflow registry."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from mlflow.exceptions import MlflowException
from PIL import Image
from scipy import ndimage, stats
from typer.testing import CliRunner

from cutout.cli import app
from cutout.data.io import read_image
from cutout.data.manifest import read_manifest
from cutout.data.synth import generate_pair, synthesize_dataset
from cutout.evaluate.calibration import calibrate_threshold, choose_threshold, routing_rates
from cutout.evaluate.confidence import confidence_terms, mask_confidence
from cutout.evaluate.metrics import iou
from cutout.model.inference import preprocess, upscale_probabilities
from cutout.model.weights import load_model, save_checkpoint
from cutout.platform import registry
from cutout.platform.tracking import start_run
from cutout.train import logged_model

NET = 96  # the network resolution of the degraded maps
MODEL_SIZE = 64  # the small model's input size, to keep the calibration tests fast


def _disc(size: int, centre: tuple[float, float] = (0.5, 0.5), radius: float = 0.3) -> np.ndarray:
    """A crisp, anti-aliased disc (a 1-pixel edge ramp, as a network's sharp edge) on a size×size map."""
    y, x = np.mgrid[:size, :size] + 0.5
    distance = np.hypot(y - centre[0] * size, x - centre[1] * size)
    return np.clip(radius * size - distance + 0.5, 0.0, 1.0).astype(np.float32)


# --- properties ---------------------------------------------------------------------------------


def test_a_crisp_mask_scores_higher_than_a_blurred_or_hesitant_one():
    crisp = _disc(128)
    assert mask_confidence(crisp) > 0.9
    blurred = ndimage.gaussian_filter(crisp, 3)
    assert mask_confidence(blurred) < mask_confidence(crisp) - 0.2
    hesitant = np.where(crisp > 0.5, 0.7, crisp * 0.3).astype(np.float32)  # found, but not sure of it
    assert mask_confidence(hesitant) < 0.1


@pytest.mark.parametrize(
    "name, probabilities",
    [
        ("empty", np.zeros((128, 128), np.float32)),
        ("all 0.5", np.full((128, 128), 0.5, np.float32)),
        ("all 0.49", np.full((128, 128), 0.49, np.float32)),
        ("full", np.ones((128, 128), np.float32)),
        ("a speck", _disc(128, radius=0.02)),  # under 0.5% of the image: nothing found
    ],
)
def test_empty_full_and_undecided_maps_score_zero(name, probabilities):
    assert mask_confidence(probabilities) == 0.0, name


@pytest.mark.parametrize("shape", [(1, 1), (3, 17), (57, 411), (128, 128), (320, 320)])
def test_the_score_is_a_float_in_0_1_for_any_map_and_size(shape):
    rng = np.random.default_rng(shape[0])
    smooth = ndimage.gaussian_filter(rng.random(shape), 2)
    maps = [rng.random(shape), (rng.random(shape) > 0.5).astype(np.float32), (smooth - smooth.min()) * 3]
    for probabilities in maps:
        score = mask_confidence(probabilities)
        assert isinstance(score, float) and 0.0 <= score <= 1.0


def test_the_score_reads_the_same_at_any_resolution():
    crisp = [mask_confidence(_disc(size)) for size in (64, 128, 320)]
    assert min(crisp) > 0.9 and max(crisp) - min(crisp) < 0.08
    # The same physical blur (3% of the image) costs about the same at each size.
    blurred = [mask_confidence(ndimage.gaussian_filter(_disc(size), 0.03 * size)) for size in (64, 128, 320)]
    assert max(blurred) < min(crisp) - 0.2 and max(blurred) - min(blurred) < 0.1


def test_specks_and_pinholes_lower_the_score_but_a_second_part_does_not():
    crisp = _disc(128, radius=0.25)
    specks, pinholes = crisp.copy(), crisp.copy()
    for i in range(6):
        specks[4 + 20 * i : 7 + 20 * i, 2:5] = 1.0  # 3×3 specks down the left edge
        pinholes[50 + 5 * i : 52 + 5 * i, 60:62] = 0.0  # 2×2 holes inside the product
    base, speckled, holed = confidence_terms(crisp), confidence_terms(specks), confidence_terms(pinholes)
    # Specks are possible but never sure; pin-holes stay possible though nothing is there.
    assert speckled.specks == 6 * 9 and (speckled.sure, speckled.possible) == (base.sure, base.possible + 54)
    assert holed.holes == 6 * 4 and (holed.sure, holed.possible) == (base.sure - 24, base.possible)
    assert mask_confidence(specks) < mask_confidence(crisp) and mask_confidence(pinholes) < mask_confidence(
        crisp
    )
    pair = np.maximum(_disc(128, (0.5, 0.25), 0.2), _disc(128, (0.5, 0.75), 0.18))  # a bikini's two parts
    assert confidence_terms(pair).specks == 0 and mask_confidence(pair) > 0.9


def test_a_veil_over_the_background_lowers_the_score():
    crisp = _disc(128)
    veiled = np.maximum(crisp, 0.2)  # the IoU at 0.5 is unchanged, the cutout shows a grey film
    assert iou(veiled, crisp >= 0.5) == 1.0
    assert mask_confidence(veiled) < 0.5


def test_bad_maps_are_refused_with_their_shape_and_nan_counts_as_undecided():
    for bad in (np.zeros((2, 8, 8)), np.zeros((0, 5)), np.zeros(16)):
        with pytest.raises(ValueError, match="H×W"):
            mask_confidence(bad)
    with pytest.raises(ValueError, match="band"):
        mask_confidence(_disc(32), band=0.5)
    holed = _disc(128)
    holed[60:70, 60:70] = np.nan
    assert 0.0 < mask_confidence(holed) < mask_confidence(_disc(128))


# --- ranking ------------------------------------------------------------------------------------


def _network_map(truth: np.ndarray) -> np.ndarray:
    """The true mask at the network's resolution, box-averaged: the map of a perfect, crisp network."""
    image = Image.fromarray(truth.astype(np.float32), mode="F").resize((NET, NET), Image.Resampling.BOX)
    return np.asarray(image, dtype=np.float32)


def _bump(centre: tuple[int, int], height: float, radius: float) -> np.ndarray:
    distance = np.hypot(*(np.mgrid[:NET, :NET] - np.array(centre)[:, None, None]))
    return height * np.exp(-(distance**2) / (2 * radius**2))


def _degrade(p: np.ndarray, kind: str, level: float, rng: np.random.Generator) -> np.ndarray:
    """One of a network's mistakes, each both wrong and doubtful, as a network's mistakes are."""
    if kind == "edge":  # the contour drifts in or out by `level` pixels, blurred over as much
        drift = ndimage.grey_dilation if rng.random() < 0.5 else ndimage.grey_erosion
        return ndimage.gaussian_filter(drift(p, size=int(2 * level + 1)), level / 2)
    if kind == "shift":  # the product found a little off, with a soft edge
        return ndimage.gaussian_filter(ndimage.shift(p, (level, -level), order=1), level / 2)
    if kind == "holes":  # parts of the product only half found
        out, (ys, xs) = p.copy(), np.nonzero(p > 0.9)
        for i in rng.choice(len(ys), size=int(level), replace=False):
            out[_bump((ys[i], xs[i]), 1.0, NET / 32) > 0.1] *= rng.uniform(0.2, 0.6)
        return out
    # "shadow": two soft blobs of height `level` in the background, taken for product
    ys, xs = np.nonzero(ndimage.distance_transform_edt(p < 0.1) > 3)
    for i in rng.choice(len(ys), size=2, replace=False):
        p = np.maximum(p, _bump((ys[i], xs[i]), level, NET / 20))
    return p


def test_the_score_ranks_degraded_masks_by_their_true_iou():
    rng = np.random.default_rng(0)
    levels = {"edge": (1, 2, 4), "shift": (1, 3, 6), "holes": (1, 3, 6), "shadow": (0.4, 0.6, 0.9)}
    scores, ious, kinds = [], [], []
    for index in range(12):
        _, truth, _ = generate_pair(index, (160, 240), seed=20010)
        for kind, steps in levels.items():
            for level in steps:
                probabilities = _degrade(_network_map(truth), kind, level, rng).astype(np.float32)
                scores.append(mask_confidence(probabilities))
                ious.append(iou(upscale_probabilities(probabilities, (160, 240)), truth))
                kinds.append(kind)
    scores, ious, kinds = np.array(scores), np.array(ious), np.array(kinds)
    assert ious.min() < 0.7 and ious.max() > 0.95  # a range worth ranking
    assert stats.spearmanr(scores, ious).statistic >= 0.5
    for kind in levels:
        assert stats.spearmanr(scores[kinds == kind], ious[kinds == kind]).statistic >= 0.5, kind


# --- the threshold rule -------------------------------------------------------------------------


def test_both_targets_met_takes_the_threshold_halfway_between_catch_and_budget():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    ious = [0.5, 0.9, 0.96, 0.97, 0.98, 0.99, 0.99, 0.99, 0.99, 0.99]  # the two lowest are bad
    choice = choose_threshold(scores, ious)  # catching both and the 20% budget are one threshold
    assert choice.threshold == 0.3 and choice.meets_target
    assert (choice.routed, choice.caught) == (0.2, 1.0) == routing_rates(scores, ious, choice.threshold)
    scores = [i / 20 for i in range(1, 21)]
    ious = [0.5] + [0.99] * 19  # one bad: routing 1 catches it, the budget allows 4; halfway routes 2
    choice = choose_threshold(scores, ious)
    assert choice.threshold == 0.15 and (choice.routed, choice.caught) == (0.1, 1.0) and choice.meets_target


def test_too_many_bad_masks_takes_the_threshold_catching_80_percent():
    scores = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    ious = [0.5, 0.9, 0.96, 0.8, 0.9, 0.94, 0.97, 0.93, 0.99, 0.99]  # six bad, the highest at 0.8
    choice = choose_threshold(scores, ious)
    assert not choice.meets_target and "smallest threshold" in choice.rule
    # 5 of 6 bad must be routed: the fifth lowest bad score is 0.6, so everything up to it goes.
    assert choice.threshold == 0.7 and choice.routed == 0.6 and choice.caught == pytest.approx(5 / 6)
    # Every bad mask, including one scoring highest of all: the threshold lies just above it.
    everything = choose_threshold(scores, [0.9] * 10, min_caught=1.0)
    assert everything.threshold > 1.0 and everything.routed == everything.caught == 1.0


def test_no_bad_masks_or_tied_scores_keep_to_the_budget():
    choice = choose_threshold([0.3, 0.5, 0.7, 0.9, 0.95], [0.99] * 5)
    assert choice.meets_target and choice.caught is None and choice.routed <= 0.2
    tied = choose_threshold([0.5] * 10, [0.99] * 10)
    assert tied.routed == 0.0
    with pytest.raises(ValueError):
        choose_threshold([], [])
    with pytest.raises(ValueError):
        choose_threshold([0.5], [0.9], max_routed=1.0)


# --- calibration on a real model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """Twelve small synthetic pairs, seeds the training data never uses."""
    folder = tmp_path_factory.mktemp("calibration") / "data"
    synthesize_dataset(str(folder), count=12, size=(96, 128), seed=20020)
    return str(folder)


@pytest.fixture(scope="module")
def small_model(u2netp_weights, dataset, tmp_path_factory) -> str:
    """A random-weight U²-NetP at 64 px whose fused logits are stretched around their median.

    Random weights give maps within 0.46–0.49: every score would be 0 and every IoU 0. Scaling the
    last 1×1 convolution spreads them over (0, 1) while keeping the image-dependent structure, so the
    scores and IoUs differ from photo to photo, as a trained model's do.
    """
    model = load_model(u2netp_weights)[0].eval()
    photos = [read_image(f"{dataset}/{record['image']}") for record in read_manifest(dataset)]
    batch = torch.from_numpy(np.stack([preprocess(photo, MODEL_SIZE) for photo in photos]))
    with torch.no_grad():
        logits = model(batch)[0]
        gain = 8.0 / float(logits.quantile(0.9) - logits.quantile(0.1))
        model.outconv.bias.sub_(logits.median()).mul_(gain)
        model.outconv.weight.mul_(gain)
    path = tmp_path_factory.mktemp("model") / "small.ckpt"
    save_checkpoint(path, model, "u2netp", input_size=MODEL_SIZE)
    return str(path)


def test_calibration_figures_agree_with_its_per_image_data(small_model, dataset, tmp_path):
    out = tmp_path / "report"
    result = calibrate_threshold(small_model, dataset, split="val", out=str(out), batch_size=5)
    assert result.split is None and result.count == len(result.images) == 12  # no splits: all pairs
    scores = np.array([image.score for image in result.images])
    ious = np.array([image.iou for image in result.images])
    assert len(set(scores.round(6))) > 6 and len(set(ious.round(6))) > 6  # the data is not degenerate
    assert result.spearman == pytest.approx(stats.spearmanr(scores, ious).statistic)
    assert result.bad_share == pytest.approx(np.mean(ious < 0.95))
    choice = result.choice
    assert (choice.routed, choice.caught) == routing_rates(scores, ious, choice.threshold)
    assert choice.threshold in scores or choice.threshold > scores.max()
    assert choice.caught >= 0.8 and (choice.routed <= 0.2) == choice.meets_target

    summary = json.loads((out / "calibration.json").read_text())
    assert summary["choice"]["threshold"] == choice.threshold and summary["count"] == 12
    lines = [json.loads(line) for line in (out / "per_image.jsonl").read_text().splitlines()]
    assert [line["id"] for line in lines] == [record["id"] for record in read_manifest(dataset)]
    assert [line["routed"] for line in lines] == list(scores < choice.threshold)
    assert (out / "scatter.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"{choice.threshold:.4f}" in (out / "index.html").read_text()


def test_the_threshold_round_trips_through_the_registry(small_model, dataset, mlflow_local):
    with start_run(run_name="calibration"):
        logged_model.log_model(small_model, onnx=False)
        run_id = registry.mlflow.active_run().info.run_id
    first = registry.register_model(run_id, "cutout", metrics={"mean_iou": 0.5})
    second = registry.register_model(run_id, "cutout", metrics={"mean_iou": 0.5})
    registry.record_promotion("cutout", first, True, {"reason": "first model"})
    assert registry.routing_threshold("models:/cutout@champion") is None  # not calibrated yet

    runner = CliRunner()
    result = runner.invoke(
        app, ["calibrate-threshold", "--model", "models:/cutout@champion", "--data", dataset, "--out", "r1"]
    )
    assert result.exit_code == 0, result.output
    stored = json.loads((mlflow_local / "r1" / "calibration.json").read_text())["choice"]["threshold"]
    assert float(result.stdout.split()[-1]) == pytest.approx(stored, abs=1e-6)
    assert registry.routing_threshold(f"models:/cutout/{first}") == stored
    assert registry.routing_threshold("models:/cutout@champion") == stored
    assert registry.routing_threshold(f"models:/cutout/{second}") is None

    # A checkpoint calibrated for a named version: --register NAME/VERSION.
    args = ["calibrate-threshold", "--model", small_model, "--data", dataset, "--out", "r2"]
    result = runner.invoke(app, [*args, "--register", f"cutout/{second}"])
    assert result.exit_code == 0, result.output
    assert registry.routing_threshold(f"models:/cutout/{second}") == stored  # same model, same data
    result = runner.invoke(app, [*args, "--register", "cutout/99"])
    assert result.exit_code == 2 and "cannot store the threshold on models:/cutout/99" in result.output

    registry.set_routing_threshold(f"models:/cutout/{second}", 0.25)
    assert registry.routing_threshold(f"models:/cutout/{second}") == 0.25
    with pytest.raises(ValueError, match="finite"):
        registry.set_routing_threshold(f"models:/cutout/{second}", math.nan)
    with pytest.raises(MlflowException):
        registry.routing_threshold("models:/cutout/99")
