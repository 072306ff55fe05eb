"""Segmentation metrics for one image and for a dataset: IoU, MAE, max F-β, boundary IoU.

Each per-image metric takes a probability map in [0, 1] and a boolean true mask of the same shape, at
the photo's full resolution. Conventions, chosen to match the references the tests compare against:

- **IoU** of the mask `probabilities ≥ 0.5` (as in training) with the truth; 1 when both are empty.
- **MAE**: the mean of |probability − truth| over all pixels.
- **max F-β**, β² = 0.3 (salient-object detection, as in `pysodmetrics`): the map is thresholded at
  k/255 for k = 0…255 and the best F-β = (1 + β²)·TP / ((1 + β²)·TP + β²·FN + FP) is kept (the
  precision/recall form, without its 0/0 cases). With both masks empty, F-β is 1, like IoU.
- **boundary IoU** (Cheng et al., CVPR 2021): the IoU of the two masks' boundary bands, the mask pixels
  within d pixels of the contour (chessboard distance, the image border counting as contour, as in the
  official code), d = 2% of the image diagonal, at least 1.

All are written here, in NumPy: they are a few lines each, and the reference libraries either need
torch tensors for every call (torchmetrics) or are not installable here (pysodmetrics). The tests check
them against torchmetrics on the same masks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

MASK_THRESHOLD = 0.5
FBETA_BETA2 = 0.3
FBETA_THRESHOLDS = np.arange(256) / 255.0  # the 256 thresholds of the salient-object convention
BOUNDARY_RATIO = 0.02  # the band's width as a fraction of the image diagonal (Cheng et al.)
IOU_LEVELS = (0.95, 0.97, 0.99)  # summaries report the share of images at or above each


@dataclass(frozen=True)
class ImageScore:
    """The metrics of one evaluated pair, and which pair and cluster it was."""

    id: str
    cluster: str
    iou: float
    mae: float
    max_fbeta: float
    boundary_iou: float
    domain: str = "unlabelled"  # `real` photos or the `synthetic` catalogue: summarised apart


# --- per image ---------------------------------------------------------------------------------


def _checked(probabilities: np.ndarray, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both inputs as arrays (float, bool) of one 2-D shape, or a ValueError naming the shapes."""
    probabilities, truth = np.asarray(probabilities), np.asarray(truth, dtype=bool)
    if probabilities.shape != truth.shape or probabilities.ndim != 2:
        raise ValueError(f"need two H×W arrays of one shape, got {probabilities.shape} and {truth.shape}")
    return probabilities, truth


def mask_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """|predicted ∩ truth| / |predicted ∪ truth| of two boolean masks; 1 when both are empty."""
    union = np.count_nonzero(predicted | truth)
    return np.count_nonzero(predicted & truth) / union if union else 1.0


def iou(probabilities: np.ndarray, truth: np.ndarray, threshold: float = MASK_THRESHOLD) -> float:
    """IoU of the mask `probabilities ≥ threshold` with the true mask; 1 when both are empty."""
    probabilities, truth = _checked(probabilities, truth)
    return mask_iou(probabilities >= threshold, truth)


def mae(probabilities: np.ndarray, truth: np.ndarray) -> float:
    """Mean absolute error between the probability map and the true mask (0 or 1 per pixel)."""
    probabilities, truth = _checked(probabilities, truth)
    return float(np.abs(probabilities.astype(np.float64) - truth).mean())


def fbeta_from_counts(
    tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, beta2: float = FBETA_BETA2
) -> np.ndarray:
    """F-β from true-positive, false-positive and false-negative counts; 1 where all three are 0."""
    tp, fp, fn = (np.asarray(count, dtype=np.float64) for count in (tp, fp, fn))
    denominator = (1 + beta2) * tp + beta2 * fn + fp
    return np.divide((1 + beta2) * tp, denominator, out=np.ones_like(tp), where=denominator > 0)


def fbeta_curve(probabilities: np.ndarray, truth: np.ndarray, beta2: float = FBETA_BETA2) -> np.ndarray:
    """F-β of the mask `probabilities ≥ FBETA_THRESHOLDS[k]`, for each of the 256 thresholds k.

    One pass: each pixel's threshold index is found once, two histograms (over the true foreground
    and background) are summed from the top, and TP/FP at every threshold fall out.
    """
    probabilities, truth = _checked(probabilities, truth)
    # The highest k with FBETA_THRESHOLDS[k] ≤ p: the pixel is predicted foreground for thresholds 0…k.
    level = np.searchsorted(FBETA_THRESHOLDS, probabilities, side="right") - 1
    size = len(FBETA_THRESHOLDS)
    tp = np.bincount(level[truth], minlength=size)[::-1].cumsum()[::-1]
    fp = np.bincount(level[~truth], minlength=size)[::-1].cumsum()[::-1]
    return fbeta_from_counts(tp, fp, np.count_nonzero(truth) - tp, beta2)


def max_fbeta(probabilities: np.ndarray, truth: np.ndarray, beta2: float = FBETA_BETA2) -> float:
    """The best F-β over the 256 thresholds (the salient-object detection "max F-measure")."""
    return float(fbeta_curve(probabilities, truth, beta2).max())


def boundary_width(shape: tuple[int, ...], ratio: float = BOUNDARY_RATIO) -> int:
    """The boundary band's width in pixels: `ratio` × the image diagonal, rounded, at least 1."""
    height, width = shape[:2]
    return max(1, round(ratio * math.hypot(height, width)))


def boundary_band(mask: np.ndarray, width: int) -> np.ndarray:
    """The pixels of `mask` within `width` pixels (chessboard distance) of its contour or the image edge.

    The same set as the official code's `mask − erode(pad(mask), 3×3, width times)`, in one distance
    transform instead of `width` erosions.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1)  # outside the image counts as background
    distance = ndimage.distance_transform_cdt(padded, metric="chessboard")[1:-1, 1:-1]
    return mask & (distance <= width)


def boundary_iou(
    probabilities: np.ndarray,
    truth: np.ndarray,
    threshold: float = MASK_THRESHOLD,
    ratio: float = BOUNDARY_RATIO,
) -> float:
    """Boundary IoU (Cheng et al. 2021): IoU of the predicted and true masks' boundary bands."""
    probabilities, truth = _checked(probabilities, truth)
    width = boundary_width(truth.shape, ratio)
    return mask_iou(boundary_band(probabilities >= threshold, width), boundary_band(truth, width))


def score_image(
    pair_id: str, cluster: str, probabilities: np.ndarray, truth: np.ndarray, domain: str = "unlabelled"
) -> ImageScore:
    """All four metrics of one pair."""
    probabilities, truth = _checked(probabilities, truth)
    return ImageScore(
        id=pair_id,
        cluster=cluster,
        iou=iou(probabilities, truth),
        mae=mae(probabilities, truth),
        max_fbeta=max_fbeta(probabilities, truth),
        boundary_iou=boundary_iou(probabilities, truth),
        domain=domain,
    )


# --- over a dataset ----------------------------------------------------------------------------


def summarize_group(scores: Sequence[ImageScore]) -> dict[str, float]:
    """Count, mean of each metric, and the share of images with IoU at or above each of `IOU_LEVELS`."""
    ious = np.array([score.iou for score in scores])
    summary: dict[str, float] = {"count": len(scores), "mean_iou": float(ious.mean())}
    summary |= {f"iou_ge_{level}": float((ious >= level).mean()) for level in IOU_LEVELS}
    for name in ("mae", "max_fbeta", "boundary_iou"):
        summary[f"mean_{name}"] = float(np.mean([getattr(score, name) for score in scores]))
    return summary


def summarize(scores: Sequence[ImageScore]) -> dict:
    """The dataset's summary (`summarize_group` of all images) plus `per_cluster` and `per_domain`.

    Raises:
        ValueError: when there are no scores (a mean over nothing would be NaN).
    """
    if not scores:
        raise ValueError("no images were evaluated")
    return {
        **summarize_group(scores),
        "per_cluster": _per(scores, "cluster"),
        "per_domain": _per(scores, "domain"),
    }


def _per(scores: Sequence[ImageScore], field: str) -> dict[str, dict[str, float]]:
    groups: dict[str, list[ImageScore]] = {}
    for score in scores:
        groups.setdefault(getattr(score, field), []).append(score)
    return {name: summarize_group(groups[name]) for name in sorted(groups)}
