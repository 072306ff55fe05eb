"""Evaluate: the trained model on the held-out split; metrics and the HTML report as KFP artifacts."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from components import base_image


@dsl.component(base_image=base_image(), install_kfp_package=False)
def evaluate(model: Input[Model], holdout: Input[Dataset], metrics: Output[Metrics], report: Output[HTML]):
    """Score the model on the holdout's `val` split (`cutout evaluate`), log the report to its MLflow run.

    Args:
        model: The trained model (metadata `model_uri`, `run_id`).
        holdout: The clustered dataset, whose `val` split no training step has seen.
        metrics: IoU (mean, shares ≥ 0.95/0.97/0.99), MAE, max F-beta, boundary IoU; `report` is its URI.
        report: The evaluation report: per-cluster figures, worst and best examples.
    """
    from cutout.pipeline import steps

    src = holdout.metadata["uri"]
    results = steps.evaluate(model.metadata["model_uri"], src, steps.sibling(src, "evaluation"),
                             model.metadata.get("run_id"))  # fmt: skip
    for name, value in results.items():
        if isinstance(value, int | float):
            metrics.log_metric(name, value)
    metrics.metadata["report"] = results["report"]
    with open(report.path, "w", encoding="utf-8") as page:
        page.write(steps.self_contained_html(results["report"]))
    print(f"{results['count']} pairs: mean IoU {results['mean_iou']:.4f}; report {results['report']}")
