"""Serve a KServe model with KServe's own REST app, on a chosen host, with a guard in front of it.

`kserve.ModelServer` binds 0.0.0.0, has no host flag, and starts only with a model that is already
loaded. `serve_model` keeps KServe's routes, data plane and error handlers (``RESTServer``'s
``create_application``) and adds what a public endpoint needs:

- It binds the host it is given (127.0.0.1 by default) and loads the model *after* binding:
  ``/v2/health/ready``, ``/v2/models/<name>/ready`` and ``/v1/models/<name>`` say 503 until the
  model is loaded (KServe's server readiness is always true), and inference answers 503 meanwhile.
  A model that fails to load stops the process with status 1; SIGTERM stops it with status 0.
- Bad requests get a 4xx with a message, never a 5xx (`cutout.serve.guard`), and anything KServe's
  decoding raises is a 400 instead of a 500.
- The model repository extension (``/v2/repository/…``: load and unload over HTTP) answers 403:
  this server holds one model, loaded at start.
- Prometheus metrics at ``/metrics``: KServe's per-step latency histograms
  (``request_predict_seconds`` …) plus the guard's per-route request counts and latencies.

Only REST is served (no gRPC port). KServe's app is a module-level FastAPI object, so one process
serves one `build_application`. `server_parser` and `serve_from_args` are the command line that the
predictor and the transformer share.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import ctypes
import functools
import logging
import signal
import threading
import time
from types import FrameType

import uvicorn
from fastapi import FastAPI
from kserve import context as kserve_context
from kserve import logging as kserve_logging
from kserve import model_server
from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
from kserve.errors import InvalidInput
from kserve.model import BaseKServeModel
from kserve.model_repository import ModelRepository
from kserve.predictor_config import PredictorConfig
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer

from cutout.serve.guard import DEFAULT_MAX_REQUEST_BYTES, DEFAULT_SERVER_LIMITS, ServerLimits, install_guard
from cutout.serve.photos import DEFAULT_MAX_BATCH, DecodeLimits

logger = logging.getLogger(__name__)

_MAX_MESSAGE = 300  # characters of an exception's text passed on to a client


class LoadAwareDataPlane(DataPlane):
    """KServe's data plane, ready only once every model is, with decoding errors reported as bad input."""

    async def ready(self) -> bool:
        names = list(self.model_registry.get_models())
        if not names:
            return False
        for name in names:
            if not await self.model_registry.is_model_ready(name):
                return False
        return await super().ready()

    def decode(self, body, headers, *args, **kwargs):
        # KServe raises KeyError, InferenceError, UnicodeDecodeError … (500) on some malformed bodies.
        try:
            return super().decode(body, headers, *args, **kwargs)
        except InvalidInput as error:
            # KServe's words for a v1 body that is not JSON; say so plainly.
            prefix = "Unrecognized request format: "
            if str(error).startswith(prefix):
                raise InvalidInput(
                    f"the request body is not valid JSON: {str(error)[len(prefix) :]}"
                ) from error
            raise
        except Exception as error:
            raise InvalidInput(f"can't decode the request: {_short(error)}") from error


def build_application(models: list[BaseKServeModel], limits: ServerLimits = DEFAULT_SERVER_LIMITS) -> FastAPI:
    """KServe's REST app for `models`, behind the request guard (see the module docstring).

    Args:
        models: Models to serve under their names; they need not be loaded yet.
        limits: Request limits.

    Returns:
        The FastAPI app (KServe's module-level one, so call this once per process).

    Raises:
        RuntimeError: when KServe's app was configured already in this process.
    """
    app = model_server.app
    if any(getattr(route, "path", None) == "/v2/health/ready" for route in app.routes):
        raise RuntimeError("KServe's REST app is configured already: one build_application per process")
    registry = ModelRepository()
    for model in models:
        registry.update(model)
    dataplane = LoadAwareDataPlane(model_registry=registry)
    rest = RESTServer(FASTAPI_APP_IMPORT_STRING, dataplane, ModelRepositoryExtension(registry), http_port=0)
    rest.create_application()  # registers the routes and handlers on `model_server.app`
    install_guard(app, limits)
    return app


def serve_model(
    model: BaseKServeModel,
    host: str = "127.0.0.1",
    port: int = 8080,
    limits: ServerLimits = DEFAULT_SERVER_LIMITS,
    *,
    predictor_config: PredictorConfig | None = None,
    configure_logging: bool = True,
    log_config_file: str | None = None,
) -> None:
    """Serve one model on ``http://host:port`` until SIGINT/SIGTERM; load it after the port is bound.

    Args:
        model: A KServe model; its ``load()`` runs on a thread once the server listens.
        host: The address to bind: 127.0.0.1 locally, 0.0.0.0 in a container.
        port: The HTTP port.
        limits: Request limits.
        predictor_config: For a transformer, where its predictor is (``predictor_host``, protocol, …):
            put in KServe's context as ``ModelServer`` does, for ``Model.predict`` and readiness checks.
        configure_logging: Set up KServe's log format (as ``ModelServer`` does).
        log_config_file: A logging config file for KServe's `configure_logging`.

    Raises:
        SystemExit: with status 1 when the model fails to load or the port can't be bound; with
            status 0 on SIGTERM, once the server has shut down (callers' ``finally`` blocks run).
    """
    bound_allocator_growth()
    trim_heap_periodically()
    # uvicorn shuts down on SIGTERM, then raises it again under the handler it found: this one turns it
    # into an exception, so the stack unwinds (the transformer writes its queue) and the status is 0.
    previous = signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        if configure_logging:
            _configure_logging(log_config_file)
        if predictor_config is not None:
            kserve_context.set_predictor_config(predictor_config)  # before the loop: its tasks copy it
        app = build_application([model], limits)
        config = uvicorn.Config(app, host=host, port=port, log_config=None, timeout_graceful_shutdown=30)
        asyncio.run(_serve_and_load(uvicorn.Server(config), model))
    finally:
        signal.signal(signal.SIGTERM, previous)


# glibc's mallopt parameters (malloc.h).
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
MMAP_THRESHOLD_BYTES = 1 << 20
ARENA_MAX = 2
HEAP_TRIM_SECONDS = 1.0


def bound_allocator_growth() -> bool:
    """Keep a long-running server's resident memory flat; False where the C library is not glibc.

    Each request allocates a few large buffers (the photo, its pixels, PNGs, base64 text) on worker
    threads. glibc raises its mmap threshold every time such a buffer is freed, so later ones come from
    per-thread heaps that fragment and never shrink, and the server's memory grows with the requests it
    serves. A fixed threshold sends large buffers back to the system when they are freed, and two arenas
    bound the heaps that can fragment. Set here rather than by MALLOC_* variables so that every way of
    starting a server gets it.
    """
    libc = _glibc()
    if libc is None:
        return False
    fixed_threshold = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    return bool(fixed_threshold and libc.mallopt(_M_ARENA_MAX, ARENA_MAX))


def trim_heap() -> bool:
    """Give the heap's free pages back to the system now (glibc's ``malloc_trim``).

    Returns:
        True when memory was released; False when there was none to release, or the C library is not glibc.
    """
    libc = _glibc()
    return libc is not None and bool(libc.malloc_trim(0))


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """glibc with its malloc tuning functions, loaded once (each load makes objects for the cyclic GC);
    None elsewhere (musl, macOS)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018 - AttributeError where they are missing
        return libc
    except (OSError, AttributeError):
        return None


def trim_heap_periodically(interval: float = HEAP_TRIM_SECONDS) -> threading.Thread:
    """`trim_heap` every `interval` seconds on a daemon thread, for the life of the process.

    Buffers under the mmap threshold (request bodies, masks, base64 text) come from the heap, and which
    ones are alive at once depends on how requests overlap: a freed hole stays resident until glibc
    trims it, which it does only at the top of a heap, so memory creeps up. ``malloc_trim`` also
    releases whole free pages inside the heap, and is cheap enough to run every second. With it (and the
    transformer's own fix, `cutout.serve.transformer.release_stream`) both servers stay flat at rest.
    """

    def trim_forever() -> None:
        while True:
            time.sleep(interval)
            trim_heap()

    thread = threading.Thread(target=trim_forever, name="heap-trim", daemon=True)
    thread.start()
    return thread


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)  # a requested stop is a clean one


def _configure_logging(log_config_file: str | None) -> None:
    """KServe's log setup, and the same handlers for our own loggers (``cutout.*``)."""
    kserve_logging.configure_logging(log_config_file)
    ours = logging.getLogger("cutout")
    if not ours.handlers:
        for handler in kserve_logging.logger.handlers:
            ours.addHandler(handler)
        ours.setLevel(kserve_logging.logger.level or logging.INFO)
        ours.propagate = False


async def _serve_and_load(server: uvicorn.Server, model: BaseKServeModel) -> None:
    serving = asyncio.create_task(server.serve())
    loading = asyncio.create_task(_load_in_background(model))
    await asyncio.wait({serving, loading}, return_when=asyncio.FIRST_COMPLETED)
    if loading.done() and loading.exception() is not None:
        logger.error(
            "model %s failed to load: %s", model.name, loading.exception(), exc_info=loading.exception()
        )
        server.should_exit = True
        await serving
        raise SystemExit(1)
    if serving.done():
        logger.error("the server stopped before model %s was loaded", model.name)
        raise SystemExit(1)
    logger.info("model %s is loaded and ready", model.name)
    await serving


async def _load_in_background(model: BaseKServeModel) -> None:
    """``model.load()`` on a daemon thread (in a copy of this context, as `asyncio.to_thread` runs it).

    Not `asyncio.to_thread`: at exit its executor waits for its threads, so a SIGTERM during a load
    that hangs (a stalled download) would not stop the process.
    """
    loop = asyncio.get_running_loop()
    loaded: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if loaded.done():  # cancelled: the server stopped first
            return
        if error is None:
            loaded.set_result(None)
        else:
            loaded.set_exception(error)

    def load() -> None:
        error = None
        try:
            model.load()
        except BaseException as exception:  # the event loop raises it, as with asyncio.to_thread
            error = exception
        with contextlib.suppress(RuntimeError):  # the loop is closed: the process is stopping
            loop.call_soon_threadsafe(settle, error)

    context = contextvars.copy_context()
    threading.Thread(target=context.run, args=(load,), name=f"load-{model.name}", daemon=True).start()
    await loaded


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}"
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"


# --- the command line the predictor and the transformer share ---------------------------------


def server_parser(prog: str, description: str, model_name: str) -> argparse.ArgumentParser:
    """KServe's model-server arguments (``--model_name``, ``--http_port``, ``--predictor_host``, …) plus
    those every server here takes: ``--host`` and the request limits (see `serve_from_args`)."""
    parser = argparse.ArgumentParser(
        prog=prog, parents=[model_server.parser], description=description,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )  # fmt: skip
    parser.set_defaults(model_name=model_name)
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    add("--max-request-bytes", type=int, default=DEFAULT_MAX_REQUEST_BYTES, help="larger bodies get 413")
    add("--max-pixels", type=int, help="largest width × height of a photo; unset: $CUTOUT_MAX_PIXELS or 40 M")
    add("--max-batch", type=int, default=DEFAULT_MAX_BATCH, help="most photos per request")
    return parser


def decode_limits(args: argparse.Namespace) -> DecodeLimits:
    """The per-request photo limits that `server_parser`'s arguments ask for."""
    return DecodeLimits(max_pixels=args.max_pixels, max_batch=args.max_batch)


def serve_from_args(model: BaseKServeModel, args: argparse.Namespace) -> None:
    """`serve_model` on the host, port, request limit and logging that `server_parser`'s arguments name."""
    serve_model(model, args.host, args.http_port, ServerLimits(max_request_bytes=args.max_request_bytes),
                configure_logging=args.configure_logging, log_config_file=args.log_config_file)  # fmt: skip
