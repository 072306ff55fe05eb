"""`cutout serve local`: the predictor and the feedback transformer as two processes on 127.0.0.1.

The local stand-in for the InferenceService: clients call the transformer (``--port``), which calls
the predictor (``--predictor-port``, by default the next port) as KServe's transformer calls its
predictor in the cluster. `start_local_service` starts both and returns once both answer
``/v2/health/ready``; `LocalService.stop` (or leaving its ``with`` block) stops both. Each server
runs in a session of its own, so only this code stops it, with SIGTERM first: the transformer then
writes the feedback items it still holds.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, TracebackType
from typing import IO

from cutout.platform.names import CHAMPION_URI, MODEL_NAME
from cutout.serve.codec import v1_predict_path

DEFAULT_MODEL_URI = CHAMPION_URI
DEFAULT_FEEDBACK_URI = ".cutout/feedback"
DEFAULT_PORT = 8080
HOST = "127.0.0.1"
READY_PATH = "/v2/health/ready"


@dataclass
class LocalService:
    """A running predictor and transformer: their processes and URLs."""

    predictor: subprocess.Popen
    transformer: subprocess.Popen
    predictor_url: str
    transformer_url: str
    logs: list[IO[bytes]] = field(default_factory=list, repr=False)

    @property
    def processes(self) -> list[subprocess.Popen]:
        return [self.transformer, self.predictor]

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the transformer (it writes its queue first), then the predictor; kill what lingers."""
        for process in self.processes:
            terminate(process, timeout)
        for log in self.logs:
            log.close()
        self.logs.clear()

    def __enter__(self) -> LocalService:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()


def predictor_command(
    model_uri: str, port: int, runtime: str | None = None, model_name: str = MODEL_NAME
) -> list[str]:
    """The command line of the predictor process."""
    command = [sys.executable, "-m", "cutout.serve.predictor", "--host", HOST, "--http_port", str(port),
               "--model_name", model_name, "--model-uri", model_uri]  # fmt: skip
    return command + (["--runtime", runtime] if runtime else [])


def transformer_command(
    feedback_uri: str,
    port: int,
    predictor_port: int,
    threshold: float | None = None,
    model_name: str = MODEL_NAME,
) -> list[str]:
    """The command line of the transformer process."""
    command = [sys.executable, "-m", "cutout.serve.transformer", "--host", HOST, "--http_port", str(port),
               "--model_name", model_name, "--predictor_host", f"{HOST}:{predictor_port}",
               "--feedback-uri", feedback_uri]  # fmt: skip
    return command + (["--threshold", str(threshold)] if threshold is not None else [])


def start_local_service(
    model_uri: str = DEFAULT_MODEL_URI,
    feedback_uri: str = DEFAULT_FEEDBACK_URI,
    port: int = DEFAULT_PORT,
    predictor_port: int | None = None,
    threshold: float | None = None,
    runtime: str | None = None,
    log_dir: str | Path | None = None,
    timeout: float = 180.0,
    env: Mapping[str, str] | None = None,
) -> LocalService:
    """Start the predictor and the transformer on 127.0.0.1 and wait until both are ready.

    Args:
        model_uri: What the predictor serves: ``models:/cutout@champion``, a checkpoint or an ``.onnx``.
        feedback_uri: Root of the retraining store and review queue (local folder or ``s3://``).
        port: The transformer's port, the one clients call.
        predictor_port: The predictor's port; by default ``port + 1``.
        threshold: Fixed routing threshold; by default the model version's stored one.
        runtime: ``torch`` or ``onnx`` for the predictor; by default the file's own.
        log_dir: Write each server's output to ``<log_dir>/{predictor,transformer}.log``; by default
            they share this process's output.
        timeout: Seconds to wait for both to be ready.
        env: The servers' environment (e.g. ``MLFLOW_TRACKING_URI``); by default this process's.

    Returns:
        The running service; call `LocalService.stop` (or use it in a ``with`` block).

    Raises:
        RuntimeError: when a server exits or is not ready in time (both are stopped then).
    """
    predictor_port = port + 1 if predictor_port is None else predictor_port
    if predictor_port == port:
        raise ValueError(f"the predictor and the transformer need different ports, both are {port}")
    logs = _open_logs(log_dir)
    predictor = _spawn(predictor_command(model_uri, predictor_port, runtime), logs.get("predictor"), env)
    transformer = _spawn(
        transformer_command(feedback_uri, port, predictor_port, threshold), logs.get("transformer"), env
    )
    service = LocalService(predictor, transformer, f"http://{HOST}:{predictor_port}", f"http://{HOST}:{port}",
                           list(logs.values()))  # fmt: skip
    try:
        deadline = time.monotonic() + timeout
        wait_until_ready(service.predictor_url, predictor, deadline, "predictor")
        wait_until_ready(service.transformer_url, transformer, deadline, "transformer")
    except BaseException:
        service.stop()
        raise
    return service


def serve_local(**options) -> int:
    """Run the local service until Ctrl-C or SIGTERM (or until a server dies); return an exit status.

    Args:
        **options: As for `start_local_service`.
    """
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        service = start_local_service(**options)
        try:
            print(f"predictor:   {service.predictor_url}", flush=True)
            print(f"transformer: {service.transformer_url}  (POST {v1_predict_path(MODEL_NAME)} or "
                  "/v2/models/cutout/infer)", flush=True)  # fmt: skip
            print("Ctrl-C stops both.", flush=True)
            while all(process.poll() is None for process in service.processes):
                time.sleep(0.5)
            dead = [p for p in service.processes if p.poll() is not None]
            print(f"a server exited with status {dead[0].returncode}; stopping the other", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0
        finally:
            service.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)


def wait_until_ready(
    url: str, process: subprocess.Popen, deadline: float, name: str, path: str = READY_PATH
) -> None:
    """Poll ``<url><path>`` (by default ``/v2/health/ready``) until it answers 200.

    Raises:
        RuntimeError: if the process exits first or the deadline passes.
    """
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the {name} exited with status {process.returncode} before it was ready")
        # Refused while starting, 503 while loading.
        with contextlib.suppress(OSError), urllib.request.urlopen(url + path, timeout=2) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"the {name} at {url} was not ready in time")


def _spawn(command: list[str], log: IO[bytes] | None, env: Mapping[str, str] | None) -> subprocess.Popen:
    # A session of its own: a Ctrl-C in the terminal reaches only us, and we stop the servers in order.
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT if log else None, start_new_session=True, env=env
    )


def _open_logs(log_dir: str | Path | None) -> dict[str, IO[bytes]]:
    if log_dir is None:
        return {}
    os.makedirs(log_dir, exist_ok=True)
    return {name: open(Path(log_dir) / f"{name}.log", "ab") for name in ("predictor", "transformer")}


def terminate(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM to the process's own session, then SIGKILL if it has not exited within `timeout`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt
