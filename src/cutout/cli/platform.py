"""`cutout platform …`: the training MPIJob and the InferenceService on Kubernetes, or their YAML."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

import typer

from cutout.cli.common import T, app, console, fail
from cutout.platform.names import CHAMPION_URI, MODEL_NAME, NAMESPACE
from cutout.train.config import DEFAULTS as TRAIN_DEFAULTS
from cutout.train.config import on_cluster_ranks

platform_app = typer.Typer(help="Kubernetes: the training MPIJob and the InferenceService (or their YAML).",
                           no_args_is_help=True)  # fmt: skip
app.add_typer(platform_app, name="platform")


@platform_app.command("mpijob")
def platform_mpijob(
    data: Annotated[str, typer.Option(help="Prepared dataset (s3://) the workers read.")],
    checkpoint_dir: Annotated[str, typer.Option(help="s3:// folder for checkpoints, one per run.")],
    run_info: Annotated[str, typer.Option(help="s3:// JSON the run id and model URI are written to.")],
    model: Annotated[str, typer.Option(help="u2net or u2netp.")] = TRAIN_DEFAULTS.model,
    epochs: Annotated[int, typer.Option(min=1)] = TRAIN_DEFAULTS.epochs,
    batch_size: Annotated[int, typer.Option(min=1, help="Per GPU.")] = TRAIN_DEFAULTS.batch_size,
    train_arg: Annotated[
        list[str] | None, typer.Option(help="Another `cutout train` flag, as is (repeatable).")
    ] = None,
    name: Annotated[str, typer.Option(help="The MPIJob's name.")] = "cutout-train",
    namespace: Annotated[str, typer.Option()] = NAMESPACE,
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

    training = TRAIN_DEFAULTS.replace(
        data=data, checkpoint_dir=checkpoint_dir, run_info=run_info, model=model, epochs=epochs,
        batch_size=batch_size,
    )  # fmt: skip
    argv = on_cluster_ranks(training, gpus=gpus_per_worker > 0).to_argv() + list(train_arg or ())
    args = mpijob.TrainingArgs(tuple(argv))
    config = mpijob.MPIJobConfig(
        name=name, namespace=namespace, image=image or mpijob.DEFAULT_IMAGE, workers=workers,
        gpus_per_worker=gpus_per_worker, node_pool=_node_pool(node_pool, node_selector, toleration),
        secrets=Secrets(mlflow_secret or None, s3_secret or None), backoff_limit=backoff_limit,
    )  # fmt: skip
    job = mpijob.build_mpijob(args, config)
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
    ] = CHAMPION_URI,
    feedback_uri: Annotated[str, typer.Option(help="Retraining store and review queue (s3://).")] = (
        "s3://cutout/feedback"
    ),
    threshold: Annotated[
        float | None, typer.Option(min=0, max=1, help="Routing threshold (default: the model's own).")
    ] = None,
    name: Annotated[str, typer.Option(help="Service name = model name.")] = MODEL_NAME,
    namespace: Annotated[str, typer.Option(help="Empty: none (an overlay sets it).")] = NAMESPACE,
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

    predictor = _resources(predictor_cpu, predictor_memory, predictor_gpus)
    transformer = _resources(transformer_cpu, transformer_memory, gpus=0)
    config = isvc.InferenceServiceConfig(
        name=name, namespace=namespace or None, image=image or isvc.DEFAULT_IMAGE, model_uri=model_uri,
        feedback_uri=feedback_uri, threshold=threshold, min_replicas=min_replicas,
        max_replicas=max_replicas, canary_traffic_percent=canary_percent, predictor_resources=predictor,
        transformer_resources=transformer, secrets=Secrets(mlflow_secret or None, s3_secret or None),
    )  # fmt: skip
    service = isvc.build_inference_service(config)
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
            raise fail(f"{path}: {error}") from None
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
        raise fail(f"no cluster configured: {error}") from None
    except (StepFailed, ApiException) as error:
        console.print(f"[red]error:[/red] {error_message(error)}", soft_wrap=True, highlight=False)
        raise typer.Exit(code=1) from None
