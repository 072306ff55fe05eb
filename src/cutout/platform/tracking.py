"""Where MLflow lives, and thin helpers to log a training run to it.

Precedence for the tracking URI: an explicit argument, then one already set (``MLFLOW_TRACKING_URI``, e.g.
``http://mlflow:5000`` in the cluster, or `mlflow.set_tracking_uri`), then the embedded default: a sqlite
file and an artifact folder under ``.cutout/`` of the current directory. A database, not MLflow's file
store, because the model registry needs one.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow

from cutout.platform import storage
from cutout.platform.names import EXPERIMENT

LOCAL_DIR = ".cutout"
SQLITE_PREFIX = "sqlite:///"
LOCAL_DB, LOCAL_ARTIFACTS = "mlflow.db", "mlartifacts"  # the embedded store, in .cutout/
# Images are built without `.git`: the build passes the commit in through this variable instead.
GIT_COMMIT_ENV = "CUTOUT_GIT_COMMIT"
TENSORBOARD_ARTIFACTS = "tensorboard"
REPORT_ARTIFACTS = "report"


def local_tracking_uri(root: str | Path | None = None) -> str:
    """The embedded default: ``sqlite:///<root>/.cutout/mlflow.db`` (root: the current directory)."""
    return f"{SQLITE_PREFIX}{local_dir(root) / LOCAL_DB}"


def local_dir(root: str | Path | None = None) -> Path:
    """The absolute ``.cutout/`` folder that holds the local MLflow database and artifacts."""
    return Path(root or os.getcwd()).absolute() / LOCAL_DIR


def set_aside_local_store(root: str | Path | None = None) -> Path | None:
    """Move the embedded store of `root` (its database and artifacts) into ``.cutout/previous/<time>/``,
    so that the next run starts an empty one and nothing is lost; returns where, or None if there was none.

    The artifacts' recorded paths still point at the old place: move both back to use that store again.
    """
    store = local_dir(root)
    found = [store / name for name in (LOCAL_DB, LOCAL_ARTIFACTS) if (store / name).exists()]
    if not found:
        return None
    aside = store / "previous" / time.strftime("%Y%m%d-%H%M%S")
    aside.mkdir(parents=True)
    for path in found:
        path.rename(aside / path.name)
    return aside


def current_tracking_uri() -> str:
    """The URI MLflow is set to, or the embedded default when nothing set one."""
    return mlflow.get_tracking_uri() if mlflow.is_tracking_uri_set() else local_tracking_uri()


def configure_tracking(tracking_uri: str | None = None, experiment: str = EXPERIMENT) -> str:
    """Point MLflow at a tracking server or the local default, make sure the experiment exists, use it.

    Args:
        tracking_uri: a server URL or database URI; by default the one already set, else the local sqlite.
        experiment: the experiment that runs are logged to.

    Returns:
        The tracking URI now in use.
    """
    uri = tracking_uri or current_tracking_uri()
    artifact_location = None
    if uri.startswith(SQLITE_PREFIX):
        # A bare database keeps its artifacts in a sibling folder; a server picks its own (S3 behind it).
        artifacts = Path(uri.removeprefix(SQLITE_PREFIX)).parent / LOCAL_ARTIFACTS
        artifacts.mkdir(parents=True, exist_ok=True)
        artifact_location = artifacts.as_uri()
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        mlflow.create_experiment(experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment)
    return uri


def start_run(
    run_name: str | None = None, tags: Mapping[str, str] | None = None, tracking_uri: str | None = None
) -> mlflow.ActiveRun:
    """Configure tracking and start a run; use it as a context manager (`with start_run(...) as run:`)."""
    configure_tracking(tracking_uri)
    return mlflow.start_run(run_name=run_name, tags=dict(tags or {}))


def log_params(params: Mapping[str, Any]) -> None:
    """Log the run's parameters (hyper-parameters, data location, variant)."""
    mlflow.log_params(dict(params))


def log_epoch_metrics(metrics: Mapping[str, float], epoch: int) -> None:
    """Log one epoch's metrics with the epoch as the step, so MLflow draws them as curves."""
    mlflow.log_metrics({name: float(value) for name, value in metrics.items()}, step=epoch)


def log_tensorboard(log_dir: str | Path) -> None:
    """Upload a folder of TensorBoard event files under the run's ``tensorboard/`` artifacts."""
    mlflow.log_artifacts(str(log_dir), artifact_path=TENSORBOARD_ARTIFACTS)


def log_report(report_dir: str) -> None:
    """Upload an evaluation report folder (local or ``s3://``) under the run's ``report/`` artifacts."""
    if not storage.is_s3(report_dir):
        mlflow.log_artifacts(report_dir, artifact_path=REPORT_ARTIFACTS)
        return
    prefix = report_dir.rstrip("/") + "/"
    for uri in storage.list_files(report_dir):
        relative = uri[len(prefix) :]
        folder = os.path.dirname(relative)
        with storage.local_copy(uri) as local:
            mlflow.log_artifact(str(local), artifact_path="/".join(filter(None, [REPORT_ARTIFACTS, folder])))


def git_commit(folder: str | Path | None = None) -> str:
    """The code's commit: ``$CUTOUT_GIT_COMMIT``, else ``git rev-parse HEAD``, else "unknown"."""
    if os.environ.get(GIT_COMMIT_ENV):
        return os.environ[GIT_COMMIT_ENV]
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder or Path(__file__).parent,
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"  # no git, or not a checkout (an installed package)
    return result.stdout.strip() or "unknown"


def run_tags(data_hash: str | None = None, variant: str | None = None) -> dict[str, str]:
    """Tags that make a run traceable: the data manifest's hash, the code's commit, the model variant."""
    tags = {"git_commit": git_commit()}
    if data_hash is not None:
        tags["data_manifest_sha256"] = data_hash
    if variant is not None:
        tags["variant"] = variant
    return tags
