"""The request guard in front of KServe's routes: body size, content type, empty bodies, metrics, errors.

Bad requests get a 4xx with a message, never a 5xx: a body over the size limit 413 (checked from
``Content-Length`` and again while reading, for chunked bodies), a content type other than JSON 415, an
empty body 400, invalid JSON or a v2 body off the schema 400 (FastAPI would say 422). The model
repository extension (``/v2/repository/…``) answers 403. Every request, refused ones too, is counted in
``cutout_http_requests_total{route,code}`` and ``cutout_http_request_duration_seconds{route}``.
`install_guard` puts all of it on an app; `cutout.serve.server` does so on KServe's.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from kserve.constants.constants import INFERENCE_CONTENT_LENGTH_HEADER
from kserve.errors import InvalidInput, ModelNotReady, ServerNotReady
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException

logger = logging.getLogger(__name__)

DEFAULT_MAX_REQUEST_BYTES = 20 * 2**20
JSON_TYPES = frozenset({"application/json", "application/octet-stream"})  # and any */*+json
_ROUTES = (
    ("v1_predict", re.compile(r"^/v1/models/[^/]+:(predict|explain)$")),
    ("v2_infer", re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$")),
    ("repository", re.compile(r"^/v2/repository/")),
    (
        "health",
        re.compile(r"^(/|/v2/health/\w+|/v2/models/[^/]+(/versions/[^/]+)?/ready|/v1/models/[^/:]+)$"),
    ),
    ("metrics", re.compile(r"^/metrics$")),
)
_INFERENCE_ROUTES = frozenset({"v1_predict", "v2_infer"})

REQUESTS = Counter("cutout_http_requests_total", "HTTP requests by route and status code", ["route", "code"])
LATENCY = Histogram(
    "cutout_http_request_duration_seconds", "HTTP request latency, refused requests included", ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)  # fmt: skip

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class ServerLimits:
    """What the server refuses before a model sees the request.

    Attributes:
        max_request_bytes: Largest request body; larger ones get 413.
    """

    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES

    def __post_init__(self) -> None:
        if self.max_request_bytes <= 0:
            raise ValueError(f"max_request_bytes must be positive, got {self.max_request_bytes}")


DEFAULT_SERVER_LIMITS = ServerLimits()


def install_guard(app: FastAPI, limits: ServerLimits) -> None:
    """Put the guard in front of `app`'s routes and answer errors as ``{"error": ...}`` with a 4xx or 503.

    Call it after KServe registered its own handlers (``RESTServer.create_application``): ours replace them.
    """
    app.add_exception_handler(InvalidInput, _invalid_input_handler)
    app.add_exception_handler(ModelNotReady, _not_ready_handler)
    app.add_exception_handler(ServerNotReady, _not_ready_handler)
    app.add_exception_handler(RequestValidationError, _request_validation_handler)
    app.add_exception_handler(HTTPException, _http_exception_handler)
    app.add_middleware(RequestGuard, limits=limits)


class RequestGuard:
    """ASGI middleware: body size limit, content type, empty bodies, the repository extension, metrics."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], limits: ServerLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_name(scope["path"])
        status = [500]  # what an exception escaping to Starlette's error middleware becomes

        async def recording_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        started = time.perf_counter()
        try:
            await self._guarded(scope, receive, recording_send, route)
        finally:
            REQUESTS.labels(route, str(status[0])).inc()
            LATENCY.labels(route).observe(time.perf_counter() - started)

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, route: str) -> None:
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        refusal = self._refusal(scope, headers, route)
        if refusal is not None:
            await _send_error(send, *refusal)
            return
        if scope["method"] in ("POST", "PUT", "PATCH"):
            body = await self._read_body(receive)
            if body is None:  # the client went away
                return
            if len(body) > self.limits.max_request_bytes:
                await _send_error(send, 413, self._too_large(len(body)))
                return
            if route in _INFERENCE_ROUTES and not body.strip():
                await _send_error(send, 400, "the request body is empty: send a JSON inference request")
                return
            receive = _replay(body, receive)
            if route in _INFERENCE_ROUTES and "content-type" not in headers:
                scope = _with_content_type(scope, headers)
        await self.app(scope, receive, send)

    def _refusal(self, scope: Scope, headers: dict[str, str], route: str) -> tuple[int, str] | None:
        """A status and message to refuse the request with before reading its body, or None."""
        if route == "repository":
            return (
                403,
                "the model repository extension is disabled: this server serves one model, loaded at start",
            )
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.limits.max_request_bytes:
            return 413, self._too_large(int(length))
        content_type = headers.get("content-type")
        if route in _INFERENCE_ROUTES and content_type is not None and not is_json_type(content_type):
            return 415, (
                f"unsupported content type {content_type[:80]!r}: send JSON (application/json) "
                "with the photos as base64"
            )
        return None

    def _too_large(self, size: int) -> str:
        return (
            f"the request body is {size:,} bytes, more than this server's limit of "
            f"{self.limits.max_request_bytes:,} (--max-request-bytes)"
        )

    async def _read_body(self, receive: Receive) -> bytes | None:
        """The whole body, or as much as shows it is over the limit; None if the client disconnected."""
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            if size > self.limits.max_request_bytes or not message.get("more_body", False):
                return b"".join(chunks)


def _with_content_type(scope: Scope, headers: dict[str, str]) -> Scope:
    """Name the content type a client left out (tritonclient does), so FastAPI parses the body right.

    JSON followed by binary tensors (the header that gives the JSON's length is there) is what
    KServe reads as octet-stream; anything else is JSON. Without this FastAPI hands an untyped JSON
    body to KServe as raw bytes, and the client hears about a missing binary-data header.
    """
    binary = INFERENCE_CONTENT_LENGTH_HEADER.lower() in headers
    content_type = b"application/octet-stream" if binary else b"application/json"
    return dict(scope, headers=[*scope["headers"], (b"content-type", content_type)])


def route_name(path: str) -> str:
    """A small, fixed set of route labels for metrics (model names stay out of label values)."""
    for name, pattern in _ROUTES:
        if pattern.match(path):
            return name
    return "other"


def is_json_type(content_type: str) -> bool:
    """Whether KServe decodes this content type as JSON (parameters such as charset are ignored)."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type in JSON_TYPES or media_type.endswith("+json")


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body already read, then defers to the real one."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, status: int, message: str) -> None:
    body = orjson.dumps({"error": message})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 413:
        headers.append((b"connection", b"close"))  # the rest of the body was not read
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _invalid_input_handler(_: Request, error: InvalidInput) -> JSONResponse:
    # A bad request is routine: one log line, not KServe's stack trace per request.
    logger.info("bad request: %s", error)
    return JSONResponse(status_code=400, content={"error": str(error)})


async def _not_ready_handler(_: Request, error: Exception) -> JSONResponse:
    # Probes ask every few seconds while the model loads: KServe's handler logs a stack trace each time.
    logger.debug("not ready: %s", error)
    return JSONResponse(status_code=503, content={"error": str(error)})


async def _http_exception_handler(_: Request, error: HTTPException) -> JSONResponse:
    # FastAPI's own refusals (a body it can't parse, 404, 405) in KServe's {"error": ...} shape.
    message = str(error.detail)
    if message == "There was an error parsing the body":  # FastAPI's words for bytes that are not UTF-8
        message = "the request body is not valid JSON: it can't be read as UTF-8 text"
    return JSONResponse(status_code=error.status_code, content={"error": message}, headers=error.headers)


async def _request_validation_handler(_: Request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 for a v2 body that is not JSON or not an inference request, as a 400 with a message."""
    problems = []
    # KServe's v2 body is Union[InferenceRequest, bytes]: the bytes branch's complaint says nothing.
    errors = [item for item in error.errors() if tuple(item.get("loc", ()))[1:2] != ("bytes",)]
    for item in errors[:5]:
        where = ".".join(
            str(part) for part in item.get("loc", ()) if part not in ("body", "InferenceRequest")
        )
        if item.get("type") == "json_invalid":
            problems.append(
                f"the request body is not valid JSON ({item.get('ctx', {}).get('error', 'bad syntax')})"
            )
        else:
            problems.append(f"{where or 'body'}: {item.get('msg', 'invalid')}")
    message = "; ".join(problems) or "the request does not match the v2 inference request schema"
    logger.info("bad request: %s", message)
    return JSONResponse(status_code=400, content={"error": message})
