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
