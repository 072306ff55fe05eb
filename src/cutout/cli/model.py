"""Training, evaluation, the registry, the routing threshold: `cutout train`, `evaluate`, `register`, …"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated

import typer
from rich.markup import escape

from cutout.cli.common import MODEL_HELP, T, app, console, fail, with_progress
from cutout.platform.names import MODEL_NAME, REGISTRY_SCHEME, is_registry_uri


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False
)
def train(context: typer.Context) -> None:
    """Train U²-Net: alone, or `--workers N` local Horovod workers (see `cutout train --help`)."""
    from cutout.train.train import cli as train_cli

    raise typer.Exit(code=train_cli(context.args))


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    data: Annotated[str, typer.Option(help="Dataset folder or s3:// prefix.")],
    out: Annotated[str, typer.Option(help="Report folder or s3:// prefix.")],
    split: Annotated[
        str | None, typer.Option(help="Which split; all pairs if the manifest has none.")
    ] = "val",
    run_id: Annotated[str | None, typer.Option(help="Also log the report to this MLflow run.")] = None,
) -> None:
    """IoU (overall, per cluster), MAE, max F-beta, boundary IoU; metrics.json and an HTML report."""
    from cutout.evaluate.evaluation import evaluate_model

    result = with_progress("evaluating", partial(evaluate_model, model, data, out, split))
    if run_id:
        _log_report(run_id, out, result.metrics)
    figures = ", ".join(
        f"{k} {result.metrics[k]:.4f}" for k in ("mean_iou", "iou_ge_0.95", "mean_boundary_iou")
    )
    console.print(f"{result.metrics['count']} pairs: {figures}\nreport: {result.report}")


def _log_report(run_id: str, report: str, metrics: dict) -> None:
    import mlflow

    from cutout.platform.tracking import configure_tracking, log_report

    configure_tracking()
    with mlflow.start_run(run_id=run_id):
        log_report(report)
        mlflow.log_metrics({f"eval_{k}": v for k, v in metrics.items() if isinstance(v, int | float)})


@app.command()
def register(
    run_id: Annotated[
        str | None, typer.Option(help="The training run that logged the model (`latest`: the newest one).")
    ] = None,
    metrics: Annotated[str | None, typer.Option(help="metrics.json from `cutout evaluate`.")] = None,
    model: Annotated[
        str | None,
        typer.Option(help="A built-in model to register instead of a run's (`u2netp`): a registry's start."),
    ] = None,
    name: Annotated[str, typer.Option(help="Registered model name.")] = MODEL_NAME,
    holdout: Annotated[
        str | None, typer.Option(help="The evaluation dataset (its manifest hash is kept).")
    ] = None,
) -> None:
    """Register the run's model (or a built-in one) as a new version, with its evaluation metrics."""
    import json

    from cutout.data.manifest import manifest_hash
    from cutout.platform import storage
    from cutout.platform.registry import LATEST, latest_model_run, register_model

    if (run_id is None) == (model is None):
        raise fail("give either --run-id (a training run's model) or --model (a built-in model), not both")
    if model is not None:
        from cutout.train.logged_model import register_builtin

        version = register_builtin(model, name)
    else:
        scores = json.loads(storage.read_text(metrics)) if metrics else {}
        scores = {k: v for k, v in scores.items() if isinstance(v, int | float)}
        run_id = latest_model_run() if run_id == LATEST else run_id
        version = register_model(run_id, name, scores, manifest_hash(holdout) if holdout else None)
    print(version)
    console.print(f"registered {name} version {version}" + (f" ({model})" if model else ""))


@app.command()
def promote(
    version: Annotated[str, typer.Option(help="The candidate version (`latest`: the newest).")],
    holdout: Annotated[
        list[str] | None,
        typer.Option(
            help="A dataset both models are scored on, photo by photo (its val split, or all its "
            "pairs); repeat for more. Needed once there is a champion."
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="Registered model name.")] = MODEL_NAME,
    margin: Annotated[
        float, typer.Option(help="The mean IoU gain whose whole 95% interval a domain must clear.")
    ] = 0.0,
) -> None:
    """Make a version the champion if it beats the current one beyond noise (the pipeline's gate)."""
    from cutout.pipeline.steps import gate_against_champion
    from cutout.platform.registry import LATEST, champion_version, latest_version

    version = latest_version(name) if version == LATEST else version
    champion = champion_version(name)
    if champion is not None and str(champion.version) != str(version) and not holdout:
        raise fail(f"{name} has a champion (version {champion.version}): give --holdout DATA, the photos "
                   "the gate scores both versions on")  # fmt: skip
    decision = gate_against_champion(name, version, [(data, "val") for data in holdout or []], margin)
    verdict = "[green]promoted[/green]" if decision["promoted"] else "[yellow]not promoted[/yellow]"
    console.print(f"{name} version {version}: {verdict}: {escape(decision['reason'])}", soft_wrap=True)


@app.command("calibrate-threshold")
def calibrate_threshold(
    model: Annotated[str, typer.Option(help=MODEL_HELP)],
    data: Annotated[str, typer.Option(help="Dataset folder or s3:// prefix.")],
    out: Annotated[str, typer.Option(help="Report folder or s3:// prefix.")],
    split: Annotated[
        str | None, typer.Option(help="Which split; all pairs if the manifest has none.")
    ] = "val",
    register: Annotated[
        str | None,
        typer.Option(
            help="Store the threshold on this version: NAME/VERSION or models:/… (default: --model)."
        ),
    ] = None,
) -> None:
    """Choose the quality score's routing threshold on a validation set; store it on the model version."""
    from cutout.evaluate.calibration import calibrate_threshold as calibrate
    from cutout.platform.registry import routing_threshold, set_routing_threshold

    target = register or (model if is_registry_uri(model) else None)
    uri = None if target is None else target if is_registry_uri(target) else f"{REGISTRY_SCHEME}{target}"
    if uri is not None:
        _on_model_version(routing_threshold, uri)  # a missing version fails now, not after calibrating
    result = with_progress("calibrating", partial(calibrate, model, data, split, out))
    choice, rho = result.choice, "n/a" if result.spearman is None else f"{result.spearman:.3f}"
    caught = "n/a (no bad masks)" if choice.caught is None else f"{choice.caught:.1%}"
    console.print(
        f"{result.count} pairs, {result.bad_share:.1%} with IoU < {result.bad_iou}; Spearman {rho}\n"
        f"threshold {choice.threshold:.4f}: routes {choice.routed:.1%} of images, catches {caught} of bad\n"
        f"rule: {choice.rule}\nreport: {result.report}"
    )
    if uri is not None:
        name, version = _on_model_version(set_routing_threshold, uri, choice.threshold)
        console.print(f"stored routing_threshold {choice.threshold:.4f} on {name} version {version}")
    print(f"{choice.threshold:.6f}")


def _on_model_version(step: Callable[..., T], uri: str, *args) -> T:
    """`step(uri, *args)`; a missing or unregistered model version is a clear error and exit status 2."""
    from mlflow.exceptions import MlflowException

    try:
        return step(uri, *args)
    except (ValueError, MlflowException) as error:
        raise fail(f"cannot store the threshold on {uri}: {error}") from None
