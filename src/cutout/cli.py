"""The `cutout` command: parses arguments, calls one library function, prints the outcome."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from cutout import __version__

app = typer.Typer(help="Background removal for e-commerce fashion photos.", no_args_is_help=True)
export_app = typer.Typer(help="Export a model for other runtimes.", no_args_is_help=True)
app.add_typer(export_app, name="export")
data_app = typer.Typer(help="Data steps: synthesise, clean, cluster, augment. Local paths or s3:// URIs.",
                       no_args_is_help=True)  # fmt: skip
app.add_typer(data_app, name="data")
console = Console(stderr=True)
T = TypeVar("T")


def _with_progress(label: str, step: Callable[..., T], total: int | None = None) -> T:
    """Run `step(on_progress=...)` under a progress bar; a bad input is a clear error and exit status 2."""
    try:
        with _progress(label, total) as advance:
            return step(on_progress=advance)
    except (ValueError, FileNotFoundError) as error:
        raise _fail(str(error)) from None


@contextmanager
def _progress(label: str, total: int | None) -> Iterator[Callable[[], None]]:
    """A progress bar on stderr; yields the function that advances it by one."""
    columns = (TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(label, total=total)
        yield lambda: progress.advance(task)


def _version(value: bool) -> None:
    if value:
        print(f"cutout {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """cutout: prepare data, train U²-Net, evaluate, serve and review cutouts."""


def _fail(message: str) -> typer.Exit:
    console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code=2)


@app.command()
def remove(
    inputs: Annotated[
        list[str], typer.Argument(help="Photos: files, folders (recursive), globs or s3:// prefixes.")
    ],
    out: Annotated[str, typer.Option("--out", "-o", help="Output folder or s3:// prefix.")],
    model: Annotated[str, typer.Option(help="Model: a checkpoint or official .pth, or an .onnx file.")],
    mask_only: Annotated[
        bool, typer.Option(help="Write the mask (8-bit PNG) instead of the cutout.")
    ] = False,
    bg_color: Annotated[
        str | None, typer.Option(help="Flatten onto this colour: white, #RRGGBB, ...")
    ] = None,
    crop: Annotated[bool, typer.Option(help="Crop to the product, with a margin.")] = False,
    output_format: Annotated[
        str, typer.Option("--format", help="png, webp, or jpg (needs --bg-color).")
    ] = "png",
    batch_size: Annotated[int, typer.Option(min=1, help="Photos per forward pass.")] = 4,
    png_compression: Annotated[int, typer.Option(min=0, max=9, help="PNG level: 1 fast, 9 smallest.")] = 1,
    threads: Annotated[int | None, typer.Option(help="CPU threads (default: all cores).")] = None,
) -> None:
    """Cut the products out of photos: RGBA PNG at the original resolution by default."""
    from cutout.compose import parse_color
    from cutout.model.loader import load_predictor
    from cutout.remove import RemoveOptions, collect_inputs, remove_backgrounds

    try:
        colour = parse_color(bg_color) if bg_color else None
        options = RemoveOptions(mask_only, colour, crop, output_format, batch_size, png_compression)
        predictor = load_predictor(model, threads=threads)
    except (ValueError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    photos, missing = collect_inputs(inputs)
    with _progress("cutting out", len(photos)) as advance:
        summary = remove_backgrounds(photos, out, predictor, options, on_done=lambda _: advance())
    failures = missing + summary.failures
    _print_failures(failures)
    console.print(
        f"{len(summary.written)} written to {out}, {len(failures)} failed ({predictor.description})"
    )
    if failures:
        raise typer.Exit(code=1)


def _print_failures(failures: list) -> None:
    # One line per input, whole paths kept (a table would cut them to the terminal's width).
    for failure in failures:
        console.print(f"[red]not processed[/red] {failure.source}: {failure.message} ({failure.reason})",
                      soft_wrap=True, highlight=False)  # fmt: skip


@export_app.command("onnx")
def export_onnx(
    model: Annotated[str, typer.Option(help="Checkpoint or official .pth to export.")],
    out: Annotated[str, typer.Option("--out", "-o", help="The .onnx file to write.")],
    int8: Annotated[bool, typer.Option(help="Quantise to int8 (static, calibrated).")] = False,
    calibration: Annotated[str | None, typer.Option(help="Folder of photos to calibrate int8 with.")] = None,
) -> None:
    """Export to ONNX: input `input` (N×3×H×W), first output the fused probability map."""
    from cutout.model.export import export_model

    if int8 and not calibration:
        raise _fail("--int8 needs --calibration DIR: a folder of photos like the ones the model will see")
    try:
        export_model(model, out, calibration_dir=calibration if int8 else None)
    except (ValueError, FileNotFoundError) as error:
        raise _fail(str(error)) from None
    console.print(f"wrote {out}")


@data_app.command("synth")
def data_synth(
    out: Annotated[str, typer.Argument(help="Dataset folder or s3:// prefix to write.")],
    count: Annotated[int, typer.Option(min=0, help="Number of photo/mask pairs.")] = 600,
    size: Annotated[tuple[int, int], typer.Option(help="Width and height in pixels.")] = (320, 320),
    seed: Annotated[int, typer.Option(help="Same seed, same dataset.")] = 0,
) -> None:
    """Synthesise studio product photos with exact masks, six product types (the embedded default)."""
    from cutout.data.synth import synthesize_dataset

    summary = _with_progress("synthesising", partial(synthesize_dataset, out, count, size, seed), count)
    per_type = ", ".join(f"{name} {n}" for name, n in summary.per_type.items())
    console.print(f"wrote {summary.count} pairs to {out}: {per_type}")


@data_app.command("clean")
def data_clean(
    src: Annotated[
        str, typer.Argument(help="Raw pairs: images/<id>.<ext> and masks/<id>.<ext> (folder or s3://).")
    ],
    dst: Annotated[str, typer.Argument(help="Where to write the cleaned dataset.")],
    size: Annotated[int, typer.Option(min=32, help="Square size photos and masks are resized to.")] = 320,
) -> None:
    """Pair, validate, de-duplicate, normalise and resize; every input kept or rejected with a reason."""
    from cutout.data.clean import clean_dataset

    summary = _with_progress("cleaning", partial(clean_dataset, src, dst, size))
    reasons = ", ".join(f"{reason} {n}" for reason, n in sorted(summary.per_reason.items())) or "none"
    console.print(f"kept {summary.kept}, rejected {summary.rejected} ({reasons}); see {dst}/rejects.jsonl")


@data_app.command("cluster")
def data_cluster(
    src: Annotated[str, typer.Argument(help="Cleaned dataset (folder or s3://).")],
    dst: Annotated[str, typer.Argument(help="Where to write the clustered dataset.")],
    k: Annotated[int, typer.Option(min=2, help="Number of clusters (the light-coloured one included).")] = 6,
    overrides: Annotated[
        str | None, typer.Option(help="JSON or CSV of id → product type, applied last.")
    ] = None,
    val_fraction: Annotated[
        float, typer.Option(min=0.0, max=0.5, help="Share of each cluster for validation.")
    ] = 0.1,
    seed: Annotated[int, typer.Option(help="Same seed, same clusters.")] = 0,
) -> None:
    """Group pairs into the six product types (k-means, then overrides), split train/val, contact sheet."""
    from cutout.data.cluster import cluster_dataset

    summary = _with_progress(
        "clustering", partial(cluster_dataset, src, dst, k, overrides, val_fraction, seed)
    )
    sizes = ", ".join(f"{name} {n}" for name, n in summary.sizes.items())
    console.print(f"{summary.kept} pairs clustered ({summary.rejected} rejected): {sizes}")
    if summary.purity is not None:
        console.print(f"against the true types: purity {summary.purity:.3f}, "
                      f"adjusted Rand index {summary.adjusted_rand_index:.3f}")  # fmt: skip
    console.print(f"contact sheet: {dst}/report/index.html")


@data_app.command("augment")
def data_augment(
    src: Annotated[str, typer.Argument(help="Clustered dataset (folder or s3://).")],
    dst: Annotated[str, typer.Argument(help="Where to write the augmented dataset.")],
    copies: Annotated[int, typer.Option(min=0, help="Variants per training pair (before balancing).")] = 2,
    backgrounds: Annotated[
        str | None, typer.Option(help="Folder of background photos to composite onto.")
    ] = None,
    balance: Annotated[
        bool, typer.Option(help="Oversample small clusters to the largest one's size.")
    ] = True,
    seed: Annotated[int, typer.Option(help="Same seed, same output.")] = 0,
) -> None:
    """Crops that keep the product, new backgrounds, several products in a frame, flips; balanced clusters."""
    from cutout.data.augment import augment_dataset

    summary = _with_progress(
        "augmenting", partial(augment_dataset, src, dst, copies, backgrounds, balance, seed)
    )
    per_cluster = ", ".join(f"{name} {n}" for name, n in summary.train_after.items())
    console.print(f"wrote {summary.written} pairs to {dst} ({summary.rejected} rejected); training pairs per "
                  f"cluster: {per_cluster}")  # fmt: skip


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True}, add_help_option=False
)
def train(context: typer.Context) -> None:
    """Train U²-Net: alone, or `--workers N` local Horovod workers (see `cutout train --help`)."""
    from cutout.train.train import cli as train_cli

    raise typer.Exit(code=train_cli(context.args))


@app.command()
def evaluate(
    model: Annotated[str, typer.Option(help="Checkpoint, .onnx, or models:/NAME@ALIAS.")],
    data: Annotated[str, typer.Option(help="Dataset folder or s3:// prefix.")],
    out: Annotated[str, typer.Option(help="Report folder or s3:// prefix.")],
    split: Annotated[
        str | None, typer.Option(help="Which split; all pairs if the manifest has none.")
    ] = "val",
    run_id: Annotated[str | None, typer.Option(help="Also log the report to this MLflow run.")] = None,
) -> None:
    """IoU (overall, per cluster), MAE, max F-beta, boundary IoU; metrics.json and an HTML report."""
    from cutout.evaluate.evaluation import evaluate_model

    result = _with_progress("evaluating", partial(evaluate_model, model, data, out, split))
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
    run_id: Annotated[str, typer.Option(help="The training run that logged the model.")],
    metrics: Annotated[str, typer.Option(help="metrics.json from `cutout evaluate`.")],
    name: Annotated[str, typer.Option(help="Registered model name.")] = "cutout",
    holdout: Annotated[
        str | None, typer.Option(help="The evaluation dataset (its manifest hash is kept).")
    ] = None,
) -> None:
    """Register the run's model as a new version, with its evaluation metrics."""
    import json

    from cutout.platform import storage
    from cutout.platform.registry import register_model
    from cutout.platform.tracking import manifest_hash

    scores = {k: v for k, v in json.loads(storage.read_text(metrics)).items() if isinstance(v, int | float)}
    version = register_model(run_id, name, scores, manifest_hash(holdout) if holdout else None)
    print(version)
    console.print(f"registered {name} version {version}")


@app.command()
def promote(
    version: Annotated[str, typer.Option(help="The candidate version.")],
    name: Annotated[str, typer.Option(help="Registered model name.")] = "cutout",
    metric: Annotated[str, typer.Option(help="The metric the gate compares.")] = "mean_iou",
    margin: Annotated[float, typer.Option(help="How much better than the champion it must be.")] = 0.0,
) -> None:
    """Make a version the champion if it scores at least the current champion's (+ margin)."""
    from cutout.platform.registry import promote as promote_version

    decision = promote_version(name, version, metric=metric, margin=margin)
    verdict = "[green]promoted[/green]" if decision.promoted else "[yellow]not promoted[/yellow]"
    console.print(f"{name} version {version}: {verdict}: {decision.reason}")


if __name__ == "__main__":
    app()
