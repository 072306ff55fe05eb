"""Clean a raw dataset: pair photos with masks, reject what is unusable with a reason, resize the rest.

Input is a folder or S3 prefix of ``images/<id>.<ext>`` and
``masks/<id>.<ext>`` (and, optionally, a ``manifest.jsonl`` whose per-id fields are carried over).
Output is a new dataset of ``size``×``size`` pairs (JPEG photos, binary PNG masks), a
``rejects.jsonl`` with one reason per rejected id, and a ``summary.json``. Every input id is either
kept or rejected, never lost.

Work is split the way memory and cores want it: the parent merges the two sorted listings (a
streaming merge, so memory does not grow with the dataset), checks duplicates against 16 bytes per
kept pair, and writes; worker processes decode, check, normalise, resize and encode.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import os
import sqlite3
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from functools import partial

import numpy as np
from PIL import Image

from cutout.data.io import (
    REASONS,
    ImageError,
    ImageHeader,
    decode_image,
    encode_image,
    mask_to_image,
    to_mask_values,
    to_rgb,
)
from cutout.data.manifest import PERSON_CHECKED_SOURCES, DatasetWriter, manifest_uri, read_jsonl
from cutout.data.quality import (
    NEAR_DUPLICATE_BITS,
    content_hash,
    content_mismatch_threshold,
    edge_contrast,
    perceptual_hash,
    resize_mask,
    resize_square,
)
from cutout.platform import storage
from cutout.platform.parallel import ordered_map

# The codes of rejects.jsonl: pairing, then the file's own (`ImageError`), then content, then duplicates.
REJECT_REASONS: tuple[str, ...] = ("missing_mask", "missing_image", "ambiguous_id", *REASONS, "size_mismatch",
                                   "empty_mask", "full_mask", "content_mismatch",
                                   "duplicate", "near_duplicate")  # fmt: skip

JPEG_QUALITY = 95
# A mask with less than 0.2% foreground (or background) after resizing teaches nothing but noise.
EMPTY_MASK_FRACTION = 0.002
_GREY_MODES = frozenset({"1", "L", "LA", "I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
_PHOTO_MODE_NOTES = {"CMYK": "cmyk_to_rgb", "P": "palette_to_rgb", "PA": "palette_to_rgb",
                     **dict.fromkeys(_GREY_MODES, "grey_to_rgb")}  # fmt: skip
_SOFT_LEVELS = [0] + [255] * 254 + [0]  # a lookup table that marks levels other than 0 and 255
_COLOUR_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "CMYK", "YCbCr", "HSV"})
# Fields this step computes; everything else in an input manifest record is carried over.
_COMPUTED_FIELDS = frozenset({"id", "image", "mask", "width", "height", "original_width",
                              "original_height", "checksum", "normalised"})  # fmt: skip


@dataclass
class CleanSummary:
    """What `clean_dataset` did.

    Attributes:
        kept: Pairs written to the output dataset.
        rejected: Input ids written to ``rejects.jsonl``.
        per_reason: Rejected ids per reason code (only reasons that occurred).
    """

    kept: int
    rejected: int
    per_reason: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class _RawPair:
    """The input files that share one id (a usable pair has exactly one of each)."""

    id: str
    images: tuple[str, ...]
    masks: tuple[str, ...]
    # A person drew or approved the mask on this photo (its `source` is in `PERSON_CHECKED_SOURCES`).
    person_checked: bool = False
    domain: str | None = None  # the manifest's `domain` (`real` photos get their own outline threshold)


@dataclass(frozen=True)
class _Reject:
    id: str
    reason: str
    message: str
    file: str  # "image", "mask" or "pair": which input the reason is about
    duplicate_of: str | None = None


@dataclass(frozen=True)
class _Cleaned:
    id: str
    source: str
    photo_jpeg: bytes
    mask_png: bytes
    original_size: tuple[int, int]
    normalised: tuple[str, ...]
    content_hash: int  # of the decoded, resized pixels: exact duplicates
    phash: int  # 64-bit DCT perceptual hash: near duplicates


# --- pairing by id: a streaming merge of the two sorted listings ---------------------------------


def _listing(src: str, folder: str, kind: str) -> Iterator[tuple[str, str, str]]:
    """``(name relative to the folder, kind, URI)`` for each file, in the storage's sorted order."""
    root = storage.join(src, folder)
    for uri in storage.list_files(root):
        yield uri[len(root) :].lstrip("/"), kind, uri


def _complete_ids(pending: dict[str, dict[str, list[str]]], reached: str | None) -> Iterator[_RawPair]:
    """Pop the ids no later file can belong to; ``reached=None`` means the listings are done.

    Every name of id ``s`` (``s`` or ``s.<ext>``) sorts in ``[s, s + "/")``, so once the merged
    listing has reached ``s + "/"``, id ``s`` has all its files.
    """
    done = [pair_id for pair_id in pending if reached is None or pair_id + "/" <= reached]
    for pair_id in done:
        files = pending.pop(pair_id)
        yield _RawPair(pair_id, tuple(files["image"]), tuple(files["mask"]))


def _pair_by_id(src: str) -> Iterator[_RawPair]:
    """Group the files of ``images/`` and ``masks/`` by id (file name without extension)."""
    # Only ids whose names are still being listed are pending: usually one or two.
    pending: dict[str, dict[str, list[str]]] = {}
    for name, kind, uri in heapq.merge(_listing(src, "images", "image"), _listing(src, "masks", "mask")):
        yield from _complete_ids(pending, reached=name)
        pair_id = os.path.splitext(name)[0]
        pending.setdefault(pair_id, {"image": [], "mask": []})[kind].append(uri)
    yield from _complete_ids(pending, reached=None)


def _pairing_problem(pair: _RawPair) -> _Reject | None:
    """A reject unless the id has exactly one photo and one mask."""
    if not pair.masks:
        return _Reject(pair.id, "missing_mask", "a photo without a mask", "mask")
    if not pair.images:
        return _Reject(pair.id, "missing_image", "a mask without a photo", "image")
    if len(pair.images) > 1 or len(pair.masks) > 1:
        names = ", ".join(os.path.basename(uri) for uri in pair.images + pair.masks)
        return _Reject(pair.id, "ambiguous_id", f"several files share this id: {names}", "pair")
    return None


# --- fields carried over from the input manifest -------------------------------------------------


def _marked_from_manifest(pairs: Iterator[_RawPair], carried: _CarriedFields) -> Iterator[_RawPair]:
    """The pairs, each marked with its domain and whether its manifest's `source` says a person checked
    its mask."""
    for pair in pairs:
        fields = carried.get(pair.id)
        checked = fields.get("source") in PERSON_CHECKED_SOURCES
        yield replace(pair, person_checked=checked, domain=fields.get("domain"))


class _CarriedFields:
    """Per-id fields of ``src/manifest.jsonl``, spooled to an on-disk SQLite table.

    Lookups by id in any order, without holding the manifest in memory.
    """

    def __init__(self, src: str) -> None:
        self._spool = tempfile.TemporaryDirectory(prefix="cutout-clean-")
        self._db = sqlite3.connect(os.path.join(self._spool.name, "carried.sqlite"))
        self._db.execute("CREATE TABLE carried (id TEXT PRIMARY KEY, fields TEXT)")
        if storage.exists(manifest_uri(src)):
            rows = ((str(r["id"]), json.dumps(r)) for r in read_jsonl(manifest_uri(src)) if "id" in r)
            with self._db:
                self._db.executemany("INSERT OR REPLACE INTO carried VALUES (?, ?)", rows)

    def get(self, pair_id: str) -> dict:
        row = self._db.execute("SELECT fields FROM carried WHERE id = ?", (pair_id,)).fetchone()
        record = json.loads(row[0]) if row else {}
        return {key: value for key, value in record.items() if key not in _COMPUTED_FIELDS}

    def __enter__(self) -> _CarriedFields:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._db.close()
        self._spool.cleanup()


# --- the work on one pair (worker processes) -----------------------------------------------------


def _photo_notes(header: ImageHeader) -> list[str]:
    """What turning this photo into upright 8-bit RGB changes."""
    notes = ["exif_rotated"] if header.orientation != 1 else []
    notes += ["16bit_to_8bit"] if header.bits > 8 else []
    if header.mode not in ("RGB", "RGBA"):
        notes.append(_PHOTO_MODE_NOTES.get(header.mode, f"{header.mode.lower()}_to_rgb"))
    return notes + (["alpha_flattened"] if header.transparency else [])


def _mask_notes(header: ImageHeader, image: Image.Image, levels: Image.Image) -> list[str]:
    """What turning this mask into 0/1 values changes."""
    notes = ["mask_exif_rotated"] if header.orientation != 1 else []
    notes += ["mask_16bit_to_8bit"] if header.bits > 8 else []
    # Mirrors `to_mask_values`: the alpha channel is the mask when it varies.
    if image.has_transparency_data and len(set(image.convert("RGBA").getchannel("A").getextrema())) > 1:
        notes.append("mask_from_alpha")
    elif header.mode in ("P", "PA"):
        notes.append("mask_from_palette")
    elif header.mode in _COLOUR_MODES:
        notes.append("mask_from_colour")
    soft = levels.point(_SOFT_LEVELS).getbbox() is not None
    return notes + (["mask_binarised"] if soft else [])


def _mask_levels(image: Image.Image) -> Image.Image:
    """The mask as 8-bit levels (mode L, 255 on the product), as `to_mask_values` reads it.

    The decoded image itself in the common case (grey, no alpha): a float copy costs more than
    all the other work on the mask.
    """
    if image.mode == "L" and not image.has_transparency_data:
        return image
    return Image.fromarray(np.rint(to_mask_values(image) * 255).astype(np.uint8))


def _mask_problem(pair: _RawPair, photo: Image.Image, mask: np.ndarray) -> _Reject | None:
    """Reject an empty or full mask, or one whose outline does not follow this photo's edges.

    A mask a person drew or approved on this very photo skips the outline check: that check catches a
    mask paired with the wrong photo, which the reviewer has ruled out, and it also drops true masks on
    busy backdrops (whose edges drown the outline's), the very photos reviews are most often about.
    """
    coverage = float(mask.mean())
    if coverage < EMPTY_MASK_FRACTION:
        return _Reject(pair.id, "empty_mask", f"foreground covers {coverage:.2%} of the frame", "mask")
    if coverage > 1 - EMPTY_MASK_FRACTION:
        return _Reject(pair.id, "full_mask", f"foreground covers {coverage:.2%} of the frame", "mask")
    if pair.person_checked:
        return None
    contrast = edge_contrast(photo, mask)
    if contrast < content_mismatch_threshold(pair.domain):
        message = f"the mask's outline does not follow the photo's edges (edge contrast {contrast:.2f})"
        return _Reject(pair.id, "content_mismatch", message, "pair")
    return None


def _clean_pair(pair: _RawPair, size: int, max_pixels: int | None) -> _Cleaned | _Reject:
    """Worker task: decode, check, normalise, resize and encode one pair, or say why not."""
    problem = _pairing_problem(pair)
    if problem is not None:
        return problem
    try:
        photo_header, photo = decode_image(pair.images[0], max_pixels=max_pixels, min_size=(size, size))
    except ImageError as error:
        return _Reject(pair.id, error.reason, error.message, "image")
    try:
        mask_header, mask_image = decode_image(pair.masks[0], max_pixels=max_pixels)
    except ImageError as error:
        return _Reject(pair.id, error.reason, error.message, "mask")
    sizes = (photo_header.width, photo_header.height), (mask_header.width, mask_header.height)
    if sizes[0] != sizes[1]:
        message = "photo is {}×{}, mask is {}×{} (upright)".format(*sizes[0], *sizes[1])
        return _Reject(pair.id, "size_mismatch", message, "pair")
    levels = _mask_levels(mask_image)
    small_photo, small_mask = resize_square(to_rgb(photo), size), resize_mask(levels, size)
    problem = _mask_problem(pair, small_photo, small_mask)
    if problem is not None:
        return problem
    notes = _photo_notes(photo_header) + _mask_notes(mask_header, mask_image, levels)
    photo_jpeg = encode_image(small_photo, "JPEG", quality=JPEG_QUALITY)
    mask_png = encode_image(mask_to_image(small_mask), "PNG")
    return _Cleaned(pair.id, pair.images[0], photo_jpeg, mask_png, sizes[0], tuple(notes),
                    content_hash(small_photo), perceptual_hash(small_photo))  # fmt: skip


# --- duplicates and writing (parent process) -----------------------------------------------------


class _KeptPhotos:
    """Hashes of the photos kept so far: 16 bytes per pair, plus the ids that duplicates point to."""

    def __init__(self) -> None:
        self._exact: dict[int, int] = {}  # content hash -> index into _ids
        self._phashes = np.zeros(1024, dtype=np.uint64)
        self._ids: list[str] = []

    def duplicate(self, pair: _Cleaned) -> _Reject | None:
        """A reject if this photo equals, or nearly equals, one kept before."""
        if pair.content_hash in self._exact:
            original = self._ids[self._exact[pair.content_hash]]
            return _Reject(pair.id, "duplicate", f"the same picture as {original}", "image", original)
        if not self._ids:
            return None
        # A linear scan, vectorised: cheap per query even over a large dataset, and no index to keep.
        distances = np.bitwise_count(self._phashes[: len(self._ids)] ^ np.uint64(pair.phash))
        nearest = int(np.argmin(distances))
        if distances[nearest] > NEAR_DUPLICATE_BITS:
            return None
        original, bits = self._ids[nearest], int(distances[nearest])
        message = f"nearly the same picture as {original} (pHash distance {bits} of 64)"
        return _Reject(pair.id, "near_duplicate", message, "image", original)

    def add(self, pair: _Cleaned) -> None:
        if len(self._ids) == len(self._phashes):
            self._phashes = np.concatenate([self._phashes, np.zeros_like(self._phashes)])
        self._exact[pair.content_hash] = len(self._ids)
        self._phashes[len(self._ids)] = pair.phash
        self._ids.append(pair.id)


def _record(pair: _Cleaned, carried: dict, size: int) -> dict:
    """The output manifest record: what was done here, then the input manifest's other fields."""
    checksum = hashlib.sha256(pair.photo_jpeg).hexdigest()
    record = {"id": pair.id, "width": size, "height": size, "original_width": pair.original_size[0],
              "original_height": pair.original_size[1], "checksum": checksum,
              "source": carried.pop("source", pair.source), "normalised": list(pair.normalised)}  # fmt: skip
    return record | carried


def _write_outcome(result: _Cleaned | _Reject, writer: DatasetWriter, kept: _KeptPhotos,
                   carried: _CarriedFields, size: int) -> str | None:  # fmt: skip
    """Write one id's outcome; return its reject reason, or None if the pair was kept."""
    if isinstance(result, _Cleaned):
        result = kept.duplicate(result) or result
    if isinstance(result, _Reject):
        writer.reject({key: value for key, value in asdict(result).items() if value is not None})
        return result.reason
    writer.add_pair(_record(result, carried.get(result.id), size), result.photo_jpeg, "jpg", result.mask_png)
    kept.add(result)
    return None


def _writes_into_input(src: str, dst: str) -> bool:
    """Whether ``dst`` is ``src`` or lies within its photos or masks (it would change the input)."""
    place = {uri: uri.rstrip("/") if storage.is_s3(uri) else os.path.realpath(uri) for uri in (src, dst)}
    inputs = [place[src]] + [storage.join(place[src], folder) for folder in ("images", "masks")]
    return place[dst] == inputs[0] or any(
        place[dst] == f or place[dst].startswith(f + "/") for f in inputs[1:]
    )


def clean_dataset(
    src: str,
    dst: str,
    size: int = 320,
    on_progress: Callable[[], None] | None = None,
    *,
    max_pixels: int | None = None,
) -> CleanSummary:
    """Clean a raw dataset of photos and masks into a new dataset of ``size``×``size`` pairs.

    Pairs ``src/images/<id>.<ext>`` with ``src/masks/<id>.<ext>`` by id. Rejects, one line per id in
    ``dst/rejects.jsonl`` with a code from `REJECT_REASONS`: missing or ambiguous partners,
    unreadable, truncated or oversized files (the `ImageError` reasons), size mismatches (after EXIF
    orientation), empty or full masks, masks of another photo (``content_mismatch``; not checked for
    masks a person drew or approved, whose ``source`` is in `PERSON_CHECKED_SOURCES`), and exact or
    near duplicates of a pair kept earlier. Normalises CMYK, 16-bit, palette, grey and rotated photos
    and palette, alpha, soft and rotated masks, listing what it did in each record's ``normalised``.
    Photos are area-averaged to ``size``×``size`` and saved as JPEG (quality 95); masks are
    resampled, thresholded at 0.5 and saved as PNG. ``src`` is never modified; the output is the
    same on every run.

    Args:
        src: Raw dataset folder or ``s3://`` prefix; its ``manifest.jsonl``, if any, supplies
            per-id fields (``product_type``, ``source``, …) that are carried into the output.
        dst: Output dataset folder or ``s3://`` prefix: ``images/``, ``masks/``, ``manifest.jsonl``,
            ``rejects.jsonl`` and ``summary.json``.
        size: Side of the square output, the network's input size.
        on_progress: Called once per input id, kept or rejected.
        max_pixels: Largest photo or mask accepted (width × height); defaults as for `read_image`.

    Returns:
        Counts of kept and rejected ids, and of rejects per reason.

    Raises:
        ValueError: for a size under 32 pixels, or a ``dst`` that would write into ``src``.
    """
    if size < 32:
        raise ValueError(f"size must be at least 32 pixels, got {size}")
    if _writes_into_input(src, dst):
        raise ValueError(f"the output must go elsewhere than the input, which is never modified: {dst}")
    per_reason: Counter[str] = Counter()
    work = partial(_clean_pair, size=size, max_pixels=max_pixels)
    with _CarriedFields(src) as carried, DatasetWriter(dst) as writer:
        kept = _KeptPhotos()
        for result in ordered_map(work, _marked_from_manifest(_pair_by_id(src), carried)):
            reason = _write_outcome(result, writer, kept, carried, size)
            per_reason.update([reason] if reason else [])
            if on_progress is not None:
                on_progress()
    summary = CleanSummary(writer.kept, writer.rejected, dict(sorted(per_reason.items())))
    report = {"src": src, "size": size, **asdict(summary)}
    storage.write_text(storage.join(dst, "summary.json"), json.dumps(report, indent=2) + "\n")
    return summary
