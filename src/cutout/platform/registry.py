"""The MLflow model registry: versions, aliases, tags, and the files of a registered model.

Logging a model (the pyfunc wrapper, its checkpoint and ONNX export) is `cutout.train.logged_model`'s: this
module knows MLflow, not the network. `resolve_model_uri` fetches just the checkpoint or the ONNX file of a
``models:/`` URI, for `cutout.model.loader`.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Mapping
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST, ErrorCode
from mlflow.store.artifact.models_artifact_repo import ModelsArtifactRepository
from mlflow.tracking import MlflowClient

from cutout.platform.names import (
    CHAMPION,
    EXPERIMENT,
    MODEL_NAME,
    ROUTING_THRESHOLD_TAG,
    ModelRef,
    is_registry_uri,
    version_uri,
)
from cutout.platform.tracking import current_tracking_uri

ARTIFACT_NAME = "model"  # the logged model's name within its run: runs:/<run_id>/model
CHECKPOINT, ONNX = "checkpoint", "onnx"
HOLDOUT_TAG = "holdout"  # the evaluation set's manifest hash: scores compare only on the same holdout
PROMOTION_PREFIX = "promotion."  # the gate's decision, on the version it judged
LATEST = "latest"  # `--run-id latest`, `--version latest`: the newest one, as `models:/NAME/latest` reads
_NOT_FOUND = {ErrorCode.Name(RESOURCE_DOES_NOT_EXIST), ErrorCode.Name(INVALID_PARAMETER_VALUE)}


def _client() -> MlflowClient:
    # The embedded default applies here too, not MLflow's own (./mlflow.db in the current folder).
    mlflow.set_tracking_uri(current_tracking_uri())
    return MlflowClient()


def register_model(
    run_id: str,
    name: str = MODEL_NAME,
    metrics: Mapping[str, float] | None = None,
    holdout: str | None = None,
) -> str:
    """Register the run's logged model as a new version of `name`, with its metrics as version tags.

    Args:
        run_id: the run that logged the model (see `log_model`).
        name: the registered model.
        metrics: evaluation metrics (e.g. ``mean_iou``); `promote` compares them.
        holdout: an id of the evaluation data (its manifest hash), so only like is compared with like.

    Returns:
        The new version number, as MLflow spells it (a string).
    """
    client = _client()
    tags = {key: repr(float(value)) for key, value in (metrics or {}).items()}
    if holdout is not None:
        tags[HOLDOUT_TAG] = holdout
    return str(mlflow.register_model(_logged_model_uri(client, run_id), name, tags=tags).version)


def _logged_model_uri(client: MlflowClient, run_id: str) -> str:
    # MLflow 3 keeps models beside runs, not in them: find the run's `model` (the newest if logged twice).
    experiment = client.get_run(run_id).info.experiment_id
    found = client.search_logged_models(
        experiment_ids=[experiment], filter_string=f"source_run_id = '{run_id}' AND name = '{ARTIFACT_NAME}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}], max_results=1,
    )  # fmt: skip
    if not found:
        raise ValueError(f"run {run_id} has no logged model {ARTIFACT_NAME!r}: log one with log_model")
    return found[0].model_uri


def latest_model_run(experiment: str = EXPERIMENT) -> str:
    """The run that logged the newest model in `experiment` (the last training that finished)."""
    client = _client()
    found = client.get_experiment_by_name(experiment)
    models = found and client.search_logged_models(
        experiment_ids=[found.experiment_id], filter_string=f"name = '{ARTIFACT_NAME}'",
        order_by=[{"field_name": "creation_timestamp", "ascending": False}], max_results=1,
    )  # fmt: skip
    if not models:
        raise ValueError(f"no run in the experiment {experiment!r} of {current_tracking_uri()} logged a "
                         "model: train one first (cutout train)")  # fmt: skip
    return models[0].source_run_id


def latest_version(name: str = MODEL_NAME) -> str:
    """The highest version number of the registered model `name`."""
    versions = _client().search_model_versions(f"name = '{name}'")
    if not versions:
        raise ValueError(f"the registry at {current_tracking_uri()} has no model {name!r}: register one "
                         "first (cutout register)")  # fmt: skip
    return str(max(int(version.version) for version in versions))


def record_promotion(
    name: str, version: str, promoted: bool, details: Mapping[str, object], alias: str = CHAMPION
) -> None:
    """Move `alias` to the version when promoted, and write the decision's `details` on it as
    ``promotion.<key>`` tags, whichever way it went (the reason is what people read in the registry)."""
    client = _client()
    if promoted:
        client.set_registered_model_alias(name, alias, str(version))
    for key, value in {"promoted": promoted, **details}.items():
        client.set_model_version_tag(name, str(version), f"{PROMOTION_PREFIX}{key}", str(value))


def promotion_tags(tags: Mapping[str, str]) -> dict[str, str]:
    """The gate's decision as `record_promotion` wrote it on a version: key → value, prefix removed."""
    return {key.removeprefix(PROMOTION_PREFIX): value for key, value in tags.items()
            if key.startswith(PROMOTION_PREFIX)}  # fmt: skip


def pin_alias(uri: str) -> str | None:
    """``models:/NAME@ALIAS`` → ``models:/NAME/VERSION`` of the version holding the alias now.

    Pinned, a URI keeps naming the same weights even if the alias moves meanwhile. Returns None when no
    version holds the alias (or the model is not registered); any other URI comes back unchanged.
    """
    if not is_registry_uri(uri) or "@" not in uri:
        return uri
    ref = ModelRef.parse(uri)
    version = champion_version(ref.name, ref.alias)
    return None if version is None else version_uri(version.version, ref.name)


def champion_version(name: str = MODEL_NAME, alias: str = CHAMPION):
    """The model version holding `alias`, or None when none does (or the model is not registered)."""
    try:
        # Not search_model_versions: in MLflow 3.17 its results carry empty aliases.
        return _client().get_model_version_by_alias(name, alias)
    except MlflowException as error:
        # A missing model says RESOURCE_DOES_NOT_EXIST; a missing alias, INVALID_PARAMETER_VALUE.
        if error.error_code in _NOT_FOUND:
            return None
        raise


def resolve_model_uri(uri: str, prefer: str = CHECKPOINT, dst: str | Path | None = None) -> Path:
    """Download the checkpoint (or, with ``prefer="onnx"``, the ONNX file) of a ``models:/`` URI.

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``models:/<model_id>``.
        prefer: ``checkpoint`` or ``onnx``.
        dst: an existing local folder to download into; a new temporary folder by default.

    Returns:
        The local path of the file.
    """
    if prefer not in (CHECKPOINT, ONNX):
        raise ValueError(f"prefer must be {CHECKPOINT!r} or {ONNX!r}, not {prefer!r}")
    _client()
    files = Model.load(uri).flavors["python_function"].get("artifacts", {})
    if prefer not in files:
        raise ValueError(f"{uri} has no {prefer} file (it holds: {', '.join(files) or 'none'})")
    folder = str(dst) if dst is not None else tempfile.mkdtemp(prefix="cutout-model-")
    return Path(ModelsArtifactRepository(uri).download_artifacts(files[prefer]["path"], dst_path=folder))


def set_version_tag(uri: str, key: str, value: str) -> tuple[str, str]:
    """Write one tag on the model version a ``models:/NAME/VERSION`` (or ``@ALIAS``) URI names."""
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = _client()
    found = get_model_name_and_version(client, uri)
    if len(found) != 2:
        raise ValueError(f"{uri} names no registered model version: use models:/NAME/VERSION or NAME@ALIAS")
    client.set_model_version_tag(*found, key, value)
    return found


def set_routing_threshold(uri: str, threshold: float) -> tuple[str, str]:
    """Store the routing threshold on the model version a URI names, as its `routing_threshold` tag.

    Args:
        uri: ``models:/NAME/VERSION`` or ``models:/NAME@ALIAS`` (the version holding the alias now).
        threshold: the quality score below which a cutout goes to review (scores lie in [0, 1]).

    Returns:
        The model version's (name, version).

    Raises:
        ValueError: for a threshold that is not finite, or a URI naming no registered version.
        MlflowException: for a URI that is not ``models:/…``, or a model, version or alias that is missing.
    """
    if not math.isfinite(threshold):
        raise ValueError(f"a routing threshold is a finite number, got {threshold}")
    return set_version_tag(uri, ROUTING_THRESHOLD_TAG, repr(float(threshold)))


def routing_threshold(uri: str) -> float | None:
    """The routing threshold stored on the model version a ``models:/NAME/VERSION|NAME@ALIAS`` URI names.

    Returns:
        The threshold, or None when the version has none (not calibrated yet) or the URI names a
        logged model (``models:/<model_id>``) rather than a registered version.

    Raises:
        MlflowException: for a URI that is not ``models:/…``, or a model, version or alias that is missing.
    """
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    client = _client()
    found = get_model_name_and_version(client, uri)
    if len(found) != 2:
        return None
    value = client.get_model_version(*found).tags.get(ROUTING_THRESHOLD_TAG)
    return float(value) if value is not None else None
