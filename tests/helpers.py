"""Test helpers: weights under the official names, product-like photos, fresh S3 buckets, and the
checks that a Kubernetes resource refuses a wrong field."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import boto3
import numpy as np
import pytest
from PIL import Image, ImageDraw

from cutout.platform import storage

if TYPE_CHECKING:
    import torch

DATA = Path(__file__).parent / "data"


def official_shapes(variant: str) -> list[tuple[str, tuple[int, ...]]]:
    """Name and shape of every state-dict entry of the published model/u2net.py, in order."""
    entries = []
    for line in (DATA / f"{variant}_state_dict_shapes.txt").read_text().splitlines():
        name, _, shape = line.partition(" ")
        entries.append((name, tuple(int(size) for size in shape.split("x")) if shape else ()))
    return entries


def official_state_dict(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict under the official names with random values, as an official .pth would hold."""
    import torch  # here, not at the top: conftest imports this module for every test

    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_shapes(variant):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1000)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.1
    return state


def product_photo(width: int = 200, height: int = 300, seed: int = 0) -> Image.Image:
    """A garment-like dark shape on an off-white backdrop."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), (240, 238, 235))
    colour = tuple(int(c) for c in rng.integers(20, 160, size=3))
    ImageDraw.Draw(image).ellipse((width * 0.25, height * 0.2, width * 0.75, height * 0.85), fill=colour)
    return image


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path: equal before and after = input untouched."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip


@contextlib.contextmanager
def fresh_bucket(env: pytest.MonkeyPatch, endpoint: str, folder: Path) -> Iterator[str]:
    """Point boto3 at the S3 `endpoint` through its own env variables (set on `env`, away from the
    developer's AWS setup; `folder` holds the empty config files), create a bucket, yield its URI."""
    env.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    env.setenv("AWS_ACCESS_KEY_ID", "testing")
    env.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    env.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL", "AWS_REGION"):
        env.delenv(name, raising=False)
    env.setenv("AWS_CONFIG_FILE", str(folder / "no-aws-config"))
    env.setenv("AWS_SHARED_CREDENTIALS_FILE", str(folder / "no-aws-credentials"))
    storage.reset_clients()
    bucket = f"test-{uuid.uuid4().hex[:16]}"
    boto3.session.Session().client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    try:
        yield f"s3://{bucket}"
    finally:
        storage.reset_clients()


def assert_field_refused(resource: dict, path: list, fields: dict, message: str) -> None:
    """Merged into `resource` at `path` (keys and list indexes), `fields` make `parse_resource` refuse it
    with an error holding `message`."""
    from cutout.platform.sdk_models import UnknownFieldError, parse_resource

    target = resource
    for key in path:
        target = target[key]
    target.update(fields)
    with pytest.raises(UnknownFieldError, match=re.escape(message)):
        parse_resource(resource)
