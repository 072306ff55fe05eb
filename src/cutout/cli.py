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
platform_app = typer.Typer(help="Kubernetes: the training MPIJob and the InferenceService (or their YAML).",
                           no_args_is_help=True)  # fmt: skip
app.add_typer(platform_app, name="platform")
serve_app = typer.Typer(help="Serve models with KServe (on 127.0.0.1 unless --host says otherwise).",
                        no_args_is_help=True)  # fmt: skip
app.add_typer(serve_app, name="serve")
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


@app.command("calibrate-threshold")
def calibrate_threshold(
    model: Annotated[
        str, typer.Option(help="Checkpoint, .onnx, models:/NAME@ALIAS or models:/NAME/VERSION.")
    ],
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

    target = register or (model if model.startswith("models:/") else None)
    uri = None if target is None else target if target.startswith("models:/") else f"models:/{target}"
    if uri is not None:
        _on_model_version(routing_threshold, uri)  # a missing version fails now, not after calibrating
    result = _with_progress("calibrating", partial(calibrate, model, data, split, out))
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
        raise _fail(f"cannot store the threshold on {uri}: {error}") from None


# KServe's argument parser takes the options (--model_name, --http_port, ...), so typer passes them through.
_KSERVE_OPTIONS = {"allow_extra_args": True, "ignore_unknown_options": True}


@serve_app.command("predictor", context_settings=_KSERVE_OPTIONS, add_help_option=False)
def serve_predictor(context: typer.Context) -> None:
    """The KServe predictor: --model-uri, --runtime torch|onnx, --http_port, ... (see --help)."""
    from cutout.serve.predictor import main as predictor_main

    predictor_main(context.args)


@serve_app.command("transformer", context_settings=_KSERVE_OPTIONS, add_help_option=False)
def serve_transformer(context: typer.Context) -> None:
    """The feedback transformer: --predictor_host, --feedback-uri, --threshold, ... (see --help)."""
    from cutout.serve.transformer import main as transformer_main

    transformer_main(context.args)


@serve_app.command("local")
def serve_local(
    model_uri: Annotated[
        str, typer.Option(help="models:/NAME@ALIAS, a checkpoint, or an .onnx file.")
    ] = "models:/cutout@champion",
    feedback_uri: Annotated[
        str, typer.Option(help="Retraining store and review queue (folder or s3://).")
    ] = ".cutout/feedback",
    port: Annotated[
        int, typer.Option(min=1, max=65535, help="The transformer's port (clients call it).")
    ] = 8080,
    predictor_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="The predictor's port (default: --port + 1).")
    ] = None,
    threshold: Annotated[
        float | None, typer.Option(min=0.0, max=1.0, help="Routing threshold (default: the model's, or 0.5).")
    ] = None,
    runtime: Annotated[str | None, typer.Option(help="torch or onnx (default: the model file's).")] = None,
) -> None:
    """Predictor and feedback transformer on 127.0.0.1, the local stand-in for the InferenceService."""
    from cutout.serve.local import serve_local as run_local

    try:
        status = run_local(model_uri=model_uri, feedback_uri=feedback_uri, port=port,
                           predictor_port=predictor_port, threshold=threshold, runtime=runtime)  # fmt: skip
    except (RuntimeError, ValueError) as error:
        raise _fail(str(error)) from None
    raise typer.Exit(code=status)


@platform_app.command("mpijob")
def platform_mpijob(
    data: Annotated[str, typer.Option(help="Prepared dataset (s3://) the workers read.")],
    checkpoint_dir: Annotated[str, typer.Option(help="s3:// folder for checkpoints, one per run.")],
    run_info: Annotated[str, typer.Option(help="s3:// JSON the run id and model URI are written to.")],
    model: Annotated[str, typer.Option(help="u2net or u2netp.")] = "u2net",
    epochs: Annotated[int, typer.Option(min=1)] = 30,
    batch_size: Annotated[int, typer.Option(min=1, help="Per GPU.")] = 10,
    train_arg: Annotated[
        list[str] | None, typer.Option(help="Another `cutout train` flag, as is (repeatable).")
    ] = None,
    name: Annotated[str, typer.Option(help="The MPIJob's name.")] = "cutout-train",
    namespace: Annotated[str, typer.Option()] = "cutout",
    image: Annotated[str | None, typer.Option(help="Training image (default: cutout-train:VERSION).")] = None,
    workers: Annotated[int, typer.Option(min=1, help="Worker pods.")] = 2,
    gpus_per_worker: Annotated[int, typer.Option(min=0, help="GPUs (= MPI slots) per worker.")] = 1,
    node_pool: Annotated[str, typer.Option(help="Node label preset: gke, eks or karpenter.")] = "eks",
    node_selector: Annotated[
        list[str] | None, typer.Option(help="key=value, instead of the preset's (repeatable).")
    ] = None,
    toleration: Annotated[
        list[str] | None, typer.Option(help="key[=value]:Effect, instead of the preset's (repeatable).")
    ] = None,
    mlflow_secret: Annotated[str, typer.Option(help="Secret with the MLflow settings.")] = "cutout-mlflow",
    s3_secret: Annotated[str, typer.Option(help="Secret with the S3 credentials.")] = "cutout-s3",
    backoff_limit: Annotated[int, typer.Option(min=0, help="Launcher retries (each resumes).")] = 2,
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait for the job.")] = 86_400,
    dry_run: Annotated[bool, typer.Option(help="Print the MPIJob as YAML instead of running it.")] = False,
) -> None:
    """Train on the cluster as a Training Operator MPIJob, or print it (--dry-run) for review or GitOps."""
    from cutout.platform import mpijob
    from cutout.platform.pods import Secrets

    try:
        extra = tuple(train_arg or ())
        args = mpijob.TrainingArgs(data, checkpoint_dir, run_info, model, epochs, batch_size, extra)
        config = mpijob.MPIJobConfig(
            name=name, namespace=namespace, image=image or mpijob.DEFAULT_IMAGE, workers=workers,
            gpus_per_worker=gpus_per_worker, node_pool=_node_pool(node_pool, node_selector, toleration),
            secrets=Secrets(mlflow_secret or None, s3_secret or None), backoff_limit=backoff_limit,
        )  # fmt: skip
        job = mpijob.build_mpijob(args, config)
    except ValueError as error:
        raise _fail(str(error)) from None
    if dry_run:
        _print_yaml(job)
        return
    from cutout.platform.launcher import run_mpijob

    result = _on_cluster(lambda kube: run_mpijob(kube, job, timeout_s=timeout))
    console.print(f"MPIJob {namespace}/{result.name} succeeded")


def _node_pool(preset: str, node_selector: list[str] | None, tolerations: list[str] | None):
    from cutout.platform.mpijob import NODE_POOLS, NodePool, parse_toleration
    from cutout.platform.pods import parse_key_values

    if preset not in NODE_POOLS:
        raise ValueError(f"node pool preset {preset!r} is not one of {', '.join(NODE_POOLS)}")
    pool = NODE_POOLS[preset]
    return NodePool(
        parse_key_values(node_selector, "node selector") if node_selector else pool.node_selector,
        tuple(parse_toleration(text) for text in tolerations) if tolerations else pool.tolerations,
    )


@platform_app.command("isvc")
def platform_isvc(
    model_uri: Annotated[
        str, typer.Option(help="What the predictor loads: a version (models:/cutout/7) rolls out a new one.")
    ] = "models:/cutout@champion",
    feedback_uri: Annotated[str, typer.Option(help="Retraining store and review queue (s3://).")] = (
        "s3://cutout/feedback"
    ),
    threshold: Annotated[
        float | None, typer.Option(min=0, max=1, help="Routing threshold (default: the model's own).")
    ] = None,
    name: Annotated[str, typer.Option(help="Service name = model name.")] = "cutout",
    namespace: Annotated[str, typer.Option(help="Empty: none (an overlay sets it).")] = "cutout",
    image: Annotated[str | None, typer.Option(help="Serving image (default: cutout-serve:VERSION).")] = None,
    min_replicas: Annotated[int, typer.Option(min=1)] = 1,
    max_replicas: Annotated[int, typer.Option(min=1)] = 3,
    canary_percent: Annotated[
        int | None, typer.Option(min=0, max=100, help="Traffic share for the new revision.")
    ] = None,
    predictor_cpu: Annotated[str, typer.Option(help="REQUEST[:LIMIT]")] = "1:2",
    predictor_memory: Annotated[str, typer.Option(help="REQUEST[:LIMIT]")] = "2Gi:4Gi",
    predictor_gpus: Annotated[int, typer.Option(min=0)] = 0,
    transformer_cpu: Annotated[str, typer.Option(help="REQUEST[:LIMIT]")] = "500m:1",
    transformer_memory: Annotated[str, typer.Option(help="REQUEST[:LIMIT]")] = "1Gi:2Gi",
    mlflow_secret: Annotated[str, typer.Option(help="Secret with the MLflow settings.")] = "cutout-mlflow",
    s3_secret: Annotated[str, typer.Option(help="Secret with the S3 credentials.")] = "cutout-s3",
    timeout: Annotated[float, typer.Option(min=1, help="Seconds to wait until ready.")] = 900,
    dry_run: Annotated[bool, typer.Option(help="Print it as YAML instead of deploying it.")] = False,
) -> None:
    """Deploy (create or patch, wait until ready) the InferenceService, or print it (--dry-run)."""
    from cutout.platform import inference_service as isvc
    from cutout.platform.pods import Secrets

    try:
        predictor = _resources(predictor_cpu, predictor_memory, predictor_gpus)
        transformer = _resources(transformer_cpu, transformer_memory, gpus=0)
        config = isvc.InferenceServiceConfig(
            name=name, namespace=namespace or None, image=image or isvc.DEFAULT_IMAGE, model_uri=model_uri,
            feedback_uri=feedback_uri, threshold=threshold, min_replicas=min_replicas,
            max_replicas=max_replicas, canary_traffic_percent=canary_percent, predictor_resources=predictor,
            transformer_resources=transformer, secrets=Secrets(mlflow_secret or None, s3_secret or None),
        )  # fmt: skip
        service = isvc.build_inference_service(config)
    except ValueError as error:
        raise _fail(str(error)) from None
    if dry_run:
        _print_yaml(service)
        return
    from cutout.platform.launcher import deploy_inference_service

    done = _on_cluster(lambda kube: deploy_inference_service(kube, service, timeout_s=timeout))
    console.print(f"InferenceService {done.namespace}/{done.name} {done.action} and ready: {done.url}")


def _resources(cpu: str, memory: str, gpus: int):
    """Resources from `REQUEST[:LIMIT]` strings (no limit: the same as the request)."""
    from cutout.platform.inference_service import Resources

    cpu_request, _, cpu_limit = cpu.partition(":")
    memory_request, _, memory_limit = memory.partition(":")
    limits = (cpu_limit or cpu_request, memory_limit or memory_request)
    return Resources(cpu_request, memory_request, *limits, gpus=gpus)


@platform_app.command("check")
def platform_check(
    files: Annotated[list[str], typer.Argument(help="YAML files with MPIJobs and InferenceServices.")],
) -> None:
    """Check MPIJob and InferenceService YAML strictly against the SDK models (a misspelled field fails)."""
    import yaml

    from cutout.platform.sdk_models import UnknownFieldError, parse_resource

    for path in files:
        try:
            with open(path, encoding="utf-8") as stream:
                documents = [doc for doc in yaml.safe_load_all(stream) if doc is not None]
            for document in documents:
                parse_resource(document)
        except (OSError, yaml.YAMLError, UnknownFieldError) as error:
            raise _fail(f"{path}: {error}") from None
        console.print(f"{path}: {len(documents)} valid")


def _print_yaml(model) -> None:
    import yaml

    from cutout.platform.sdk_models import to_dict

    print(yaml.safe_dump(to_dict(model), sort_keys=False), end="")


def _on_cluster(step: Callable[..., T]) -> T:
    """Run `step(kube)` on the configured cluster; its failure is a clear error and exit status 1."""
    from kubernetes.client.rest import ApiException
    from kubernetes.config import ConfigException

    from cutout.platform.kube import connect, error_message
    from cutout.platform.launcher import StepFailed

    try:
        return step(connect())
    except ConfigException as error:
        raise _fail(f"no cluster configured: {error}") from None
    except (StepFailed, ApiException) as error:
        console.print(f"[red]error:[/red] {error_message(error)}", soft_wrap=True, highlight=False)
        raise typer.Exit(code=1) from None


if __name__ == "__main__":
    app()
