"""Evaluation: metric values by hand and against torchmetrics, the report, and `evaluate_model` end to end."""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torchmetrics.functional import mean_absolute_error
from torchmetrics.functional.classification import binary_fbeta_score, binary_jaccard_index

from cutout.data.io import read_mask
from cutout.data.synth import synthesize_dataset
from cutout.evaluate import evaluation
from cutout.evaluate.evaluation import evaluate_model, select_records
from cutout.evaluate.metrics import (
    FBETA_THRESHOLDS,
    ImageScore,
    boundary_band,
    boundary_iou,
    boundary_width,
    fbeta_curve,
    fbeta_from_counts,
    iou,
    mae,
    max_fbeta,
    summarize,
)
from cutout.evaluate.report import Example, ExampleKeeper
from cutout.model import build_model, save_checkpoint
from cutout.platform import storage

BETA = math.sqrt(0.3)


def disc(size: int, radius: float, centre: tuple[float, float] | None = None) -> np.ndarray:
    """A filled circle on a size×size grid."""
    cy, cx = centre or (size / 2, size / 2)
    ys, xs = np.mgrid[:size, :size]
    return (ys - cy) ** 2 + (xs - cx) ** 2 <= radius**2


def random_pairs(count: int = 6, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Noisy float64 probability maps and blob-shaped true masks of a few shapes."""
    rng = np.random.default_rng(seed)
    pairs = []
    for index in range(count):
        height, width = rng.integers(12, 40, size=2)
        truth = ndimage.gaussian_filter(rng.random((height, width)), 3) > 0.5
        noisy = np.clip(truth * 0.6 + rng.random((height, width)) * 0.5 - 0.05 * index, 0, 1)
        probabilities = (
            0.001 + 0.998 * noisy
        )  # no exact 0 or 1: torchmetrics thresholds with `>`, we with `≥`
        pairs.append((probabilities, truth))
    return pairs


# --- per-image metrics by hand -------------------------------------------------------------------


def test_iou_by_hand():
    truth = np.zeros((4, 4), bool)
    truth[0, :4] = True
    probabilities = np.zeros((4, 4))
    probabilities[0, :2] = 0.9
    probabilities[1, :2] = 0.5  # the threshold itself counts as foreground
    assert iou(probabilities, truth) == pytest.approx(2 / 6)
    assert iou(np.zeros((3, 3)), np.zeros((3, 3), bool)) == 1.0  # both empty: perfect
    assert iou(np.zeros((3, 3)), np.ones((3, 3), bool)) == 0.0
    with pytest.raises(ValueError, match="one shape"):
        iou(np.zeros((3, 3)), np.zeros((3, 4), bool))


def test_mae_by_hand():
    probabilities = np.array([[0.2, 0.9], [0.5, 0.0]])
    truth = np.array([[False, True], [True, False]])
    assert mae(probabilities, truth) == pytest.approx((0.2 + 0.1 + 0.5 + 0.0) / 4)


def test_fbeta_by_hand():
    # Two true pixels of four; probabilities 0.9 (true), 0.6 (false), 0.3 (true), 0.1 (false).
    probabilities = np.array([[0.9, 0.6], [0.3, 0.1]])
    truth = np.array([[True, False], [True, False]])
    curve = fbeta_curve(probabilities, truth)
    f = lambda tp, fp, fn: 1.3 * tp / (1.3 * tp + 0.3 * fn + fp)  # noqa: E731
    assert curve[0] == pytest.approx(f(2, 2, 0))  # threshold 0: everything is foreground
    assert curve[50] == pytest.approx(f(2, 1, 0))  # 50/255 ≈ 0.196
    assert curve[128] == pytest.approx(f(1, 1, 1)) == pytest.approx(0.5)
    assert curve[200] == pytest.approx(f(1, 0, 1))
    assert curve[240] == 0.0  # nothing predicted
    assert max_fbeta(probabilities, truth) == pytest.approx(1.3 / 1.6)
    assert fbeta_from_counts(np.array([0]), np.array([0]), np.array([0]))[0] == 1.0  # both empty


def test_boundary_band_by_hand():
    mask = np.zeros((9, 9), bool)
    mask[2:7, 2:7] = True  # a 5×5 block: a ring of 16, a ring of 8, and the centre
    assert np.count_nonzero(boundary_band(mask, 1)) == 16
    assert np.count_nonzero(boundary_band(mask, 2)) == 24
    assert np.count_nonzero(boundary_band(mask, 3)) == 25
    # The image edge counts as contour, as in the official code.
    assert np.count_nonzero(boundary_band(np.ones((5, 5), bool), 1)) == 16
    assert boundary_width((100, 100)) == 3  # 2% of 141.4, rounded
    assert boundary_width((4, 4)) == 1  # at least one pixel


# --- against the reference library -----------------------------------------------------------------


@pytest.mark.parametrize(("probabilities", "truth"), random_pairs())
def test_iou_and_mae_equal_torchmetrics(probabilities, truth):
    preds, target = torch.from_numpy(probabilities), torch.from_numpy(truth).long()
    expected_iou = binary_jaccard_index(preds, target, threshold=0.5, zero_division=1.0)
    expected_mae = mean_absolute_error(preds, target.double())
    assert iou(probabilities, truth) == pytest.approx(expected_iou.item(), abs=1e-6)
    assert mae(probabilities, truth) == pytest.approx(expected_mae.item(), abs=1e-6)


@pytest.mark.parametrize(("probabilities", "truth"), random_pairs(3, seed=1))
def test_fbeta_equals_torchmetrics_at_every_threshold(probabilities, truth):
    preds, target = torch.from_numpy(probabilities), torch.from_numpy(truth).long()
    # torchmetrics predicts `p > t`, we predict `p ≥ t`: random floats never sit exactly on a threshold.
    expected = [
        binary_fbeta_score(preds, target, beta=BETA, threshold=float(t), zero_division=1.0).item()
        for t in FBETA_THRESHOLDS
    ]
    np.testing.assert_allclose(fbeta_curve(probabilities, truth), expected, atol=1e-6)
    assert max_fbeta(probabilities, truth) == pytest.approx(max(expected), abs=1e-6)


def test_empty_masks_agree_with_torchmetrics_zero_division_one():
    empty, probabilities = np.zeros((8, 8), bool), np.full((8, 8), 0.2)
    preds, target = torch.from_numpy(probabilities), torch.from_numpy(empty).long()
    assert iou(probabilities, empty) == binary_jaccard_index(preds, target, zero_division=1.0).item()
    fbeta = binary_fbeta_score(preds, target, beta=BETA, threshold=0.5, zero_division=1.0).item()
    assert fbeta_curve(probabilities, empty)[128] == fbeta == 1.0


# --- boundary IoU ------------------------------------------------------------------------------------


def official_boundary(mask: np.ndarray, ratio: float = 0.02) -> np.ndarray:
    """The official `mask_to_boundary`: pad by 1, erode with a 3×3 kernel d times, subtract."""
    d = max(1, round(ratio * math.hypot(*mask.shape)))
    padded = np.pad(mask, 1)
    eroded = ndimage.binary_erosion(padded, np.ones((3, 3), bool), iterations=d)[1:-1, 1:-1]
    return mask & ~eroded


@pytest.mark.parametrize(("probabilities", "truth"), random_pairs(4, seed=2))
def test_boundary_iou_equals_official_erosion_definition(probabilities, truth):
    predicted_band, true_band = official_boundary(probabilities >= 0.5), official_boundary(truth)
    union = np.count_nonzero(predicted_band | true_band)
    expected = np.count_nonzero(predicted_band & true_band) / union if union else 1.0
    assert boundary_iou(probabilities, truth) == pytest.approx(expected, abs=1e-12)


def test_boundary_iou_sanity():
    blob = disc(200, 70)
    assert boundary_iou(blob.astype(float), blob) == 1.0
    shifted = np.roll(blob, 1, axis=1).astype(float)
    assert 0.5 < boundary_iou(shifted, blob) < 1.0
    # A one-pixel shift barely moves plain IoU on a big blob; boundary IoU sees it clearly.
    assert boundary_iou(shifted, blob) < iou(shifted, blob) - 0.05
    assert boundary_iou(np.zeros((10, 10)), np.zeros((10, 10), bool)) == 1.0


# --- aggregates and examples -------------------------------------------------------------------------


def score(pair_id: str, cluster: str, value: float) -> ImageScore:
    return ImageScore(pair_id, cluster, iou=value, mae=1 - value, max_fbeta=value, boundary_iou=value / 2)


def test_summarize_by_hand():
    scores = [score("a", "shorts", 0.96), score("b", "shorts", 0.98), score("c", "tops", 0.5)]
    summary = summarize(scores)
    assert summary["count"] == 3
    assert summary["mean_iou"] == pytest.approx((0.96 + 0.98 + 0.5) / 3)
    assert summary["iou_ge_0.95"] == pytest.approx(2 / 3)
    assert summary["iou_ge_0.97"] == pytest.approx(1 / 3)
    assert summary["iou_ge_0.99"] == 0.0
    assert summary["mean_mae"] == pytest.approx(1 - summary["mean_iou"])
    assert summary["mean_boundary_iou"] == pytest.approx(summary["mean_iou"] / 2)
    assert list(summary["per_cluster"]) == ["shorts", "tops"]
    assert summary["per_cluster"]["shorts"]["count"] == 2
    assert summary["per_cluster"]["shorts"]["mean_iou"] == pytest.approx(0.97)
    with pytest.raises(ValueError, match="no images"):
        summarize([])


def test_example_keeper_keeps_worst_and_best_in_order():
    keeper, built = ExampleKeeper(count=2), []

    def build(item: ImageScore):
        def example() -> Example:
            built.append(item.id)
            return Example(item, {})

        return example

    values = {"a": 0.5, "b": 0.9, "c": 0.1, "d": 0.7, "e": 0.1, "f": 0.95, "g": 0.6}
    for pair_id, value in values.items():
        item = score(pair_id, "all", value)
        keeper.offer(item, build(item))
    assert [example.score.id for example in keeper.worst()] == ["c", "e"]  # ties: first seen first
    assert [example.score.id for example in keeper.best()] == ["f", "b"]
    assert "g" not in built  # neither among the worst nor the best when it came: never rendered


# --- end to end ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Nine small synthetic pairs; six are `val`, in three clusters."""
    root = tmp_path_factory.mktemp("data")
    synthesize_dataset(str(root), 9, size=(64, 48), seed=3)
    manifest = root / "manifest.jsonl"
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    for index, record in enumerate(records):
        record["cluster"] = ("tops", "pants", "shorts")[index % 3]
        record["split"] = "train" if index >= 6 else "val"
    manifest.write_text("".join(json.dumps(record) + "\n" for record in records))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """U²-NetP with random weights, at a 64-pixel input: enough for the plumbing."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.pt"
    save_checkpoint(path, build_model("u2netp"), "u2netp", input_size=64)
    return path


def test_select_records(dataset: Path, tmp_path: Path):
    assert len(list(select_records(str(dataset), "val"))) == 6
    assert len(list(select_records(str(dataset), None))) == 9
    bare = tmp_path / "manifest.jsonl"  # a manifest without splits: every record
    bare.write_text('{"id": "a"}\n{"id": "b"}\n')
    assert [record["id"] for record in select_records(str(tmp_path), "val")] == ["a", "b"]


def test_evaluate_model_writes_the_report(dataset: Path, checkpoint: Path, tmp_path: Path):
    out, progress = tmp_path / "report", []
    result = evaluate_model(
        str(checkpoint), str(dataset), str(out), batch_size=4, on_progress=lambda: progress.append(1)
    )
    assert len(progress) == 6
    assert result.report == str(out / "index.html")
    for name in ("metrics.json", "per_image.jsonl", "iou_histogram.png", "index.html"):
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == result.metrics
    expected_keys = {"count", "mean_iou", "iou_ge_0.95", "iou_ge_0.97", "iou_ge_0.99", "mean_mae",
                     "mean_max_fbeta", "mean_boundary_iou", "per_cluster", "per_domain"}  # fmt: skip
    assert set(metrics) == expected_keys
    assert set(metrics["per_domain"]) == {"synthetic"}  # the synthetic catalogue says so in its records
    assert metrics["count"] == 6
    assert set(metrics["per_cluster"]) == {"tops", "pants", "shorts"}
    assert all(row["count"] == 2 for row in metrics["per_cluster"].values())
    assert len((out / "per_image.jsonl").read_text().splitlines()) == 6
    page = (out / "index.html").read_text()
    sources = re.findall(r"src='([^']+)'", page)
    assert "iou_histogram.png" in sources and len(sources) == 1 + 2 * 6 * 5  # 6 worst, 6 best, 5 columns
    assert all((out / source).is_file() for source in sources)
    for cluster in ("tops", "pants", "shorts"):
        assert f"<th>{cluster}</th>" in page


def test_real_photos_and_the_synthetic_catalogue_are_scored_and_shown_apart(
    dataset: Path, checkpoint: Path, tmp_path: Path
):
    records = [json.loads(line) for line in (dataset / "manifest.jsonl").read_text().splitlines()]
    mixed = tmp_path / "mixed"
    shutil.copytree(dataset, mixed)
    for index, record in enumerate(records):
        record["domain"] = "real" if index % 2 else "synthetic"
    (mixed / "manifest.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))

    result = evaluate_model(str(checkpoint), str(mixed), str(tmp_path / "report"), batch_size=4)

    per_domain = result.metrics["per_domain"]
    assert set(per_domain) == {"real", "synthetic"}
    assert per_domain["real"]["count"] + per_domain["synthetic"]["count"] == result.metrics["count"]
    page = (tmp_path / "report" / "index.html").read_text()
    assert "Worst examples: real" in page and "Best examples: synthetic" in page
    assert (tmp_path / "report" / "img" / "real-worst-01-photo.png").is_file()


def test_evaluate_model_scores_a_perfect_prediction_perfectly(
    dataset: Path, checkpoint: Path, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
):
    """The true masks, fed back as predictions, score perfectly: masks and photos stay aligned."""
    truths = (
        read_mask(dataset / record["mask"]).astype(np.float32)
        for record in select_records(str(dataset), "val")
    )
    monkeypatch.setattr(
        evaluation, "predict_probabilities", lambda predictor, images, minmax: [next(truths) for _ in images]
    )
    out = f"{s3_bucket}/reports/perfect"
    result = evaluate_model(str(checkpoint), str(dataset), out, batch_size=4)
    assert result.metrics["mean_iou"] == result.metrics["mean_max_fbeta"] == 1.0
    assert result.metrics["mean_boundary_iou"] == result.metrics["iou_ge_0.99"] == 1.0
    assert result.metrics["mean_mae"] == 0.0
    assert result.report == f"{out}/index.html"
    assert json.loads(storage.read_text(f"{out}/metrics.json")) == result.metrics
    assert storage.exists(f"{out}/img/synthetic-worst-01-cutout.png")


def test_evaluate_model_refuses_an_empty_selection(dataset: Path, checkpoint: Path, tmp_path: Path):
    with pytest.raises(ValueError, match="no pairs to evaluate in split 'test'"):
        evaluate_model(str(checkpoint), str(dataset), str(tmp_path / "report"), split="test")


def test_cli_evaluate_writes_metrics_and_report(tmp_path, u2netp_weights):
    from typer.testing import CliRunner

    from cutout.cli import app
    from cutout.data.synth import synthesize_dataset

    synthesize_dataset(str(tmp_path / "data"), 3, size=(64, 64))
    args = [
        "evaluate",
        "--model",
        str(u2netp_weights),
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "r"),
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "3 pairs: mean_iou" in result.output
    assert json.loads((tmp_path / "r" / "metrics.json").read_text())["count"] == 3
    missing = CliRunner().invoke(
        app, [*args[:4], "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x")]
    )
    assert missing.exit_code == 2 and "nowhere" in missing.output
