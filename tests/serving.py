"""Test helpers for servers: processes on 127.0.0.1 at a free port, waited for and stopped, and the
requests and checks that the predictor's and the transformer's tests share."""

from __future__ import annotations

import base64
import io
import json
import socket
import subprocess
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from cutout.serve.local import READY_PATH, terminate, wait_until_ready

MODEL = "cutout"
V1, V2 = f"/v1/models/{MODEL}:predict", f"/v2/models/{MODEL}/infer"
JSON = {"content-type": "application/json"}
Request = tuple[str, bytes, dict[str, str]]  # path, body, headers


# --- processes -----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """A server process, the URL it answers on, and the file that holds its output."""

    url: str
    process: subprocess.Popen
    log: Path

    def logs(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def start_server(
    command: list[str], port: int, log: Path, cwd: Path | None = None, env: dict[str, str] | None = None
) -> Server:
    """Start `command`, which listens on 127.0.0.1:`port`, in a session of its own (its children stop
    with it), its output in `log`."""
    with open(log, "wb") as output:  # the process keeps its own copy of the file
        process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                   start_new_session=True)  # fmt: skip
    return Server(f"http://127.0.0.1:{port}", process, log)


def wait_for(server: Server, path: str = READY_PATH, timeout: float = 120.0) -> None:
    """Poll `path` until it answers 200; fail with the server's log if it exits or takes too long."""
    try:
        wait_until_ready(server.url, server.process, time.monotonic() + timeout, "server", path)
    except RuntimeError as error:
        pytest.fail(f"{error}:\n{server.logs()}")


def stop(server: Server, timeout: float = 30.0) -> int:
    """SIGTERM to the server's session, SIGKILL if it lingers; return its exit status."""
    terminate(server.process, timeout)
    return server.process.returncode


@contextmanager
def running(command: list[str], port: int, log: Path, path: str = READY_PATH, **popen) -> Iterator[Server]:
    """`start_server`, then `wait_for` `path`; the server is stopped when the block ends."""
    server = start_server(command, port, log, **popen)
    try:
        wait_for(server, path)
        yield server
    finally:
        stop(server)


# --- requests and answers ------------------------------------------------------------------------


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decoded(text: str | bytes) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text)))
    image.load()
    return image


def assert_cutout_of(photo: Image.Image, mask: Image.Image, cutout: Image.Image) -> None:
    """The cutout is this photo at its own size: its colours wherever the mask lets the photo through."""
    assert mask.mode == "L" and mask.size == photo.size
    assert cutout.mode == "RGBA" and cutout.size == photo.size
    alpha = np.asarray(mask)
    assert alpha.min() < 128 < alpha.max(), "a min-max normalised mask spans the range"
    pixels = np.asarray(cutout)
    assert np.array_equal(pixels[..., 3], alpha)
    visible = alpha > 0
    assert np.array_equal(pixels[..., :3][visible], np.asarray(photo.convert("RGB"))[visible])


def post_all(url: str, requests: Iterable[Request], workers: int = 4) -> list[tuple[int, str]]:
    """POST every (path, body, headers) to the server at `url` from `workers` threads; each answer's
    status and text, in order."""

    def send(client: httpx.Client, request: Request) -> tuple[int, str]:
        path, content, headers = request
        response = client.post(url + path, content=content, headers=headers)
        return response.status_code, response.text

    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda request: send(client, request), requests))


def assert_all_refused(answers: list[tuple[int, str]]) -> None:
    """Every answer is a 4xx, never a 5xx, whose JSON body says what is wrong under "error"."""
    unexpected = [(status, text[:200]) for status, text in answers if not 400 <= status < 500]
    assert not unexpected, unexpected[:5]
    assert all(json.loads(text)["error"] for _, text in answers)


def mask_and_cutout(url: str, photo: Image.Image, protocol: str) -> tuple[Image.Image, Image.Image]:
    """Send one photo (a base64 PNG) in ``v1`` or ``v2``; the mask and the cutout of the 200 answer."""
    data = b64(encoded(photo))
    if protocol == "v2":
        body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [data]}]}
        response = httpx.post(url + V2, json=body, timeout=60)
        assert response.status_code == 200, response.text
        outputs = {output["name"]: output["data"] for output in response.json()["outputs"]}
        return decoded(outputs["mask"][0]), decoded(outputs["cutout"][0])
    response = httpx.post(url + V1, json={"instances": [{"image_b64": data}]}, timeout=60)
    assert response.status_code == 200, response.text
    prediction = response.json()["predictions"][0]
    return decoded(prediction["mask"]), decoded(prediction["cutout"])


def assert_each_caller_gets_its_own_photo(url: str, photos: list[Image.Image], workers: int) -> None:
    """The photos sent at once from `workers` threads, v1 and v2 in turn: each answer is its own photo's."""

    def call(index: int) -> tuple[Image.Image, Image.Image]:
        return mask_and_cutout(url, photos[index], "v2" if index % 2 else "v1")

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(call, range(len(photos))))
    for photo, (mask, cutout) in zip(photos, results, strict=True):
        assert_cutout_of(photo, mask, cutout)
