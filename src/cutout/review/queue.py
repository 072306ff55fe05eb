"""The review queue's actions: open an item (claiming it), accept, reject, or save a corrected mask.

Where items and decisions are kept is `cutout.data.feedback_store`'s layout.

How an item leaves the queue atomically on S3, which has no rename: the decision is written first
(its record or ``item.json`` last), then the pending ``item.json`` is deleted (that one delete is the
moment the item leaves the queue: `list_pending` and `load_pending` see only items that have one), then
its photo and mask. A crash in between leaves either the item still pending (acting again rewrites the
same decision) or files without ``item.json``, which `ReviewQueue.sweep` deletes once their decision
exists. An action repeated after a lost answer (same reviewer, action and version) gets the first
answer again instead of a conflict.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from PIL import Image

from cutout.data.feedback_store import (
    CORRECTED,
    ITEM_FILE,
    ITEM_ID_PATTERN,
    check_item_id,
    pending_root,
    pending_uri,
    record_uri,
    rejected_uri,
    store_uri,
)
from cutout.data.io import ImageError, decode_image, encode_image, image_info, read_header, to_mask_values
from cutout.data.manifest import SOURCE_ACCEPTED, SOURCE_CORRECTED
from cutout.platform import storage
from cutout.review.claims import DEFAULT_CLAIM_SECONDS, Claim, ClaimConflict, Claims
from cutout.serve.feedback import PendingItem, list_pending, write_pair

ACCEPT, REJECT, SAVE = "accept", "reject", "save"
_PAST = {ACCEPT: "accepted", REJECT: "rejected", SAVE: "corrected"}
_ITEM_FILES = ("id", "photo", "mask")  # item.json keys that name the pending files, not facts


class ReviewError(Exception):
    """A refused review action; `message` says why, for the reviewer."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ItemNotFound(ReviewError):
    """No such item: never queued, or its id is malformed."""


class ItemConflict(ReviewError):
    """Claimed by another reviewer, changed since it was opened, or already decided."""


class BadMask(ReviewError):
    """An uploaded mask that is not a readable image of the photo's size; `reason` names the problem."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class OpenedItem:
    """An item as a reviewer opened it: metadata, the version to send back with an action, the claim."""

    meta: dict
    version: str
    claim: Claim


def item_version(item: PendingItem) -> str:
    """A digest of the item's metadata, photo and mask: it changes whenever any of them does."""
    digest = hashlib.sha256(json.dumps(item.meta, sort_keys=True).encode())
    for part in (item.photo, item.mask):
        digest.update(hashlib.sha256(part).digest())
    return digest.hexdigest()[:20]


def decode_mask(data: bytes, width: int, height: int) -> np.ndarray:
    """Decode an uploaded mask through the safe image I/O into 8-bit values of the photo's size.

    Raises:
        BadMask: if it is not a readable image, or not ``width`` × ``height``.
    """
    try:
        header = read_header(data)  # the size from the header first: a mismatch is refused undecoded
        if (header.width, header.height) != (width, height):
            raise BadMask(
                f"the mask is {header.width}×{header.height} but the photo is {width}×{height}", "size"
            )
        _, image = decode_image(data, max_pixels=width * height)
    except ImageError as error:
        raise BadMask(f"the mask is not usable: {error.message}", error.reason) from None
    return np.rint(to_mask_values(image) * 255).astype(np.uint8)


def mask_change(before: np.ndarray, after: np.ndarray) -> dict:
    """What a correction changed: pixels whose side of 50% flipped, and their share of the mask."""
    changed = int(np.count_nonzero((before >= 128) != (after >= 128)))
    return {"changed_pixels": changed, "changed_share": round(changed / max(1, after.size), 6)}


class ReviewQueue:
    """The review actions on one feedback store, with claims and version checks.

    Args:
        feedback_uri: the feedback root (local folder or ``s3://bucket/prefix``).
        claim_seconds: how long opening an item reserves it for its reviewer.
        clock: the time source of claims (tests pass a fake one).
    """

    def __init__(self, feedback_uri: str, claim_seconds: float = DEFAULT_CLAIM_SECONDS,
                 clock: Callable[[], float] = time.time):  # fmt: skip
        self.feedback_uri = feedback_uri
        self.claims = Claims(claim_seconds, clock)
        # One action at a time: a check-then-write on the store must not interleave with another.
        self._lock = threading.Lock()

    # --- reading ---------------------------------------------------------------------------------

    def items(self) -> list[dict]:
        """Pending items' metadata, lowest score first, with ``claimed_by`` and ``claim_seconds_left``."""
        now = self.claims.clock()
        listed = []
        for meta in list_pending(self.feedback_uri):
            claim = self.claims.holder(meta["id"])
            listed.append({**meta, "claimed_by": claim.reviewer if claim else None,
                           "claim_seconds_left": round(claim.remaining(now)) if claim else None})  # fmt: skip
        return listed

    def open(self, item_id: str, reviewer: str) -> OpenedItem:
        """Load an item and claim it for `reviewer` (renewing their claim; another's is left alone)."""
        item = self._load(item_id)
        return OpenedItem(item.meta, item_version(item), self.claims.claim(item_id, reviewer))

    def photo(self, item_id: str) -> tuple[bytes, str]:
        """The pending photo's bytes and file extension."""
        meta = self._meta(item_id)
        return self._read(item_id, meta["photo"]), meta["photo"].rpartition(".")[2].lower()

    def mask(self, item_id: str) -> bytes:
        """The pending (predicted) mask as PNG bytes."""
        return self._read(item_id, self._meta(item_id)["mask"])

    # --- actions ---------------------------------------------------------------------------------

    def accept(self, item_id: str, reviewer: str, version: str) -> dict:
        """The predicted mask is right: store the pair as reviewed, unchanged; return its record."""

        def write(item: PendingItem, review: dict) -> dict:
            record = {**review, "source": SOURCE_ACCEPTED, "changed_pixels": 0, "changed_share": 0.0}
            return self._write_reviewed(item, item.mask, record)

        return self._decide(item_id, reviewer, version, ACCEPT, write)

    def reject(self, item_id: str, reviewer: str, version: str, reason: str) -> dict:
        """Not usable for training: move the item to ``review/rejected/<id>/`` with the reason."""
        reason = reason.strip()
        if not reason:
            raise ReviewError("a rejection needs a reason")

        def write(item: PendingItem, review: dict) -> dict:
            folder = rejected_uri(self.feedback_uri, item.id)
            meta = {**item.meta, **review, "reason": reason}
            storage.write_bytes(storage.join(folder, item.meta["photo"]), item.photo)
            storage.write_bytes(storage.join(folder, item.meta["mask"]), item.mask)
            storage.write_bytes(storage.join(folder, ITEM_FILE), json.dumps(meta).encode())  # last
            return meta

        return self._decide(item_id, reviewer, version, REJECT, write)

    def save(self, item_id: str, reviewer: str, version: str, mask_png: bytes) -> dict:
        """Store the reviewer's mask (decoded safely, the photo's size) with the photo as a corrected pair.

        The record says who, when, and how many pixels changed sides against the predicted mask.
        """

        def write(item: PendingItem, review: dict) -> dict:
            width, height, _ = image_info(item.photo)
            corrected = decode_mask(mask_png, width, height)
            try:
                change = mask_change(decode_mask(item.mask, width, height), corrected)
            except BadMask:  # the queued mask itself is unreadable: the correction is all there is
                change = {"changed_pixels": None, "changed_share": None}
            png = encode_image(Image.fromarray(corrected, "L"), "PNG")
            record = {**review, "source": SOURCE_CORRECTED, **change}
            return self._write_reviewed(item, png, record)

        return self._decide(item_id, reviewer, version, SAVE, write)

    def release(self, item_id: str, reviewer: str) -> None:
        """Give the item back to the queue (the reviewer moved on without deciding)."""
        self.claims.release(check_item_id(item_id), reviewer)

    def sweep(self) -> int:
        """Delete pending files of actions interrupted after their decision was written; return how many."""
        root = pending_root(self.feedback_uri)
        files: dict[str, list[str]] = {}
        for uri in storage.list_files(root):
            files.setdefault(uri[len(root) :].strip("/").split("/")[0], []).append(uri)
        swept = 0
        for item_id, uris in files.items():
            if any(uri.endswith("/" + ITEM_FILE) for uri in uris) or not ITEM_ID_PATTERN.fullmatch(item_id):
                continue
            if self._decision(item_id) is not None:
                for uri in uris:
                    storage.delete(uri)
                self._remove_folder(storage.join(root, item_id))
                swept += len(uris)
        return swept

    # --- how an action runs ------------------------------------------------------------------------

    def _decide(self, item_id: str, reviewer: str, version: str, action: str,
                write: Callable[[PendingItem, dict], dict]) -> dict:  # fmt: skip
        check_item_id(item_id)
        with self._lock:
            try:
                item = self._load(item_id)
            except ItemNotFound:
                return self._repeated(item_id, reviewer, version, action)
            try:
                self.claims.check(item_id, reviewer)
            except ClaimConflict as conflict:
                raise ItemConflict(str(conflict)) from None
            if version != item_version(item):
                raise ItemConflict(
                    f"item {item_id} changed since you opened it: reload it and review it again"
                )
            review = {"reviewer": reviewer, "action": action, "review_version": version,
                      "reviewed_at": datetime.now(UTC).isoformat(timespec="milliseconds")}  # fmt: skip
            decision = write(item, review)
            self._remove_pending(item)
            self.claims.release(item_id)
            return decision

    def _write_reviewed(self, item: PendingItem, mask_png: bytes, record: dict) -> dict:
        facts = {key: value for key, value in item.meta.items() if key not in _ITEM_FILES}
        extension = item.meta["photo"].rpartition(".")[2].lower()
        return write_pair(store_uri(self.feedback_uri, CORRECTED), item.id, item.photo, extension, mask_png,
                          {**facts, **record})  # fmt: skip

    def _remove_pending(self, item: PendingItem) -> None:
        folder = pending_uri(self.feedback_uri, item.id)
        # item.json first: from that delete on, the item is out of the queue for every reader.
        for name in (ITEM_FILE, item.meta["photo"], item.meta["mask"]):
            storage.delete(storage.join(folder, name))
        self._remove_folder(folder)

    def _repeated(self, item_id: str, reviewer: str, version: str, action: str) -> dict:
        """The answer for an item no longer pending: the earlier one if this repeats it, else a conflict."""
        decision = self._decision(item_id)
        if decision is None:
            raise ItemNotFound(f"no item {item_id} in the review queue")
        if (decision.get("reviewer"), decision.get("action"), decision.get("review_version")) == (
            reviewer, action, version,
        ):  # fmt: skip
            self._sweep_item(item_id)
            return decision
        past = _PAST.get(decision.get("action", ""), "reviewed")
        raise ItemConflict(f"item {item_id} was already {past} by {decision.get('reviewer')} "
                           f"at {decision.get('reviewed_at')}")  # fmt: skip

    def _sweep_item(self, item_id: str) -> None:
        # Whatever is left of a decided item under pending: the files of an interrupted action.
        folder = pending_uri(self.feedback_uri, item_id)
        for uri in list(storage.list_files(folder)):
            storage.delete(uri)
        self._remove_folder(folder)

    def _decision(self, item_id: str) -> dict | None:
        """The decision written for an item (corrected/accepted record or rejection), if any."""
        for uri in (record_uri(store_uri(self.feedback_uri, CORRECTED), item_id),
                    storage.join(rejected_uri(self.feedback_uri, item_id), ITEM_FILE)):  # fmt: skip
            with contextlib.suppress(FileNotFoundError):
                return json.loads(storage.read_bytes(uri))
        return None

    def _load(self, item_id: str) -> PendingItem:
        # Not `load_pending`: the file names in item.json are checked before anything is read.
        meta = self._meta(item_id)
        return PendingItem(meta, self._read(item_id, meta["photo"]), self._read(item_id, meta["mask"]))

    def _meta(self, item_id: str) -> dict:
        try:
            meta = json.loads(self._read(item_id, ITEM_FILE))
        except ValueError:
            meta = None
        if not isinstance(meta, dict) or not {"id", "photo", "mask"} <= meta.keys():
            raise ItemNotFound(f"item {item_id} is damaged: its {ITEM_FILE} is not an item's metadata")
        return meta

    def _read(self, item_id: str, name: str) -> bytes:
        # `name` comes from item.json, which the transformer wrote: checked all the same, as a file name.
        if not is_file_name(name):
            raise ItemNotFound(f"item {item_id} names a file that is not in its folder: {name!r}")
        try:
            folder = pending_uri(self.feedback_uri, item_id)
        except ValueError as error:
            raise ItemNotFound(str(error)) from None
        try:
            return storage.read_bytes(storage.join(folder, name))
        except FileNotFoundError:
            raise ItemNotFound(f"no item {item_id} in the review queue") from None

    @staticmethod
    def _remove_folder(folder: str) -> None:
        # S3 has no folders; a local one is removed once empty (a concurrent writer's files keep it).
        if not storage.is_s3(folder):
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def is_file_name(name: object) -> bool:
    """Tell whether `name` is a plain file name (no folder, no traversal) such as ``photo.jpg``."""
    stem, dot, extension = str(name).partition(".")
    return (
        isinstance(name, str) and bool(dot) and bool(ITEM_ID_PATTERN.fullmatch(stem)) and extension.isalnum()
    )
