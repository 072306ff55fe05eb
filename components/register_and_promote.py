"""Register and promote: a new model version in MLflow; the champion alias if it beats the champion."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model

from components import base_image


@dsl.component(base_image=base_image(), install_kfp_package=False)
def register_and_promote(
    model: Input[Model],
    metrics: Input[Metrics],
    holdout: Input[Dataset],
    promotion_margin: float,
    real_holdout_uri: str = "",
    extra_holdout_uris: str = "",
) -> NamedTuple("Registered", [("version", str), ("model_uri", str), ("promoted", bool)]):
    """Register the trained model with its metrics, calibrate its routing threshold, promote it if it is good.

    The gate scores the candidate and the champion on the same photos, per domain, and promotes a gain
    beyond the holdouts' noise that loses no more than 0.005 mean IoU on real photos
    (`cutout.evaluate.gate`); the reason and the intervals are written on the version.

    Args:
        model: The trained model (metadata `run_id`).
        metrics: Its evaluation metrics, stored on the version as tags.
        holdout: The evaluation dataset: its manifest hash is stored; the threshold is calibrated on it.
        promotion_margin: How far above zero the gain's 95% interval must start on some domain.
        real_holdout_uri: Real photos compared on beside the holdout: empty, those cutout ships; `none`,
            none.
        extra_holdout_uris: More datasets (comma-separated) compared on, all their pairs, grouped by
            their records' `domain` (e.g. photos on a new backdrop).

    Returns:
        The new version, its `models:/cutout/<version>` URI, and whether it became the champion.
    """
    from collections import namedtuple

    from cutout.pipeline import steps

    src = holdout.metadata["uri"]
    scores = {key: value for key, value in metrics.metadata.items() if isinstance(value, int | float)}
    decision = steps.register_and_promote(model.metadata["run_id"], scores, src, promotion_margin,
                                          calibration_out=steps.sibling(src, "calibration"),
                                          real_holdout=steps.real_holdout(real_holdout_uri),
                                          extra_holdouts=steps.uri_list(extra_holdout_uris))  # fmt: skip
    registered = namedtuple("Registered", ["version", "model_uri", "promoted"])
    return registered(decision["version"], decision["model_uri"], decision["promoted"])
