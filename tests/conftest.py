"""Shared fixtures: a local S3 endpoint (moto server on 127.0.0.1) and fresh buckets on it."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from moto.server import ThreadedMotoServer

from cutout.platform import storage


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
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # Keep the developer's own AWS setup out of the tests.
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    storage.reset_clients()
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    boto3.session.Session().client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    yield f"s3://{bucket}"
    storage.reset_clients()


@pytest.fixture(scope="session")
def u2netp_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `.pth` under the official U²-NetP names (random values, realistic batch-norm statistics)."""
    import torch

    from helpers import official_state_dict

    path = tmp_path_factory.mktemp("weights") / "u2netp.pth"
    torch.save(official_state_dict("u2netp", seed=1), path)
    return path


# --- MLflow: a live `mlflow server` (artifacts on the local S3 endpoint) and the local sqlite default ---


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_for_health(url: str, server, timeout: float = 120.0) -> None:
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {server.returncode}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"mlflow server at {url} did not answer /health within {timeout:.0f} s")


@pytest.fixture(scope="session")
def mlflow_server(s3_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start a real `mlflow server` on 127.0.0.1 (sqlite backend, artifacts proxied to a bucket on the
    local S3 endpoint), wait for `/health`, and yield its URL."""
    import os
    import signal
    import subprocess
    import sys

    bucket = f"mlflow-{uuid.uuid4().hex[:12]}"
    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                   "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    session = boto3.session.Session(aws_access_key_id="testing", aws_secret_access_key="testing")
    session.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1").create_bucket(Bucket=bucket)
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AWS_", "MLFLOW_"))}
    # No background job workers: the tests never use them, and they cost start-up time.
    env.update(credentials, MLFLOW_S3_ENDPOINT_URL=s3_endpoint, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1", "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
               "--artifacts-destination", f"s3://{bucket}/artifacts"]  # fmt: skip
    log = open(folder / "server.log", "wb")  # noqa: SIM115 (closed at teardown)
    # A session of its own, so teardown stops the server and the workers it started, and nothing else.
    server = subprocess.Popen(command, env=env, cwd=folder, stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_health(url, server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


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
