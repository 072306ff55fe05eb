"""Compile the training pipeline, run it here with `kfp.local`, submit it to KFP, or schedule it there.

The pipeline itself (`pipelines/training.py`, its components in `components/`: shells above this floor)
is handed in by the caller, the `cutout pipeline` command: these functions compile, describe, run and
send whatever KFP pipeline they are given.

KFP is reached through `kfp.Client` only, made by `connect` (the seam the tests point at a fake KFP API on
127.0.0.1). Recurring runs get their cron expression checked first (`cutout.platform.cron`).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any

from cutout.platform.cron import validate_cron
from cutout.platform.names import EXPERIMENT

Pipeline = Any  # a function decorated with `kfp.dsl.pipeline`
# KFP's parameter types, as compiled, and how a command-line value becomes one.
_PARSERS: dict[str, Callable[[str], Any]] = {
    "STRING": str,
    "NUMBER_INTEGER": int,
    "NUMBER_DOUBLE": float,
    "BOOLEAN": lambda text: _boolean(text),
    "STRUCT": lambda text: _json(text, dict),
    "LIST": lambda text: _json(text, list),
}


def compile_pipeline(pipeline: Pipeline, out: str | Path) -> Path:
    """Compile the pipeline to a YAML package at `out`; returns its path."""
    from kfp import compiler

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(pipeline, str(out))
    return out


def pipeline_parameters(pipeline: Pipeline) -> dict[str, dict]:
    """The pipeline's parameters: name → `{"type": KFP type, "default": value or None (required)}`."""
    from google.protobuf.json_format import MessageToDict
    from kfp.pipeline_spec.pipeline_spec_pb2 import ParameterType

    spec = pipeline.pipeline_spec.root.input_definitions.parameters
    parameters = {}
    for name in inspect.signature(pipeline.pipeline_func).parameters:  # in the order the pipeline lists them
        parameter = spec[name]
        default = MessageToDict(parameter.default_value) if parameter.HasField("default_value") else None
        if parameter.parameter_type == ParameterType.NUMBER_INTEGER and default is not None:
            default = int(default)  # protobuf keeps every number as a double
        parameters[name] = {"type": ParameterType.ParameterTypeEnum.Name(parameter.parameter_type),
                            "default": default, "optional": parameter.is_optional}  # fmt: skip
    return parameters


def parse_params(pairs: Iterable[str], parameters: Mapping[str, dict]) -> dict[str, Any]:
    """`name=value` strings as typed arguments of a pipeline with `parameters` (dicts and lists as JSON).

    Raises:
        ValueError: Not `name=value`, an unknown name (the message lists the known ones), or a value that is
            not of the parameter's type.
    """
    arguments = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or not name:
            raise ValueError(f"parameter {pair!r} is not name=value")
        if name not in parameters:
            raise ValueError(
                f"the pipeline has no parameter {name!r}; it has: {', '.join(sorted(parameters))}"
            )
        kind = parameters[name]["type"]
        try:
            arguments[name] = _PARSERS[kind](text)
        except ValueError as error:
            raise ValueError(f"parameter {name}: {text!r} is not a {kind.lower()}: {error}") from None
    return arguments


def check_required(arguments: Mapping[str, Any], parameters: Mapping[str, dict]) -> None:
    """Raise ValueError naming the required parameters (no default) that `arguments` lacks."""
    missing = [name for name, p in parameters.items() if p["default"] is None and not p["optional"]]
    missing = [name for name in missing if name not in arguments]
    if missing:
        raise ValueError(f"missing pipeline parameter(s): {', '.join(missing)} (give --param NAME=VALUE)")


def _boolean(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise ValueError("use true or false")


def _json(text: str, kind: type) -> Any:
    value = json.loads(text)
    if not isinstance(value, kind):
        raise ValueError(f"JSON {kind.__name__} expected")
    return value


# --- running here -----------------------------------------------------------------------------------


def run_local(pipeline: Pipeline, arguments: Mapping[str, Any], pipeline_root: str | Path) -> None:
    """Run the whole pipeline in this machine's Python (`kfp.local`, one subprocess per step).

    Args:
        pipeline: The KFP pipeline.
        arguments: The pipeline's arguments (`local=True` keeps training and deployment here too).
        pipeline_root: Where KFP keeps each step's artifacts and logs (`<root>/<pipeline>-<time>/<task>/`).

    Raises:
        RuntimeError: A step failed (after the exit handler has recorded the outcome).
    """
    from kfp import local

    check_required(arguments, pipeline_parameters(pipeline))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(pipeline_root))
    with warnings.catch_warnings():
        # The steps run in this Python, not in the pipeline image that KFP warns about.
        warnings.filterwarnings("ignore", message=".*non-Python base image", category=RuntimeWarning)
        pipeline(**arguments)


# --- a KFP server -----------------------------------------------------------------------------------


def connect(host: str, namespace: str | None = None, token: str | None = None) -> Any:
    """A `kfp.Client` for the KFP API at `host` (e.g. `http://ml-pipeline.kubeflow:8888`).

    Args:
        host: The KFP API's URL.
        namespace: The profile namespace of a multi-user KFP; None for single-user.
        token: A bearer token (multi-user KFP behind authentication), e.g. a service account token.
    """
    import kfp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This client only works", category=FutureWarning)
        options = {"namespace": namespace} if namespace else {}
        return kfp.Client(host=host, existing_token=token, **options)


@contextmanager
def _package(package: str | Path | Pipeline):
    """The given compiled package, or the pipeline given compiled now into a temporary file."""
    if isinstance(package, str | Path):
        if not Path(package).is_file():
            raise FileNotFoundError(
                f"no compiled pipeline at {package}: run `cutout pipeline compile -o FILE`"
            )
        yield str(package)
        return
    with tempfile.TemporaryDirectory(prefix="cutout-pipeline-") as folder:
        yield str(compile_pipeline(package, os.path.join(folder, "cutout-training.yaml")))


def submit(
    client: Any,
    arguments: Mapping[str, Any],
    package: str | Path | Pipeline,
    experiment: str = EXPERIMENT,
    run_name: str | None = None,
    pipeline_root: str | None = None,
) -> str:
    """Start one run of the pipeline on the KFP server; returns the run's id.

    Args:
        client: From `connect`.
        arguments: The pipeline's arguments.
        package: A compiled pipeline (`cutout pipeline compile`), or the pipeline to compile now.
        experiment: The KFP experiment the run belongs to (created if missing).
        run_name: The run's display name; default: the package's name and the time.
        pipeline_root: Where KFP keeps artifacts, if not the server's default.
    """
    # kfp.Client prints the UI's links: to stderr, so stdout carries only the id (scripts read it).
    with _package(package) as path, redirect_stdout(sys.stderr):
        result = client.create_run_from_pipeline_package(
            path, arguments=dict(arguments), run_name=run_name, experiment_name=experiment,
            pipeline_root=pipeline_root,
        )  # fmt: skip
    return result.run_id


def schedule(
    client: Any,
    cron: str,
    arguments: Mapping[str, Any],
    package: str | Path | Pipeline,
    experiment: str = EXPERIMENT,
    name: str = "cutout-retraining",
    max_concurrency: int = 1,
    catchup: bool = False,
    pipeline_root: str | None = None,
) -> str:
    """Create a KFP recurring run of the pipeline on a 6-field cron schedule; returns its id.

    Args:
        client: From `connect`.
        cron: Six fields, seconds first (`0 0 3 * * *`: 03:00 every day); checked before anything is sent.
        arguments: The pipeline's arguments for every run.
        package: A compiled pipeline, or the pipeline to compile now.
        experiment: The KFP experiment (created if missing).
        name: The recurring run's display name.
        max_concurrency: Runs that may overlap (1: a slow run delays the next).
        catchup: Start the runs missed while the schedule was paused, one per missed time.
        pipeline_root: Where KFP keeps artifacts, if not the server's default.

    Raises:
        cutout.platform.cron.CronError: The cron expression is not KFP's six-field form.
    """
    cron = validate_cron(cron)
    with _package(package) as path, redirect_stdout(sys.stderr):
        experiment_id = client.create_experiment(experiment).experiment_id
        recurring = client.create_recurring_run(
            experiment_id, name, cron_expression=cron, max_concurrency=max_concurrency,
            no_catchup=not catchup, params=dict(arguments), pipeline_package_path=path,
            pipeline_root=pipeline_root,
        )  # fmt: skip
    return recurring.recurring_run_id
