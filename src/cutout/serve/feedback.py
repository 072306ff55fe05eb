"""Feedback routing: confident predictions become training pairs, doubtful ones wait for a person.

The store's layout is `cutout.data.feedback_store`'s; this module writes and reads it for serving.

Writes run on one background thread behind a bounded queue (`FeedbackRouter`): a slow or failing store
never slows or fails a response. A full queue drops the item, and failed writes are logged; both are
counted, in Prometheus metrics and in `FeedbackRouter.stats`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime

import numpy as np
from PIL import Image
from prometheus_client import Counter, Gauge, Histogram

from cutout.data.feedback_store import (
    AUTO,
    ITEM_FILE,
    ITEM_ID_PATTERN,
    check_item_id,
    pending_root,
    pending_uri,
    record_files,
    record_uri,
    store_uri,
)
from cutout.data.io import encode_image
from cutout.data.manifest import MANIFEST_NAME, SOURCE_AUTO
from cutout.platform import storage

logger = logging.getLogger(__name__)

RETRAIN, REVIEW = "retrain", "review"  # where a routed item goes
DEFAULT_QUEUE_SIZE = 64
SOURCE = SOURCE_AUTO  # the manifest's `source` of auto-accepted pairs
# Pillow's format names → file extensions; other formats keep their lower-cased name.
_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp", "TIFF": "tif", "BMP": "bmp", "GIF": "gif"}

# Module-level: Prometheus refuses a second metric of the same name in one process.
SCORES = Histogram("cutout_feedback_score", "Quality score of routed predictions",
                   buckets=[i / 20 for i in range(1, 21)])  # fmt: skip
ROUTED = Counter("cutout_feedback_routed_total", "Items queued for a destination", ["destination"])
WRITTEN = Counter("cutout_feedback_written_total", "Items written to a destination", ["destination"])
WRITE_FAILURES = Counter("cutout_feedback_write_failures_total", "Items whose write failed", ["destination"])
DROPPED = Counter("cutout_feedback_dropped_total", "Items dropped because the write queue was full")
WRITE_SECONDS = Histogram("cutout_feedback_write_seconds", "Time to write one item", ["destination"])
QUEUE_DEPTH = Gauge("cutout_feedback_queue_depth", "Items waiting to be written")


def new_item_id(now: float | None = None) -> str:
    """A unique, time-sortable item id such as ``20250102T030405Z-1a2b3c4d5e6f``."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    return f"{stamp}-{uuid.uuid4().hex[:12]}"


def photo_extension(image_format: str) -> str:
    """The file extension for a photo in Pillow's `image_format` (``"JPEG"`` → ``"jpg"``)."""
    name = image_format.upper()
    return _EXTENSIONS.get(name, name.lower() or "png")


@dataclass(frozen=True)
class FeedbackItem:
    """One prediction to route.

    Attributes:
        photo: the photo's bytes as received, or its RGB pixels (H×W×3 uint8; stored as PNG).
        photo_format: Pillow's name of the bytes' format (``"JPEG"``, ``"PNG"``, …).
        mask: the predicted mask as PNG bytes or an H×W uint8 array, at the photo's upright size.
        width: the photo's upright width.
        height: its upright height.
        score: the mask's quality score in [0, 1].
        threshold: the score at and above which the pair is accepted for retraining.
        model_name: the model that predicted the mask.
        model_version: its version.
        request_id: the request's own id (for tracing), if it had one.
        item_id: the id the stores use; generated, so clients cannot pick file names.
        created: when the prediction was made (Unix seconds).
    """

    photo: bytes | np.ndarray
    photo_format: str
    mask: bytes | np.ndarray
    width: int
    height: int
    score: float
    threshold: float
    model_name: str
    model_version: str
    request_id: str = ""
    item_id: str = field(default_factory=new_item_id)
    created: float = field(default_factory=time.time)

    @property
    def destination(self) -> str:
        """`RETRAIN` when the score reaches the threshold, else `REVIEW`."""
        return RETRAIN if self.score >= self.threshold else REVIEW

    def metadata(self) -> dict:
        """The facts about the prediction that the stores keep beside the files."""
        return {
            "id": self.item_id, "request_id": self.request_id, "width": self.width, "height": self.height,
            "score": round(float(self.score), 6), "threshold": float(self.threshold),
            "model_name": self.model_name, "model_version": str(self.model_version),
            "created": datetime.fromtimestamp(self.created, UTC).isoformat(timespec="milliseconds"),
        }  # fmt: skip


def _encoded_photo(item: FeedbackItem) -> tuple[bytes, str]:
    if isinstance(item.photo, np.ndarray):
        return encode_image(Image.fromarray(item.photo, "RGB"), "PNG", compress_level=1), "png"
    return bytes(item.photo), photo_extension(item.photo_format)


def _encoded_mask(item: FeedbackItem) -> bytes:
    if isinstance(item.mask, np.ndarray):
        return encode_image(Image.fromarray(item.mask.astype(np.uint8), "L"), "PNG", compress_level=1)
    return bytes(item.mask)


# --- the retraining store ---------------------------------------------------------------------


def write_pair(store: str, item_id: str, photo: bytes, photo_ext: str, mask_png: bytes, record: dict) -> dict:
    """Write one pair into a record-file dataset store: photo, mask, then its record.

    The review page writes corrected pairs the same way. Returns the record as written, with the
    dataset layout's ``id``, ``image``, ``mask`` and ``checksum`` fields.
    """
    check_item_id(item_id)
    record = {**record, "id": item_id, "image": f"images/{item_id}.{photo_ext}",
              "mask": f"masks/{item_id}.png", "checksum": hashlib.sha256(photo).hexdigest()}  # fmt: skip
    storage.write_bytes(storage.join(store, record["image"]), photo)
    storage.write_bytes(storage.join(store, record["mask"]), mask_png)
    # Last: a pair exists for readers once its record does.
    storage.write_bytes(record_uri(store, item_id), json.dumps(record).encode())
    return record


def merge_records(store: str) -> int:
    """Write ``<store>/manifest.jsonl`` from the store's record files, in id order; return the count.

    The manifest is a snapshot: pairs written later join it at the next merge. It is spooled to a
    local file (memory stays flat) and then written in one atomic step.
    """
    records = record_files(store)
    with tempfile.TemporaryDirectory(prefix="cutout-merge-") as folder:
        spool = os.path.join(folder, MANIFEST_NAME)
        with open(spool, "w", encoding="utf-8") as manifest:
            for uri in records:
                manifest.write(json.dumps(json.loads(storage.read_bytes(uri))) + "\n")
        storage.copy(spool, storage.join(store, MANIFEST_NAME))
    return len(records)


# --- the review queue ---------------------------------------------------------------------------


def write_review_item(feedback_uri: str, item_id: str, photo: bytes, photo_ext: str, mask_png: bytes,
                      metadata: dict) -> None:  # fmt: skip
    """Queue one item for review: photo and mask first, ``item.json`` (naming both) last."""
    folder = pending_uri(feedback_uri, item_id)
    item = {**metadata, "id": item_id, "photo": f"photo.{photo_ext}", "mask": "mask.png"}
    storage.write_bytes(storage.join(folder, item["photo"]), photo)
    storage.write_bytes(storage.join(folder, item["mask"]), mask_png)
    storage.write_bytes(storage.join(folder, ITEM_FILE), json.dumps(item).encode())


@dataclass(frozen=True)
class PendingItem:
    """An item of the review queue: its ``item.json`` and the bytes of its photo and mask."""

    meta: dict
    photo: bytes
    mask: bytes

    @property
    def id(self) -> str:
        return self.meta["id"]


def list_pending(feedback_uri: str) -> list[dict]:
    """The ``item.json`` of every complete pending item, lowest score first.

    Items without ``item.json`` are still being written and are left out; so is an item whose
    ``item.json`` cannot be read (logged), so that one damaged item does not block the whole queue.
    """
    root = pending_root(feedback_uri)
    items = []
    for uri in storage.list_files(root, suffixes=(f"/{ITEM_FILE}",)):
        relative = uri[len(root) :].strip("/").split("/")
        if len(relative) != 2 or not ITEM_ID_PATTERN.fullmatch(relative[0]):
            continue
        try:
            item = json.loads(storage.read_bytes(uri))
        except (OSError, ValueError) as error:
            logger.warning(
                "skipping review item %s: its %s is unreadable (%s)", relative[0], ITEM_FILE, error
            )
            continue
        if isinstance(item, dict) and item.get("id") == relative[0]:
            items.append(item)
        else:
            logger.warning("skipping review item %s: its %s does not describe it", relative[0], ITEM_FILE)
    return sorted(items, key=lambda item: (item.get("score", 0.0), item["id"]))


def load_pending(feedback_uri: str, item_id: str) -> PendingItem:
    """One pending item with its files; FileNotFoundError if it is not (or not yet) in the queue."""
    folder = pending_uri(feedback_uri, item_id)
    meta = json.loads(storage.read_bytes(storage.join(folder, ITEM_FILE)))
    return PendingItem(meta, storage.read_bytes(storage.join(folder, meta["photo"])),
                       storage.read_bytes(storage.join(folder, meta["mask"])))  # fmt: skip


# --- routing off the request path ---------------------------------------------------------------


def route_item(feedback_uri: str, item: FeedbackItem) -> str:
    """Write one item where its score sends it, now, on this thread; return the destination."""
    photo, ext = _encoded_photo(item)
    mask = _encoded_mask(item)
    if item.destination == RETRAIN:
        write_pair(store_uri(feedback_uri, AUTO), item.item_id, photo, ext, mask,
                   {"source": SOURCE, **item.metadata()})  # fmt: skip
    else:
        write_review_item(feedback_uri, item.item_id, photo, ext, mask, item.metadata())
    return item.destination


@dataclass
class RouterStats:
    """What a router did, counted per instance (the Prometheus metrics are per process)."""

    queued: int = 0
    written: dict[str, int] = field(default_factory=lambda: {RETRAIN: 0, REVIEW: 0})
    failed: int = 0
    dropped: int = 0


class FeedbackRouter:
    """Routes items on a background thread; `submit` never blocks, never raises.

    Args:
        feedback_uri: the feedback root (local folder or ``s3://bucket/prefix``).
        queue_size: items that may wait; more are dropped (and counted) rather than slow a response.
    """

    def __init__(self, feedback_uri: str, queue_size: int = DEFAULT_QUEUE_SIZE):
        self.feedback_uri = feedback_uri
        self.stats = RouterStats()
        self._queue: queue.Queue[FeedbackItem] = queue.Queue(maxsize=queue_size)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cutout-feedback-writer", daemon=True)
        self._thread.start()

    def submit(self, item: FeedbackItem) -> bool:
        """Queue `item` for writing; False (and counted as dropped) if the queue is full or closed."""
        SCORES.observe(item.score)
        try:
            if self._stop.is_set():
                raise queue.Full
            self._queue.put_nowait(item)
        except queue.Full:
            DROPPED.inc()
            with self._lock:
                self.stats.dropped += 1
            logger.warning("feedback queue full: dropped item %s (%s)", item.item_id, item.destination)
            return False
        QUEUE_DEPTH.inc()
        ROUTED.labels(item.destination).inc()
        with self._lock:
            self.stats.queued += 1
        return True

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued item is written or failed; False if `timeout` passed first."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() >= deadline or not self._thread.is_alive():
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking items, write those already queued (up to `timeout`), stop the thread."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            try:
                item = self._queue.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                self._write(item)
            finally:
                QUEUE_DEPTH.dec()
                self._queue.task_done()

    def _write(self, item: FeedbackItem) -> None:
        destination = item.destination
        start = time.perf_counter()
        try:
            route_item(self.feedback_uri, item)
        except Exception as error:  # any store failure: count and log it, the thread keeps going
            WRITE_FAILURES.labels(destination).inc()
            with self._lock:
                self.stats.failed += 1
            logger.warning("feedback write of %s to %s failed: %s", item.item_id, destination, error)
            return
        WRITE_SECONDS.labels(destination).observe(time.perf_counter() - start)
        WRITTEN.labels(destination).inc()
        with self._lock:
            self.stats.written[destination] += 1
