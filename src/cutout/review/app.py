"""The review server: a JSON API under ``/api/items`` and the correction page, in one FastAPI app.

Safety rules, all enforced here: the API needs ``Authorization: Bearer <token>`` whenever a token is
set, and `check_binding` refuses to serve beyond 127.0.0.1 without one; item ids are checked against
`ITEM_ID_PATTERN` before they reach the store; request bodies are capped (413); uploaded masks go
through the safe image decoding. Bad requests get a 4xx whose JSON says what is wrong under ``error``.
"""

from __future__ import annotations

import hmac
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

from fastapi import Depends, FastAPI, Header, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, Counter, generate_latest
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from cutout import __version__
from cutout.data.feedback_store import ITEM_ID_PATTERN
from cutout.review.claims import DEFAULT_CLAIM_SECONDS
from cutout.review.middleware import BodyLimit, SecurityHeaders
from cutout.review.queue import BadMask, ItemConflict, ItemNotFound, ReviewError, ReviewQueue

STATIC = Path(__file__).parent / "static"
DEFAULT_MAX_BODY_BYTES = 16 * 1024 * 1024  # a 40-Mpixel 8-bit mask PNG stays well below this
DEFAULT_TOKEN_ENV = "CUTOUT_REVIEW_TOKEN"
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
REVIEWER_PATTERN = re.compile(r"^[\w.@ -]{1,64}$")
_MEDIA_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
                "tif": "image/tiff", "bmp": "image/bmp", "gif": "image/gif"}  # fmt: skip
_MASK_BODY = {"required": True, "description": "The corrected mask: an 8-bit PNG (or any image the safe "
              "decoder reads) of the photo's size, white = product.",
              "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}  # fmt: skip

ACTIONS = Counter("cutout_review_actions_total", "Review actions done", ["action"])
REFUSED = Counter("cutout_review_refused_total", "Review requests refused", ["status"])

ItemId = Annotated[str, PathParam(description="The item's id: 1-128 letters, digits, '-' or '_'.")]
Reviewer = Annotated[str, Header(alias="X-Reviewer", description="Who is reviewing (1-64 characters).")]


class ItemSummary(BaseModel):
    """One pending item in the list."""

    id: str
    score: float | None = None
    threshold: float | None = None
    width: int | None = None
    height: int | None = None
    created: str | None = None
    model_name: str | None = None
    model_version: str | None = None
    claimed_by: str | None = Field(None, description="The reviewer holding the item now, if any.")
    claim_seconds_left: int | None = None


class ItemList(BaseModel):
    items: list[ItemSummary] = Field(description="Pending items, lowest score first.")
    remaining: int = Field(description="How many items are pending in all.")


class ClaimInfo(BaseModel):
    reviewer: str
    seconds_left: int
    yours: bool = Field(description="Whether the reviewer who asked holds the claim.")


class ItemDetail(ItemSummary):
    version: str = Field(description="Send it back with an action; it changes when the item does.")
    claim: ClaimInfo
    photo_url: str
    mask_url: str


class AcceptRequest(BaseModel):
    version: str = Field(min_length=1, max_length=64)


class RejectRequest(BaseModel):
    version: str = Field(min_length=1, max_length=64)
    reason: str = Field(min_length=1, max_length=500, description="Why, e.g. 'not a product photo'.")


class Decision(BaseModel):
    id: str
    action: str
    record: dict = Field(description="The manifest record or rejection written to the store.")


def check_binding(host: str, token: str | None) -> None:
    """Refuse to listen beyond the local machine without a token (ValueError saying what to do)."""
    if host not in LOCAL_HOSTS and not token:
        raise ValueError(f"refusing to serve the review page on {host} without a token: set one in "
                         f"${DEFAULT_TOKEN_ENV} (or the variable --token-env names), "
                         "or bind 127.0.0.1")  # fmt: skip


def create_app(feedback_uri: str, *, token: str | None = None, claim_seconds: float = DEFAULT_CLAIM_SECONDS,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
               clock: Callable[[], float] = time.time) -> FastAPI:  # fmt: skip
    """Build the review app over one feedback store.

    Args:
        feedback_uri: the feedback root (local folder or ``s3://bucket/prefix``).
        token: the bearer token the API requires; None for none (127.0.0.1 only, see `check_binding`).
        claim_seconds: how long opening an item reserves it for its reviewer.
        max_body_bytes: the largest request body accepted (larger ones get 413).
        clock: the claims' time source (tests pass a fake one).
    """
    queue = ReviewQueue(feedback_uri, claim_seconds, clock)
    app = FastAPI(title="cutout review", version=__version__, docs_url=None, redoc_url=None,
                  description="Accept, reject or correct the masks the model was unsure of.")  # fmt: skip
    app.state.queue = queue
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)
    app.add_middleware(SecurityHeaders)
    _add_error_handlers(app)
    auth = [Depends(_token_check(token))]
    _add_item_routes(app, queue, auth)
    _add_action_routes(app, queue, auth)
    _add_page_routes(app)
    return app


def serve_review(feedback_uri: str, host: str = "127.0.0.1", port: int = 8000, token: str | None = None,
                 claim_seconds: float = DEFAULT_CLAIM_SECONDS) -> None:  # fmt: skip
    """Run the review server with uvicorn until interrupted (ValueError for an unsafe binding)."""
    import uvicorn

    check_binding(host, token)
    app = create_app(feedback_uri, token=token, claim_seconds=claim_seconds)
    app.state.queue.sweep()  # leftovers of actions interrupted before the last restart
    uvicorn.run(app, host=host, port=port, log_level="info")


# --- routes -------------------------------------------------------------------------------------------


def _add_item_routes(app: FastAPI, queue: ReviewQueue, auth: list) -> None:
    @app.get("/api/items", response_model=ItemList, dependencies=auth, tags=["items"])
    def list_items(limit: Annotated[int, Query(ge=1, le=1000)] = 200) -> ItemList:
        """Pending items, lowest score first, and how many are left."""
        items = queue.items()
        return ItemList(items=[ItemSummary(**item) for item in items[:limit]], remaining=len(items))

    @app.get("/api/items/{item_id}", response_model=ItemDetail, dependencies=auth, tags=["items"])
    def open_item(item_id: ItemId, reviewer: Reviewer, response: Response) -> ItemDetail:
        """Open an item: claims it for the reviewer, unless another holds it (see ``claim.yours``)."""
        opened = queue.open(_checked_id(item_id), _checked_reviewer(reviewer))
        response.headers["ETag"] = f'"{opened.version}"'
        now = queue.claims.clock()
        claim = ClaimInfo(reviewer=opened.claim.reviewer, seconds_left=round(opened.claim.remaining(now)),
                          yours=opened.claim.reviewer == reviewer)  # fmt: skip
        links = {"photo_url": f"api/items/{item_id}/photo", "mask_url": f"api/items/{item_id}/mask"}
        return ItemDetail(**opened.meta, **links, version=opened.version, claim=claim,
                          claimed_by=claim.reviewer, claim_seconds_left=claim.seconds_left)  # fmt: skip

    @app.get("/api/items/{item_id}/photo", dependencies=auth, tags=["items"],
             responses={200: {"content": {"image/*": {}}}})  # fmt: skip
    def get_photo(item_id: ItemId) -> Response:
        """The photo as the client sent it."""
        data, extension = queue.photo(_checked_id(item_id))
        return Response(data, media_type=_MEDIA_TYPES.get(extension, "application/octet-stream"))

    @app.get("/api/items/{item_id}/mask", dependencies=auth, tags=["items"],
             responses={200: {"content": {"image/png": {}}}})  # fmt: skip
    def get_mask(item_id: ItemId) -> Response:
        """The predicted mask: 8-bit PNG, the photo's size, 255 for product."""
        return Response(queue.mask(_checked_id(item_id)), media_type="image/png")


def _add_action_routes(app: FastAPI, queue: ReviewQueue, auth: list) -> None:
    conflicts = {409: {"description": "Claimed by another reviewer, changed since opened, or decided."}}

    @app.post("/api/items/{item_id}/accept", response_model=Decision, dependencies=auth, tags=["actions"],
              responses=conflicts)  # fmt: skip
    def accept(item_id: ItemId, body: AcceptRequest, reviewer: Reviewer) -> Decision:
        """The predicted mask is right: the pair goes to ``retrain/corrected`` unchanged."""
        record = queue.accept(_checked_id(item_id), _checked_reviewer(reviewer), body.version)
        return _decided(item_id, "accept", record)

    @app.post("/api/items/{item_id}/reject", response_model=Decision, dependencies=auth, tags=["actions"],
              responses=conflicts)  # fmt: skip
    def reject(item_id: ItemId, body: RejectRequest, reviewer: Reviewer) -> Decision:
        """Not usable for training: the item moves to ``review/rejected/<id>/`` with the reason."""
        record = queue.reject(_checked_id(item_id), _checked_reviewer(reviewer), body.version, body.reason)
        return _decided(item_id, "reject", record)

    @app.post("/api/items/{item_id}/save", response_model=Decision, dependencies=auth, tags=["actions"],
              responses={**conflicts, 413: {"description": "Body too large."},
                         422: {"description": "Not a readable image of the photo's size."}},
              openapi_extra={"requestBody": _MASK_BODY})  # fmt: skip
    async def save(item_id: ItemId, request: Request, reviewer: Reviewer,
                   version: Annotated[str, Query(min_length=1, max_length=64)]) -> Decision:  # fmt: skip
        """Store the corrected mask with the photo in ``retrain/corrected``; the item leaves the queue."""
        body = await request.body()  # capped by BodyLimit
        checked = _checked_id(item_id), _checked_reviewer(reviewer)
        # async only to read the body as it streams in; the store and the decoder block, so off the loop.
        record = await run_in_threadpool(queue.save, *checked, version, body)
        return _decided(item_id, "save", record)

    @app.post("/api/items/{item_id}/release", status_code=204, dependencies=auth, tags=["actions"])
    def release(item_id: ItemId, reviewer: Reviewer) -> Response:
        """Give up one's claim on an item without deciding it."""
        queue.release(_checked_id(item_id), _checked_reviewer(reviewer))
        return Response(status_code=204)


def _add_page_routes(app: FastAPI) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/healthz", tags=["service"])
    def health() -> dict:
        """Liveness: the server answers."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["service"])
    def metrics() -> Response:
        """Prometheus metrics of this process."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    app.mount("/static", StaticFiles(directory=STATIC), name="static")


def _decided(item_id: str, action: str, record: dict) -> Decision:
    ACTIONS.labels(action).inc()
    return Decision(id=item_id, action=action, record=record)


def _checked_id(item_id: str) -> str:
    if not ITEM_ID_PATTERN.fullmatch(item_id):
        raise HTTPException(400, f"invalid item id {item_id[:140]!r}: use 1-128 letters, digits, '-' or '_'")
    return item_id


def _checked_reviewer(reviewer: str) -> str:
    reviewer = reviewer.strip()
    if not REVIEWER_PATTERN.fullmatch(reviewer):
        raise HTTPException(400, "X-Reviewer must be 1-64 letters, digits, spaces or . @ _ -")
    return reviewer


def _token_check(token: str | None) -> Callable[..., None]:
    def require_token(authorization: Annotated[str | None, Header(include_in_schema=False)] = None) -> None:
        if token is None:
            return
        scheme, _, given = (authorization or "").partition(" ")
        # compare_digest: the time taken does not tell how much of a guess was right.
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "a valid token is required: send 'Authorization: Bearer <token>'",
                                headers={"WWW-Authenticate": "Bearer"})  # fmt: skip

    return require_token


# --- errors ------------------------------------------------------------------------------------------


def _add_error_handlers(app: FastAPI) -> None:
    statuses: list[tuple[type[Exception], int]] = [(ItemNotFound, 404), (ItemConflict, 409), (BadMask, 422),
                                                   (ReviewError, 400), (ValueError, 400)]  # fmt: skip
    for kind, status in statuses:
        app.add_exception_handler(kind, _error_handler(status))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return _error(error.status_code, str(error.detail), headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()[:5])
        return _error(422, f"invalid request: {problems}")


def _error_handler(status: int) -> Callable:
    async def handle(request: Request, error: Exception) -> JSONResponse:
        message = getattr(error, "message", None) or str(error)
        return _error(status, message, reason=getattr(error, "reason", None))

    return handle


def _error(status: int, message: str, reason: str | None = None, headers: dict | None = None) -> JSONResponse:
    REFUSED.labels(str(status)).inc()
    body = {"error": message, **({"reason": reason} if reason else {})}
    return JSONResponse(body, status_code=status, headers=headers)
