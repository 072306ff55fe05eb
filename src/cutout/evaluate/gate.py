"""The promotion gate: is a candidate better than the champion beyond the holdouts' own noise?

Both models are scored on the same photos, domain by domain (`real` photographs, the `synthetic`
catalogue, ...), and compared photo by photo. The mean of the per-photo IoU differences gets a bootstrap
interval (resampling photos): a difference inside that interval's reach is noise. Rules, in order:

1. A candidate that loses more than `loss_tolerance` mean IoU on any domain is refused, whatever it
   gains elsewhere (real photographs are what cutout is judged on).
2. It is promoted when, on at least one domain, the whole 95% interval lies above `margin`.
3. Otherwise it is refused: its gains are within noise. The reason shows every interval.

A domain of fewer than `MIN_PHOTOS` photos is shown but decides nothing either way: two corrected photos
that happened to land in the `val` split say nothing about a model, and their bootstrap interval (over
two values) would look far surer than it is.

Why a paired bootstrap rather than comparing two means: the same holdout scored twice differs mostly by
which photos are hard, and pairing removes that; with 60 photos a 0.0004 difference decided promotions
before (one clone promoted, another refused the same run).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

LOSS_TOLERANCE = 0.005  # mean IoU a candidate may lose on a domain before it is refused
MIN_PHOTOS = 10  # a domain with fewer photos is shown, not judged
BOOTSTRAP_SAMPLES = 10_000
CONFIDENCE = 0.95


@dataclass(frozen=True)
class PairedComparison:
    """Candidate against champion on one domain's photos: means, their difference and its interval."""

    domain: str
    count: int
    candidate: float
    champion: float
    difference: float  # candidate − champion, mean over the photos
    low: float  # the bootstrap interval of `difference` (CONFIDENCE)
    high: float

    def describe(self) -> str:
        interval = f"{CONFIDENCE:.0%} interval [{self.low:+.4f}, {self.high:+.4f}]"
        scores = f"{self.candidate:.4f} vs {self.champion:.4f}"
        return f"{self.domain} ({self.count} photos) {scores}: {self.difference:+.4f}, {interval}"


@dataclass(frozen=True)
class GateVerdict:
    """The gate's decision, why, and the comparisons it rests on."""

    promoted: bool
    reason: str
    comparisons: tuple[PairedComparison, ...]


def compare_paired(
    domain: str, candidate: Mapping[str, float], champion: Mapping[str, float], seed: int = 0
) -> PairedComparison:
    """Compare two models' per-photo IoUs on the same photos (keyed by pair id).

    Raises:
        ValueError: the two were scored on different photos, or on none.
    """
    if candidate.keys() != champion.keys() or not candidate:
        only = sorted(candidate.keys() ^ champion.keys())[:3]
        raise ValueError(f"{domain}: the candidate and the champion were not scored on the same photos "
                         f"(e.g. {only or 'none at all'})")  # fmt: skip
    ids = sorted(candidate)
    differences = np.array([candidate[i] - champion[i] for i in ids])
    rng = np.random.default_rng(seed)
    resampled = differences[rng.integers(0, len(ids), size=(BOOTSTRAP_SAMPLES, len(ids)))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(resampled, [tail, 1 - tail])
    return PairedComparison(domain, len(ids), float(np.mean([candidate[i] for i in ids])),
                            float(np.mean([champion[i] for i in ids])), float(differences.mean()),
                            float(low), float(high))  # fmt: skip


def judge(
    comparisons: list[PairedComparison], margin: float = 0.0, loss_tolerance: float = LOSS_TOLERANCE
) -> GateVerdict:
    """Apply the gate's rules (see the module) to the per-domain comparisons."""
    if not comparisons:
        raise ValueError("no holdout to compare the candidate and the champion on")
    judged = [comparison for comparison in comparisons if comparison.count >= MIN_PHOTOS]
    shown = "; ".join(comparison.describe() for comparison in comparisons)
    if len(judged) < len(comparisons):
        shown += f" (domains under {MIN_PHOTOS} photos are not judged)"
    if not judged:
        return GateVerdict(False, f"too few photos to judge on any domain: {shown}", tuple(comparisons))
    for comparison in judged:
        if comparison.difference < -loss_tolerance:
            reason = (f"loses {-comparison.difference:.4f} mean IoU on {comparison.domain} photos (more than "
                      f"{loss_tolerance}): {shown}")  # fmt: skip
            return GateVerdict(False, reason, tuple(comparisons))
    better = [comparison.domain for comparison in judged if comparison.low > margin]
    if better:
        reason = f"better on {', '.join(better)} beyond noise (interval above {margin}): {shown}"
        return GateVerdict(True, reason, tuple(comparisons))
    return GateVerdict(False, f"no gain beyond the holdouts' noise: {shown}", tuple(comparisons))


def ious_by_domain(per_image: list[dict]) -> dict[str, dict[str, float]]:
    """Per-photo IoUs (`per_image.jsonl` records of an evaluation) grouped by domain, keyed by pair id."""
    grouped: dict[str, dict[str, float]] = {}
    for record in per_image:
        grouped.setdefault(record.get("domain") or "unlabelled", {})[record["id"]] = float(record["iou"])
    return grouped
