"""Shared fixtures: a local S3 endpoint (moto server on 127.0.0.1) and fresh buckets on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from helpers import fresh_bucket


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """Start an S3-compatible HTTP server on 127.0.0.1 (free port) and yield its URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[str]:
    """Point boto3 at the test endpoint through its own env variables, create a bucket, yield its URI."""
    with fresh_bucket(monkeypatch, s3_endpoint, tmp_path) as bucket:
        yield bucket


@pytest.fixture(scope="session")
def u2netp_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `.pth` under the official U²-NetP names (random values, realistic batch-norm statistics)."""
    import torch

    from helpers import official_state_dict

    path = tmp_path_factory.mktemp("weights") / "u2netp.pth"
    torch.save(official_state_dict("u2netp", seed=1), path)
    return path


@pytest.fixture(scope="session")
def u2netp_checkpoint(u2netp_weights: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`u2netp_weights` as a checkpoint of ours, at 160 px (small and fast; the size travels in it)."""
    from cutout.model.weights import load_model, save_checkpoint

    path = tmp_path_factory.mktemp("checkpoint") / "u2netp.ckpt"
    save_checkpoint(path, load_model(u2netp_weights)[0], "u2netp", input_size=160)
    return path


# --- MLflow: a live `mlflow server` (artifacts on the local S3 endpoint) and the local sqlite default ---


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a real `mlflow server` on 127.0.0.1 (sqlite backend, artifacts proxied to a bucket on the
    local S3 endpoint), wait for `/health`, and yield its URL."""
    import os
    import sys

    from serving import free_port, running

    bucket = f"mlflow-{uuid.uuid4().hex[:12]}"
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
    session.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "MLFLOW_"))}
    # No background job workers: the tests never use them, and they cost start-up time.
    env.update(credentials, MLFLOW_S3_ENDPOINT_URL=s3_endpoint, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", f"s3://{bucket}/artifacts"]  # fmt: skip
    # A session of its own, so teardown stops the server and the workers it started, and nothing else.
    with running(command, port, folder / "server.log", "/health", cwd=folder, env=env) as server:
        yield server.url


def _forget_tracking_uri() -> None:
    import mlflow

    while mlflow.active_run() is not None:
        mlflow.end_run()
    mlflow.set_tracking_uri(None)  # also clears MLFLOW_TRACKING_URI, which set_tracking_uri exports


@pytest.fixture
def mlflow_tracking(mlflow_server: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Point MLflow at the live server (experiment `cutout`) for one test; yield the server's URL."""
    from cutout.platform.tracking import configure_tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    _forget_tracking_uri()
    configure_tracking(mlflow_server)
    yield mlflow_server
    _forget_tracking_uri()


@pytest.fixture
def mlflow_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A fresh current directory and no tracking URI set: MLflow gets the embedded default under it."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    _forget_tracking_uri()
    yield tmp_path
    _forget_tracking_uri()


# --- Kubernetes: a fake API server over real HTTP ---


@pytest.fixture
def fake() -> Iterator:
    """A fake Kubernetes API server (`fake_kube.FakeKube`) on 127.0.0.1, for one test."""
    from fake_kube import FakeKube

    with FakeKube() as server:
        yield server


@pytest.fixture
def kube(fake):
    """Our Kubernetes client (`cutout.platform.kube.connect`), talking to `fake`."""
    from cutout.platform.kube import connect

    return connect(fake.url)
