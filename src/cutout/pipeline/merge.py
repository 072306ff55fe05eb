"""The pipeline's first step: raw pairs plus the retraining store, as one new dataset.

Three sources, read and never modified, in order of trust (the first copy of a photo wins):

    raw          <raw>/images/<id>.<ext> + masks/<id>.<ext> (+ manifest.jsonl)  ids kept as they are
    corrected    <feedback>/retrain/corrected (masks drawn by a person)          ids `corrected-<id>`
    auto         <feedback>/retrain/auto (masks the model was confident about)   ids `auto-<id>`

The feedback stores use the record-file layout of `cutout.data.feedback_store`: only pairs whose
record exists are read, so a pair being written while the step runs waits for the next run. A photo whose
bytes' sha256 was already taken from an earlier source is a `duplicate` (the same photo sent twice, or a
corrected photo that also came in raw). Raw ids without exactly one photo and one mask are rejected with
the clean step's pairing reasons; every input is kept or rejected with a reason. Photos are copied
byte for byte; masks too, except that a mask that is not a PNG becomes one (the dataset layout's
`masks/<id>.png`). The clean step after this one validates, normalises and resizes everything.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

from cutout.data import clean
from cutout.data.feedback_store import AUTO, CORRECTED, STORES, record_files, store_uri
from cutout.data.io import ImageError, decode_image, encode_image
from cutout.data.manifest import FEEDBACK_DOMAIN, DatasetWriter
from cutout.platform import storage

RAW = "raw"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Fields a feedback record describes its own files with; the merged record has new ones.
_OWN_FIELDS = frozenset({"id", "image", "mask", "checksum"})


@dataclass
class MergeSummary:
    """What `merge_feedback` did.

    Attributes:
        out: The merged dataset.
        read: Pairs (raw ids, feedback records) read per source.
        kept: Pairs written, per source.
        rejected: Inputs written to `rejects.jsonl`, per reason.
        written: All pairs written.
    """

    out: str
    read: dict[str, int] = field(default_factory=lambda: dict.fromkeys((RAW, CORRECTED, AUTO), 0))
    kept: dict[str, int] = field(default_factory=lambda: dict.fromkeys((RAW, CORRECTED, AUTO), 0))
    rejected: dict[str, int] = field(default_factory=dict)
    written: int = 0


@dataclass(frozen=True)
class _Input:
    """One input pair: where its files are, the id it gets, and the manifest fields it carries."""

    source: str
    id: str
    image: str | None
    mask: str | None
    fields: dict
    problem: tuple[str, str] | None = None  # (reason, message) when the pair cannot be used


def merge_feedback(raw_uri: str, feedback_uri: str | None, out: str) -> MergeSummary:
    """Write the raw pairs and the retraining store's pairs into the new dataset `out`.

    Args:
        raw_uri: Raw dataset folder or `s3://` prefix (`images/`, `masks/`, optional `manifest.jsonl`).
        feedback_uri: The serving feedback root (`retrain/auto`, `retrain/corrected`); None or empty for
            raw data alone. Missing stores are empty.
        out: Where the merged dataset goes (local or `s3://`): `images/`, `masks/`, `manifest.jsonl`,
            `rejects.jsonl`, `summary.json`.

    Returns:
        Counts read and kept per source, and rejects per reason.

    Raises:
        ValueError: `out` would write into one of the inputs.
    """
    _check_output(out, [raw_uri] + ([feedback_uri] if feedback_uri else []))
    summary, seen, rejected = MergeSummary(out), set(), Counter()
    with DatasetWriter(out) as writer:
        for pair in _inputs(raw_uri, feedback_uri):
            summary.read[pair.source] += 1
            reason = _write_pair(pair, writer, seen)
            if reason:
                rejected[reason] += 1
            else:
                summary.kept[pair.source] += 1
    summary.rejected, summary.written = dict(sorted(rejected.items())), writer.kept
    report = {"raw": raw_uri, "feedback": feedback_uri, **asdict(summary)}
    storage.write_text(storage.join(out, "summary.json"), json.dumps(report, indent=2) + "\n")
    return summary


def _check_output(out: str, inputs: list[str]) -> None:
    place = {uri: uri.rstrip("/") if storage.is_s3(uri) else os.path.realpath(uri) for uri in [out, *inputs]}
    for uri in inputs:
        if place[out] == place[uri] or place[out].startswith(place[uri] + "/"):
            raise ValueError(
                f"the merged dataset must go outside its inputs, which are never modified: {out}"
            )


def _inputs(raw_uri: str, feedback_uri: str | None) -> Iterator[_Input]:
    yield from _raw_inputs(raw_uri)
    for source in STORES:
        if feedback_uri:
            yield from _feedback_inputs(source, store_uri(feedback_uri, source))


def _raw_inputs(raw_uri: str) -> Iterator[_Input]:
    """Raw pairs by id, with their manifest's fields; the pairing is the clean step's own (streaming)."""
    # clean's pairing and carried fields are reused rather than copied: the same ids pair the same way.
    with clean._CarriedFields(raw_uri) as carried:
        for pair in clean._pair_by_id(raw_uri):
            problem = clean._pairing_problem(pair)
            fields = carried.get(pair.id)
            fields.setdefault("source", RAW)
            if problem is not None:
                yield _Input(RAW, pair.id, None, None, fields, (problem.reason, problem.message))
            else:
                yield _Input(RAW, pair.id, pair.images[0], pair.masks[0], fields)


def _feedback_inputs(source: str, store: str) -> Iterator[_Input]:
    """The store's pairs that have a record, in id order."""
    for uri in record_files(store):
        pair_id = f"{source}-{os.path.basename(uri).removesuffix('.json')}"
        try:
            record = json.loads(storage.read_bytes(uri))
            image, mask = storage.join(store, record["image"]), storage.join(store, record["mask"])
        except (ValueError, KeyError, TypeError) as error:
            yield _Input(source, pair_id, None, None, {}, ("bad_record", f"{uri}: {error!r}"))
            continue
        fields = {key: value for key, value in record.items() if key not in _OWN_FIELDS}
        fields.update(feedback_id=record.get("id"), source=record.get("source", f"feedback-{source}"))
        fields.setdefault("domain", FEEDBACK_DOMAIN)  # photos from production: the gate scores them apart
        yield _Input(source, pair_id, image, mask, fields)


def _write_pair(pair: _Input, writer: DatasetWriter, seen: set[bytes]) -> str | None:
    """Copy one pair into the new dataset; return its reject reason, or None when it was kept."""
    if pair.problem is not None:
        return _reject(writer, pair, *pair.problem)
    try:
        photo = storage.read_bytes(pair.image)
    except FileNotFoundError:
        return _reject(writer, pair, "missing_image", f"the record names {pair.image}, which is missing")
    try:
        mask = storage.read_bytes(pair.mask)
    except FileNotFoundError:
        return _reject(writer, pair, "missing_mask", f"the record names {pair.mask}, which is missing")
    digest = hashlib.sha256(photo).digest()
    if digest in seen:
        return _reject(writer, pair, "duplicate", "the same photo (sha256) as a pair kept earlier")
    seen.add(digest)  # 32 bytes per kept pair
    record = {"id": pair.id, **pair.fields, "checksum": digest.hex()}
    extension = os.path.splitext(pair.image)[1].lstrip(".").lower() or "jpg"
    writer.add_pair(record, photo, extension, _as_png(mask))
    return None


def _reject(writer: DatasetWriter, pair: _Input, reason: str, message: str) -> str:
    writer.reject({"id": pair.id, "source": pair.source, "reason": reason, "message": message})
    return reason


def _as_png(mask: bytes) -> bytes:
    """The mask as PNG bytes; one that cannot be decoded stays as it is, for the clean step to reject."""
    if mask.startswith(PNG_SIGNATURE):
        return mask
    try:
        return encode_image(decode_image(mask)[1], "PNG")
    except ImageError:
        return mask
