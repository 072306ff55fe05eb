"""`cutout calibrate-threshold`: the quality score's routing threshold, chosen on a validation set.

The feedback transformer sends a cutout whose score (`confidence.mask_confidence`) is below the threshold
to people for review, and the others to the retraining store. Here a model predicts every validation
pair; each gets its true IoU (full resolution, as `cutout evaluate` computes it) and its score (on the
network-resolution map, as the predictor computes it). A mask with IoU < 0.95 is *bad*.

The rule, with the targets `max_routed` = 20% of all images and `min_caught` = 80% of the bad ones:

1. the *budget* threshold: the largest that routes at most `max_routed` of the images;
2. the *catch* threshold: the smallest that routes at least `min_caught` of the bad images;
3. when catch ≤ budget both targets hold: take the threshold halfway between them in images routed
   (the score of the image at that rank), which leaves a margin on both targets for new photos (the
   budget threshold itself routes more than `max_routed` of photos it was not chosen on). Otherwise the
   model makes too many bad masks for both to hold: take the catch threshold (bad masks kept out of
   retraining come first) and report the target as missed.

A threshold is always the score of one of the images (or just above the highest score): an image is
routed when its score is strictly below it.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from cutout.data.io import read_image, read_mask
from cutout.data.manifest import UNLABELLED_DOMAIN, record_domain
from cutout.evaluate.confidence import mask_confidence
from cutout.evaluate.evaluation import DEFAULT_CLUSTER, score_pairs
from cutout.evaluate.metrics import iou
from cutout.model.inference import MaskPredictor, preprocess, upscale_probabilities
from cutout.platform import storage

BAD_IOU = 0.95  # masks below this IoU should go to review
MAX_ROUTED = 0.2  # at most this share of all images goes to review
MIN_CAUGHT = 0.8  # at least this share of the bad masks goes to review


@dataclass(frozen=True)
class ImageConfidence:
    """One validation pair: its true IoU and its quality score."""

    id: str
    cluster: str
    iou: float
    score: float
    domain: str = UNLABELLED_DOMAIN  # the record's (see `cutout.data.manifest.record_domain`)


@dataclass(frozen=True)
class ThresholdChoice:
    """The chosen threshold and what it does on the validation set.

    Attributes:
        threshold: images scoring below it are routed to review.
        routed: the share of all images routed.
        caught: the share of the bad images (IoU < bad_iou) routed; None when there are none.
        meets_target: whether routed ≤ max_routed and caught ≥ min_caught both hold.
        rule: which threshold of the rule was taken, in words.
    """

    threshold: float
    routed: float
    caught: float | None
    meets_target: bool
    rule: str


@dataclass(frozen=True)
class Calibration:
    """What `calibrate_threshold` measured and chose (`report` is the HTML page's URI, or None)."""

    model_uri: str
    data: str
    split: str | None
    bad_iou: float
    max_routed: float
    min_caught: float
    count: int
    bad_share: float
    spearman: float | None
    choice: ThresholdChoice
    images: list[ImageConfidence]
    report: str | None = None

    def summary(self) -> dict:
        """Everything but the per-image list and the report's URI, as JSON-ready values."""
        fields = dataclasses.asdict(self)
        del fields["images"], fields["report"]
        return fields


def routing_rates(
    scores: Sequence[float], ious: Sequence[float], threshold: float, bad_iou: float = BAD_IOU
) -> tuple[float, float | None]:
    """(share of all images routed, share of the bad images routed or None if none) at `threshold`."""
    scores, bad = np.asarray(scores, dtype=np.float64), np.asarray(ious) < bad_iou
    routed = scores < threshold
    return float(routed.mean()), (float(routed[bad].mean()) if bad.any() else None)


def _catch_threshold(scores: np.ndarray, bad: np.ndarray, min_caught: float) -> float:
    """The smallest threshold routing at least `min_caught` of the bad images (some must exist)."""
    needed = math.ceil(min_caught * np.count_nonzero(bad) - 1e-9)
    last = np.sort(scores[bad])[needed - 1]  # the highest-scoring bad image that must be routed
    above = scores[scores > last]
    return float(above.min()) if above.size else float(np.nextafter(last, np.inf))


def choose_threshold(
    scores: Sequence[float],
    ious: Sequence[float],
    bad_iou: float = BAD_IOU,
    max_routed: float = MAX_ROUTED,
    min_caught: float = MIN_CAUGHT,
) -> ThresholdChoice:
    """The routing threshold by the module's rule, and both rates at it.

    Args:
        scores: each image's quality score.
        ious: each image's true IoU, in the same order.
        bad_iou: masks below this IoU are bad.
        max_routed: the review budget, a share of all images in [0, 1).
        min_caught: the share of the bad images to route, in (0, 1].

    Raises:
        ValueError: for no images, lists of different lengths, or shares out of range.
    """
    scores, ious = np.asarray(scores, dtype=np.float64), np.asarray(ious, dtype=np.float64)
    if scores.size == 0 or scores.shape != ious.shape:
        raise ValueError(f"need one score per IoU and at least one image, got {scores.size} and {ious.size}")
    if not (0.0 <= max_routed < 1.0 and 0.0 < min_caught <= 1.0):
        raise ValueError(f"need 0 ≤ max_routed < 1 and 0 < min_caught ≤ 1, got {max_routed}, {min_caught}")
    bad = ious < bad_iou
    # At most floor(max_routed·n) images score below the (floor(max_routed·n)+1)-th lowest score.
    budget = float(np.sort(scores)[math.floor(max_routed * scores.size + 1e-9)])
    catch = _catch_threshold(scores, bad, min_caught) if bad.any() else -math.inf
    if catch <= budget:
        # Halfway, in images routed, between the two: a margin on both targets for photos to come.
        ordered = np.sort(scores)
        threshold, met = float(ordered[(np.sum(scores < catch) + np.sum(scores < budget)) // 2]), True
        rule = (f"halfway (in images routed) between the smallest threshold catching ≥ {min_caught:.0%} of "
                f"bad masks and the largest routing ≤ {max_routed:.0%} of images")  # fmt: skip
    else:
        threshold, met = catch, False
        rule = (f"smallest threshold catching ≥ {min_caught:.0%} of bad masks: it routes more than "
                f"{max_routed:.0%} of images (too many bad masks for both targets)")  # fmt: skip
    routed, caught = routing_rates(scores, ious, threshold, bad_iou)
    return ThresholdChoice(threshold=threshold, routed=routed, caught=caught, meets_target=met, rule=rule)


def score_batch(predictor: MaskPredictor, batch: list[dict], data: str) -> list[ImageConfidence]:
    """Predict one batch of a dataset's pairs; each pair's true IoU and quality score.

    The score reads the network-resolution map, as the predictor does when it serves; the IoU, the
    map upscaled to the photo (no min-max stretch: models trained here are calibrated), as
    `cutout evaluate` does.
    """
    images = [read_image(storage.join(data, record["image"])) for record in batch]
    maps = predictor.predict(np.stack([preprocess(image, predictor.input_size) for image in images]))
    results = []
    for record, image, probabilities in zip(batch, images, maps, strict=True):
        truth = read_mask(storage.join(data, record["mask"]))
        full = upscale_probabilities(probabilities, image.size)
        if truth.shape != full.shape:
            raise ValueError(f"pair {record['id']}: mask is {truth.shape[::-1]}, photo is {image.size} (W×H)")
        cluster = str(record.get("cluster") or DEFAULT_CLUSTER)
        confidence = mask_confidence(probabilities)
        results.append(
            ImageConfidence(record["id"], cluster, iou(full, truth), confidence, record_domain(record))
        )
    return results


def spearman(scores: Sequence[float], ious: Sequence[float]) -> float | None:
    """Spearman's rank correlation of score and IoU; None when it is undefined (fewer than 2, or constant)."""
    if len(scores) < 2:
        return None
    value = float(stats.spearmanr(scores, ious).statistic)
    return None if math.isnan(value) else value


def calibrate_threshold(
    model_uri: str,
    data: str,
    split: str | None = "val",
    out: str | None = None,
    batch_size: int = 8,
    bad_iou: float = BAD_IOU,
    max_routed: float = MAX_ROUTED,
    min_caught: float = MIN_CAUGHT,
    on_progress: Callable[[], None] | None = None,
) -> Calibration:
    """Score a model's masks on a dataset's validation pairs and choose the routing threshold.

    Args:
        model_uri: anything `load_predictor` takes (checkpoint, `.onnx`, `models:/NAME@ALIAS`).
        data: a dataset folder or `s3://` prefix with a `manifest.jsonl`.
        split: the records' split; None, or a manifest without splits, uses all pairs.
        out: when given, the report folder or `s3://` prefix: `calibration.json`, `per_image.jsonl`,
            `scatter.png`, `index.html`.
        batch_size: photos per forward pass.
        bad_iou, max_routed, min_caught: the targets of the rule (see the module's docstring).
        on_progress: called once per pair, after its batch is scored.

    Raises:
        ValueError: when no pair is selected, or a mask's size differs from its photo's.
    """
    score = functools.partial(score_batch, data=data)
    split, images = score_pairs(model_uri, data, split, batch_size, score, on_progress)
    if not images:
        raise ValueError(f"{data}: no pairs to calibrate on" + (f" in split {split!r}" if split else ""))
    scores, ious = [image.score for image in images], [image.iou for image in images]
    choice = choose_threshold(scores, ious, bad_iou, max_routed, min_caught)
    result = Calibration(
        model_uri=model_uri, data=data, split=split, bad_iou=bad_iou, max_routed=max_routed,
        min_caught=min_caught, count=len(images), bad_share=float(np.mean(np.asarray(ious) < bad_iou)),
        spearman=spearman(scores, ious), choice=choice, images=images,
    )  # fmt: skip
    return dataclasses.replace(result, report=write_calibration_report(out, result)) if out else result


def _write_scatter(uri: str, result: Calibration) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazily: only reports need it
    from matplotlib.figure import Figure

    scores = np.array([image.score for image in result.images])
    ious = np.array([image.iou for image in result.images])
    bad = ious < result.bad_iou
    figure = Figure(figsize=(7, 4.5), layout="constrained")
    axes = figure.add_subplot()
    axes.scatter(scores[~bad], ious[~bad], s=10, color="#4a78b0", label=f"IoU ≥ {result.bad_iou}")
    axes.scatter(scores[bad], ious[bad], s=10, color="#c44", label=f"IoU < {result.bad_iou}")
    axes.axvline(result.choice.threshold, color="#222", linestyle="--", linewidth=1, label="threshold")
    axes.axhline(result.bad_iou, color="#888", linestyle=":", linewidth=1)
    rho = "n/a" if result.spearman is None else f"{result.spearman:.3f}"
    axes.set(xlabel="quality score", ylabel="true IoU", title=f"{result.count} images, Spearman {rho}")
    axes.legend(loc="lower right")
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    storage.write_bytes(uri, buffer.getvalue())


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def write_calibration_report(out: str, result: Calibration) -> str:
    """Write `calibration.json`, `per_image.jsonl`, `scatter.png` and `index.html`; return the page's URI."""
    storage.write_text(storage.join(out, "calibration.json"), json.dumps(result.summary(), indent=2) + "\n")
    threshold = result.choice.threshold
    lines = (
        json.dumps({**dataclasses.asdict(image), "routed": image.score < threshold}) + "\n"
        for image in result.images
    )
    storage.write_text(storage.join(out, "per_image.jsonl"), "".join(lines))
    _write_scatter(storage.join(out, "scatter.png"), result)
    rows = {
        "images": str(result.count),
        f"share with IoU < {result.bad_iou}": _percent(result.bad_share),
        "Spearman (score, IoU)": "n/a" if result.spearman is None else f"{result.spearman:.3f}",
        "threshold": f"{threshold:.4f}",
        "routed to review": f"{_percent(result.choice.routed)} of all (target ≤ {result.max_routed:.0%})",
        "bad masks caught": f"{_percent(result.choice.caught)} (target ≥ {result.min_caught:.0%})",
        "both targets met": "yes" if result.choice.meets_target else "no",
    }
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows.items())
    subtitle = f"model {result.model_uri} on {result.data}, " + (
        f"split {result.split}" if result.split else "all"
    )
    page = (
        "<!doctype html><meta charset='utf-8'><title>cutout threshold calibration</title>"
        f"<h1>Routing threshold calibration</h1><p>{html.escape(subtitle)}</p><table>{table}</table>"
        f"<p>rule: {html.escape(result.choice.rule)}</p><img src='scatter.png' alt='score against IoU'>"
    )
    uri = storage.join(out, "index.html")
    storage.write_text(uri, page)
    return uri
