"""The promotion gate: better beyond noise, never worse on real photographs."""

from __future__ import annotations

import numpy as np
import pytest

from cutout.evaluate.gate import compare_paired, ious_by_domain, judge


def scores(values) -> dict[str, float]:
    return {f"p{i:03d}": float(v) for i, v in enumerate(values)}


def test_a_difference_within_the_holdouts_noise_is_refused_with_its_interval():
    rng = np.random.default_rng(1)
    champion = rng.uniform(0.90, 0.99, 60)
    candidate = champion + rng.normal(0.0004, 0.01, 60)  # the demo's old 0.0004 "win"

    comparison = compare_paired("real", scores(candidate), scores(champion))
    verdict = judge([comparison])

    assert comparison.low < 0 < comparison.high
    assert not verdict.promoted
    assert verdict.reason.startswith("no gain beyond the holdouts' noise: real (60 photos)")
    assert "95% interval [" in verdict.reason


def test_a_consistent_gain_is_promoted_and_a_real_photo_loss_refused_whatever_else_it_gains():
    rng = np.random.default_rng(2)
    champion_real, champion_synthetic = rng.uniform(0.9, 0.97, 100), rng.uniform(0.9, 0.97, 100)
    better_real = compare_paired("real", scores(champion_real + 0.01 + rng.normal(0, 0.005, 100)),
                                 scores(champion_real))  # fmt: skip
    much_better_synthetic = compare_paired(
        "synthetic", scores(champion_synthetic + 0.03), scores(champion_synthetic)
    )
    worse_real = compare_paired("real", scores(champion_real - 0.008), scores(champion_real))

    promoted = judge([better_real, much_better_synthetic])
    refused = judge([worse_real, much_better_synthetic])

    assert promoted.promoted and promoted.reason.startswith("better on real, synthetic beyond noise")
    assert not refused.promoted
    assert refused.reason.startswith("loses 0.0080 mean IoU on real photos (more than 0.005)")


def test_models_scored_on_different_photos_are_not_compared():
    with pytest.raises(ValueError, match="not scored on the same photos"):
        compare_paired("real", {"a": 0.9, "b": 0.8}, {"a": 0.9, "c": 0.8})


def test_per_image_records_group_by_domain():
    records = [{"id": "a", "iou": 0.9, "domain": "real"}, {"id": "b", "iou": 0.8, "domain": "synthetic"},
               {"id": "c", "iou": 0.7}]  # fmt: skip
    assert ious_by_domain(records) == {"real": {"a": 0.9}, "synthetic": {"b": 0.8}, "unlabelled": {"c": 0.7}}


def test_a_domain_of_a_few_photos_is_shown_but_decides_nothing():
    rng = np.random.default_rng(3)
    champion_real = rng.uniform(0.9, 0.97, 50)
    same_real = compare_paired("real", scores(champion_real), scores(champion_real))
    two_better = compare_paired("feedback", {"a": 0.99, "b": 0.98}, {"a": 0.90, "b": 0.91})
    two_worse = compare_paired("feedback", {"a": 0.5, "b": 0.6}, {"a": 0.9, "b": 0.9})

    for few in (two_better, two_worse):
        verdict = judge([same_real, few])
        assert not verdict.promoted and verdict.reason.startswith("no gain beyond the holdouts' noise")
        assert "feedback (2 photos)" in verdict.reason and "under 10 photos are not judged" in verdict.reason
    alone = judge([two_better])
    assert not alone.promoted and alone.reason.startswith("too few photos to judge on any domain")
