"""Register and promote: a new model version in MLflow; the champion alias if it beats the champion."""

from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model

from components import base_image


@dsl.component(base_image=base_image(), install_kfp_package=False)
def register_and_promote(
    model: Input[Model], metrics: Input[Metrics], holdout: Input[Dataset], promotion_margin: float
) -> NamedTuple("Registered", [("version", str), ("model_uri", str), ("promoted", bool)]):
    """Register the trained model with its metrics, calibrate its routing threshold, promote it if it is good.

    The gate compares `mean_iou` with the champion's, on the same holdout only (`cutout.platform.registry`).

    Args:
        model: The trained model (metadata `run_id`).
        metrics: Its evaluation metrics, stored on the version as tags.
        holdout: The evaluation dataset: its manifest hash is stored; the threshold is calibrated on it.
        promotion_margin: How much higher than the champion's the mean IoU must be.

    Returns:
        The new version, its `models:/cutout/<version>` URI, and whether it became the champion.
    """
    from collections import namedtuple

    from cutout.pipeline import steps

    src = holdout.metadata["uri"]
    scores = {key: value for key, value in metrics.metadata.items() if isinstance(value, int | float)}
    decision = steps.register_and_promote(model.metadata["run_id"], scores, src, promotion_margin,
                                          calibration_out=steps.sibling(src, "calibration"))  # fmt: skip
    registered = namedtuple("Registered", ["version", "model_uri", "promoted"])
    return registered(decision["version"], decision["model_uri"], decision["promoted"])
