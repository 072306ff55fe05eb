"""Tracking protects: the embedded default (sqlite under `.cutout/`), and that a run's params, per-epoch
metrics, artifacts and traceability tags can be read back through MLflow's own client."""

from __future__ import annotations

import hashlib
import re

import mlflow
from mlflow.tracking import MlflowClient

from cutout.data.manifest import manifest_hash
from cutout.platform import storage, tracking


def _training_outputs(folder):
    """A dataset's manifest, a TensorBoard folder and a report folder, as a training run leaves them."""
    (folder / "data").mkdir()
    (folder / "data" / "manifest.jsonl").write_text('{"id": "a"}\n{"id": "b"}\n')
    (folder / "tb" / "train").mkdir(parents=True)
    (folder / "tb" / "train" / "events.out.tfevents.1").write_bytes(b"\0events")
    (folder / "report" / "figures").mkdir(parents=True)
    (folder / "report" / "metrics.json").write_text('{"mean_iou": 0.9}')
    (folder / "report" / "figures" / "histogram.png").write_bytes(b"png")
    return str(folder / "data"), folder / "tb", folder / "report"


def test_a_run_is_readable_back_from_the_local_default(mlflow_local, s3_bucket):
    uri = tracking.configure_tracking()
    assert uri == f"sqlite:///{mlflow_local / '.cutout' / 'mlflow.db'}"
    assert (mlflow_local / ".cutout" / "mlflow.db").is_file()
    experiment = mlflow.get_experiment_by_name("cutout")
    assert experiment.artifact_location == (mlflow_local / ".cutout" / "mlartifacts").as_uri()

    dataset, board, report = _training_outputs(mlflow_local)
    # Evaluation may write its report to S3: it is logged the same way.
    storage.write_text(f"{s3_bucket}/report/metrics.json", "{}")
    storage.write_bytes(f"{s3_bucket}/report/worst/0.png", b"png")

    tags = tracking.run_tags(manifest_hash(dataset), variant="u2netp")
    with tracking.start_run(run_name="tiny", tags=tags) as run:
        tracking.log_params({"epochs": 3, "lr": 0.001, "model": "u2netp"})
        for epoch in range(3):
            tracking.log_epoch_metrics({"loss": 1.0 / (epoch + 1), "val_iou": 0.5 + epoch / 10}, epoch)
        tracking.log_tensorboard(board)
        tracking.log_report(str(report))
        tracking.log_report(f"{s3_bucket}/report")

    client = MlflowClient(uri)
    logged = client.get_run(run.info.run_id).data
    assert logged.params == {"epochs": "3", "lr": "0.001", "model": "u2netp"}
    history = client.get_metric_history(run.info.run_id, "val_iou")
    assert [(m.step, round(m.value, 6)) for m in history] == [(0, 0.5), (1, 0.6), (2, 0.7)]
    expected_hash = hashlib.sha256((mlflow_local / "data" / "manifest.jsonl").read_bytes()).hexdigest()
    assert logged.tags["data_manifest_sha256"] == expected_hash
    assert logged.tags["variant"] == "u2netp" and logged.tags["git_commit"]
    mlflow.artifacts.download_artifacts(run_id=run.info.run_id, dst_path=str(mlflow_local / "dl"))
    assert (mlflow_local / "dl" / "tensorboard" / "train" / "events.out.tfevents.1").is_file()
    assert (mlflow_local / "dl" / "report" / "figures" / "histogram.png").read_bytes() == b"png"
    assert (mlflow_local / "dl" / "report" / "worst" / "0.png").read_bytes() == b"png"


def test_the_environment_overrides_the_local_default(mlflow_local, monkeypatch):
    assert tracking.current_tracking_uri() == tracking.local_tracking_uri(mlflow_local)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow:5000")
    assert tracking.current_tracking_uri() == "http://mlflow:5000"


def test_git_commit_is_the_checkout_head_or_unknown(tmp_path, monkeypatch):
    monkeypatch.delenv(tracking.GIT_COMMIT_ENV, raising=False)
    assert re.fullmatch(r"[0-9a-f]{40}", tracking.git_commit())  # the tests run from a checkout
    assert tracking.git_commit(tmp_path) == "unknown"
    monkeypatch.setenv(tracking.GIT_COMMIT_ENV, "abc123")
    assert tracking.git_commit() == "abc123"
