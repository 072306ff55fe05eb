"""ASGI middleware of the review server: a cap on request bodies, and security headers on every answer."""

from __future__ import annotations

from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

# The page loads nothing from elsewhere: images arrive as blobs fetched from this server.
_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "frame-ancestors 'none'"
)


class BodyLimit:
    """Refuse request bodies over `max_bytes` with 413: by Content-Length up front, or while streaming."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            await _too_large(self.max_bytes)(scope, receive, send)
            return
        received, started = 0, False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:  # a chunked body without Content-Length
                raise _BodyTooLarge
            return message

        async def watched(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except _BodyTooLarge:
            if not started:
                await _too_large(self.max_bytes)(scope, receive, send)


class _BodyTooLarge(Exception):
    pass


def _too_large(max_bytes: int) -> JSONResponse:
    return JSONResponse({"error": f"the request body is larger than {max_bytes:,} bytes"}, status_code=413)


class SecurityHeaders:
    """Headers on every response: no MIME sniffing, no framing, no referrer, and the page's CSP."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] += [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                                       (b"referrer-policy", b"no-referrer"), (b"cache-control", b"no-store"),
                                       (b"content-security-policy", _CSP.encode())]  # fmt: skip
            await send(message)

        await self.app(scope, receive, send if scope["type"] != "http" else with_headers)
