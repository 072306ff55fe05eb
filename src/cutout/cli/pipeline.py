"""`cutout pipeline …`: compile the training pipeline, run it here, submit it to KFP, or schedule it there.

`cutout pipeline submit --host $KFP_HOST --package FILE --param data_uri=s3://… …` is what the GitOps CronJob
runs inside the pipeline image: keep its flags stable.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from cutout.cli.common import T, app, console, fail
from cutout.platform.names import EXPERIMENT

pipeline_app = typer.Typer(
    help="The Kubeflow training pipeline: compile, run locally (kfp.local), submit, schedule.",
    no_args_is_help=True,
)
app.add_typer(pipeline_app, name="pipeline")

PARAM_HELP = (
    "A pipeline parameter NAME=VALUE (repeatable); dicts and lists as JSON, e.g. "
    'gpu_node_selector=\'{"karpenter.sh/capacity-type":"on-demand"}\'. `cutout pipeline params` lists them.'
)
Params = Annotated[list[str] | None, typer.Option("--param", "-p", help=PARAM_HELP)]
Host = Annotated[
    str, typer.Option(help="KFP API URL, e.g. http://ml-pipeline.kubeflow:8888.", envvar="KFP_HOST")
]
Package = Annotated[
    Path | None,
    typer.Option(help="Compiled pipeline YAML (`cutout pipeline compile`); default: compile now."),
]
Experiment = Annotated[str, typer.Option(help="KFP experiment (created if missing).")]
Namespace = Annotated[str | None, typer.Option(help="Profile namespace of a multi-user KFP.")]
Token = Annotated[
    str | None,
    typer.Option(help="Bearer token for an authenticated KFP.", envvar="KFP_TOKEN", show_default=False),
]
PipelineRoot = Annotated[str | None, typer.Option(help="Where KFP keeps artifacts (default: the server's).")]


@pipeline_app.command("compile")
def pipeline_compile(
    out: Annotated[Path, typer.Option("-o", "--out", help="The YAML file to write.")],
) -> None:
    """Compile the pipeline to YAML (steps' image: $CUTOUT_PIPELINE_IMAGE, else cutout-pipeline:VERSION)."""
    from cutout.platform.pipelines import compile_pipeline

    console.print(f"compiled the training pipeline to {compile_pipeline(training_pipeline(), out)}")


@pipeline_app.command("params")
def pipeline_params() -> None:
    """List the pipeline's parameters, their types and defaults."""
    from cutout.platform.pipelines import pipeline_parameters

    for name, spec in pipeline_parameters(training_pipeline()).items():
        default = "(required)" if spec["default"] is None else repr(spec["default"])
        print(f"{name:20} {spec['type'].lower():15} {default}")


@pipeline_app.command("run")
def pipeline_run(
    param: Params = None,
    local: Annotated[
        bool, typer.Option(help="Also train (horovodrun) and skip deploying here, instead of on the cluster.")
    ] = False,
    pipeline_root: Annotated[
        Path, typer.Option(help="Where kfp.local keeps step artifacts and logs.")
    ] = Path(".cutout/kfp"),
) -> None:
    """Run the pipeline end to end on this machine with kfp.local (each step a subprocess of this Python)."""
    from cutout.platform.pipelines import parse_params, pipeline_parameters, run_local

    pipeline = training_pipeline()
    arguments = parse_params(param or [], pipeline_parameters(pipeline))
    if local:
        arguments["local"] = True
    try:
        run_local(pipeline, arguments, pipeline_root.absolute())
    except RuntimeError as error:
        console.print(f"[red]pipeline failed:[/red] {error}", soft_wrap=True, highlight=False)
        raise typer.Exit(code=1) from None
    console.print(f"pipeline finished; step outputs and logs under {pipeline_root}")


@pipeline_app.command("submit")
def pipeline_submit(
    host: Host,
    param: Params = None,
    package: Package = None,
    experiment: Experiment = EXPERIMENT,
    run_name: Annotated[
        str | None, typer.Option(help="The run's name (default: package name and time).")
    ] = None,
    namespace: Namespace = None,
    token: Token = None,
    pipeline_root: PipelineRoot = None,
) -> None:
    """Start one run on a KFP server; prints the run id (what the GitOps CronJob runs)."""
    from cutout.platform.pipelines import connect, submit

    pipeline = training_pipeline()
    arguments = _arguments(pipeline, param)
    run_id = _on_kfp(lambda: submit(connect(host, namespace, token), arguments, package or pipeline,
                                    experiment, run_name, pipeline_root))  # fmt: skip
    print(run_id)
    console.print(f"submitted run {run_id} to {host} (experiment {experiment})")


@pipeline_app.command("schedule")
def pipeline_schedule(
    cron: Annotated[
        str, typer.Option(help="Six fields, seconds first: '0 0 3 * * *' is 03:00 every day (KFP's cron).")
    ],
    host: Host,
    param: Params = None,
    package: Package = None,
    experiment: Experiment = EXPERIMENT,
    name: Annotated[str, typer.Option(help="The recurring run's name.")] = "cutout-retraining",
    max_concurrency: Annotated[int, typer.Option(min=1, help="Runs that may overlap.")] = 1,
    catchup: Annotated[bool, typer.Option(help="Start runs missed while paused.")] = False,
    namespace: Namespace = None,
    token: Token = None,
    pipeline_root: PipelineRoot = None,
) -> None:
    """Create a KFP recurring run on a cron schedule (checked before anything is sent); prints its id."""
    from cutout.platform.cron import validate_cron
    from cutout.platform.pipelines import connect, schedule

    validate_cron(cron)
    pipeline = training_pipeline()
    arguments = _arguments(pipeline, param)
    client = lambda: connect(host, namespace, token)  # noqa: E731
    recurring_id = _on_kfp(lambda: schedule(client(), cron, arguments, package or pipeline, experiment, name,
                                            max_concurrency, catchup, pipeline_root))  # fmt: skip
    print(recurring_id)
    console.print(f"recurring run {name} ({recurring_id}) on {host}: '{cron}'")


def training_pipeline():
    """The KFP pipeline these commands compile, run and send (`pipelines/training.py`)."""
    from pipelines.training import cutout_training_pipeline

    return cutout_training_pipeline


def _arguments(pipeline, param: list[str] | None) -> dict:
    """The typed arguments `--param` gives, every required one among them."""
    from cutout.platform.pipelines import check_required, parse_params, pipeline_parameters

    parameters = pipeline_parameters(pipeline)
    arguments = parse_params(param or [], parameters)
    check_required(arguments, parameters)
    return arguments


def _on_kfp(step: Callable[[], T]) -> T:
    """Run `step()` against the KFP server; its refusal or absence is a clear error and exit status 1."""
    import urllib3.exceptions
    from kfp_server_api.exceptions import ApiException

    try:
        return step()
    except FileNotFoundError as error:
        raise fail(str(error)) from None
    except ApiException as error:
        console.print(f"[red]error:[/red] KFP refused: {error.status} {error.reason}: {error.body}",
                      soft_wrap=True, highlight=False)  # fmt: skip
    except urllib3.exceptions.HTTPError as error:
        console.print(f"[red]error:[/red] cannot reach KFP: {error}", soft_wrap=True, highlight=False)
    raise typer.Exit(code=1)
