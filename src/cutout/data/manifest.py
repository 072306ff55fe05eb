"""The dataset layout: `images/<id>.<ext>`, `masks/<id>.png`, `manifest.jsonl`, and `rejects.jsonl`.

Each step writes a new dataset through a `DatasetWriter` and never edits its input. Manifest and rejects
are spooled to local files while the step runs (memory stays flat), then written whole: a reader never
sees half a manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from types import TracebackType

from cutout.platform import storage

# The `source` of pairs whose mask a person drew on the review page, or approved as it was predicted.
SOURCE_CORRECTED = "feedback-corrected"
SOURCE_ACCEPTED = "feedback-accepted"
PERSON_CHECKED_SOURCES = frozenset({SOURCE_CORRECTED, SOURCE_ACCEPTED})
# Pairs whose mask is the serving model's own (auto-accepted, no person involved): fit to train on, never
# to judge a model with, since they agree with the model that made them by construction.
SOURCE_AUTO = "feedback-auto"

# Where a pair comes from (its record's `domain`): evaluation, training and the gate score each apart.
REAL_DOMAIN, SYNTHETIC_DOMAIN, UNLABELLED_DOMAIN = "real", "synthetic", "unlabelled"
FEEDBACK_DOMAIN = "feedback"  # photos that came through serving (the merge step labels them)

MANIFEST_NAME = "manifest.jsonl"
REJECTS_NAME = "rejects.jsonl"


def manifest_uri(dataset: str) -> str:
    """Where a dataset's manifest lives."""
    return storage.join(dataset, MANIFEST_NAME)


def manifest_hash(dataset: str) -> str:
    """The sha256 of a dataset's ``manifest.jsonl``: it names exactly which pairs a model saw."""
    digest = hashlib.sha256()
    with storage.local_copy(manifest_uri(dataset)) as local, open(local, "rb") as manifest:
        for block in iter(lambda: manifest.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_jsonl(uri: str) -> Iterator[dict]:
    """The records of a JSON-lines file, in order; a broken line is an error naming its number."""
    with storage.local_copy(uri) as local, open(local, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{uri}, line {number}: not JSON ({error.msg})") from None


def record_domain(record: dict) -> str:
    """Where a pair comes from: `real` photos, the `synthetic` catalogue, or `unlabelled` (no field)."""
    return str(record.get("domain") or UNLABELLED_DOMAIN)


def read_manifest(dataset: str) -> Iterator[dict]:
    """The records of a dataset's manifest, in file order."""
    return read_jsonl(manifest_uri(dataset))


class DatasetWriter:
    """Writes a dataset: pair files as they come, then `manifest.jsonl` and `rejects.jsonl` at the end.

    Use as a context manager; the manifest and rejects are only written when the block succeeds.
    """

    def __init__(self, out: str):
        self.out = out
        self.kept = 0
        self.rejected = 0
        self._spool = tempfile.TemporaryDirectory(prefix="cutout-dataset-")
        self._manifest = open(os.path.join(self._spool.name, MANIFEST_NAME), "w", encoding="utf-8")  # noqa: SIM115
        self._rejects = open(os.path.join(self._spool.name, REJECTS_NAME), "w", encoding="utf-8")  # noqa: SIM115

    def add_pair(self, record: dict, image: bytes, image_ext: str, mask_png: bytes) -> dict:
        """Write one pair's files and its manifest record (`record` has an `id`; paths are added)."""
        pair_id = record["id"]
        record = {**record, "image": f"images/{pair_id}.{image_ext}", "mask": f"masks/{pair_id}.png"}
        # Not synced one by one: the manifest, written durably at the end, is what vouches for them.
        storage.write_bytes(storage.join(self.out, record["image"]), image, durable=False)
        storage.write_bytes(storage.join(self.out, record["mask"]), mask_png, durable=False)
        self._manifest.write(json.dumps(record) + "\n")
        self.kept += 1
        return record

    def reject(self, record: dict) -> None:
        """Record an input that is not kept; `record` has at least `id` and `reason`."""
        self._rejects.write(json.dumps(record) + "\n")
        self.rejected += 1

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: TracebackType | None) -> None:
        self._manifest.close()
        self._rejects.close()
        try:
            if error is None:
                storage.copy(self._manifest.name, manifest_uri(self.out))
                storage.copy(self._rejects.name, storage.join(self.out, REJECTS_NAME))
        finally:
            self._spool.cleanup()


def copy_pairs(out: str, sources: Iterable[tuple[str, Iterable[dict]]]) -> int:
    """Write a new dataset from chosen records of other datasets, their files copied byte for byte.

    Args:
        out: The new dataset (local or `s3://`).
        sources: (dataset, records of its manifest) pairs; ids must not repeat across them.

    Returns:
        The number of pairs written.
    """
    with DatasetWriter(out) as writer:
        for dataset, records in sources:
            for record in records:
                image = storage.read_bytes(storage.join(dataset, record["image"]))
                mask = storage.read_bytes(storage.join(dataset, record["mask"]))
                fields = {key: value for key, value in record.items() if key not in ("image", "mask")}
                writer.add_pair(fields, image, record["image"].rsplit(".", 1)[-1], mask)
    return writer.kept
