"""Augmentation: more, and more varied, training pairs, balanced across the product clusters.

Each training pair is written as it is, plus variants that are each a random mix of: a crop that keeps
the whole product (resized back to the frame), a horizontal flip, another product pasted in (masks
merged; never into or out of a real photograph, see `_composites`), a new background (solid colour,
gradient, procedural texture or a photo) and a colour jitter.
Geometric steps run through `torchvision.transforms.v2` on a `tv_tensors.Image` and a `tv_tensors.Mask`,
so photo and mask move together and the mask is resampled nearest: it stays binary and aligned.

Balance rule (why the pairs are clustered at all: so that no product type is outnumbered in training):
let N be the number of training pairs in the largest cluster and T = N × (1 + copies). With ``balance``,
a cluster of n training pairs gets T − n variants, spread evenly over its pairs (its j-th pair gets
⌊(j+1)(T−n)/n⌋ − ⌊j(T−n)/n⌋), so every cluster ends with exactly T training pairs. Without it every
pair gets ``copies`` variants.

Determinism: the randomness of variant k of input i comes from ``np.random.default_rng([seed, i, k])``
alone, so the output is the same on any number of workers. Memory stays flat: the manifest is streamed
twice (counting, then working); a pasted product is read by path in the worker, from a fixed-size,
seeded sample of training records.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from functools import partial

import numpy as np
import torch
from PIL import Image, ImageFilter, ImageOps
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as F

from cutout.data.io import PHOTO_SUFFIXES, ImageError, encode_image, mask_to_image, read_image, read_mask
from cutout.data.manifest import REAL_DOMAIN, DatasetWriter, read_manifest, record_domain
from cutout.platform import storage
from cutout.platform.parallel import ordered_map

logger = logging.getLogger(__name__)
Rng = np.random.Generator

JPEG_QUALITY = 95
SUMMARY_NAME = "summary.json"
PARTNER_POOL_SIZE = 512  # products that can be pasted into others: enough variety, bounded memory
VARIANTS_PER_TASK = 8  # a tiny cluster's pair may need hundreds of variants: spread them over tasks
MIN_CROP_SCALE = 0.6  # tighter crops blow a 320-pixel photo up into blur
FEATHER_RADIUS = 0.8  # pixels of softening at a composited edge: anti-aliasing, not a halo
CHANCES = {"crop": 0.7, "flip": 0.5, "composite": 0.3, "background": 0.6, "photo": 0.5, "jitter": 0.8}
# RGB to YIQ: Y is luma; I and Q span the chroma plane, which saturation scales and hue turns.
_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
_PLAN_STREAM, _POOL_STREAM = 1, 2  # extra seed words for the choices the main process makes
_SKIPPED = (ImageError, FileNotFoundError, ValueError)  # an unusable file, not a bug


@dataclass
class AugmentSummary:
    """What `augment_dataset` wrote, also saved as ``dst/summary.json``; the counts are per cluster."""

    src: str
    dst: str
    copies: int
    seed: int
    target: int = 0  # training pairs per cluster after balancing; 0 when not balancing
    train_before: dict[str, int] = field(default_factory=dict)  # training pairs in the input
    train_after: dict[str, int] = field(default_factory=dict)  # originals and variants written
    val: dict[str, int] = field(default_factory=dict)  # pairs of the other splits, copied through
    written: int = 0  # pairs written
    rejected: int = 0  # input pairs that could not be read, listed in rejects.jsonl


@dataclass
class _Plan:
    """What the main process settles before the work starts."""

    seed: int
    copies: int
    target: int  # training pairs per cluster after balancing; 0: every pair gets `copies`
    counts: Counter  # training pairs per cluster
    pool: list[dict]  # training records that may be pasted into others
    photos: list[str]  # background photos


@dataclass(frozen=True)
class _Variant:
    number: int  # k in <id>-aug<k>
    partner: dict | None  # another training pair, pasted in if the variant composites
    photo: str | None  # used if the variant draws a photo background


@dataclass(frozen=True)
class _Task:
    """Work for one process: an input pair, whether to copy it through, and some of its variants."""

    index: int
    record: dict
    with_original: bool
    variants: tuple[_Variant, ...]
    last: bool  # the pair's last task: the pair is done once this one is written


# --- the plan: how many variants each pair gets, and from what -------------------------------------


def _cluster(record: dict) -> str:
    return str(record.get("cluster") or record.get("product_type") or "unknown")


def _is_train(record: dict) -> bool:
    return record.get("split", "train") == "train"


def _composites(record: dict) -> bool:
    """Whether a pair may take part in a composite, pasted in or pasted into: not a real photograph.

    A real photo's mask marks its subject only, the passers-by behind are background; a product pasted
    into it with the masks merged (or a real person pasted into a studio photo) teaches the opposite:
    training on such composites teaches the model to cut out whole crowds on street photos.
    """
    return record_domain(record) != REAL_DOMAIN


def _survey(src: str, seed: int) -> tuple[Counter, list[dict]]:
    """Training pairs per cluster, and a seeded reservoir sample of training pairs to paste in (never
    validation ones: their products must not leak into training photos; never real photos)."""
    counts: Counter = Counter()
    pool: list[dict] = []
    rng, offered = np.random.default_rng([seed, _POOL_STREAM]), 0
    for record in filter(_is_train, read_manifest(src)):
        counts[_cluster(record)] += 1
        if not _composites(record):
            continue
        offered += 1
        slim = {key: record[key] for key in ("id", "image", "mask")}
        if len(pool) < PARTNER_POOL_SIZE:
            pool.append(slim)
        elif (slot := int(rng.integers(offered))) < PARTNER_POOL_SIZE:
            pool[slot] = slim
    return counts, pool


def _variant_count(plan: _Plan, cluster: str, position: int) -> int:
    """Variants for a cluster's ``position``-th training pair: its even share of ``target − n``."""
    if not plan.target:
        return plan.copies
    size = plan.counts[cluster]
    extra = plan.target - size
    return (position + 1) * extra // size - position * extra // size


def _plan_variant(plan: _Plan, index: int, record: dict, number: int) -> _Variant:
    """Pick the partner and the photo a variant may use, here where the pool and photo list live."""
    rng = np.random.default_rng([plan.seed, index, number, _PLAN_STREAM])
    # Drawn even when unused, so that the photo drawn next stays the same.
    partner = plan.pool[int(rng.integers(len(plan.pool)))] if plan.pool else None
    photo = plan.photos[int(rng.integers(len(plan.photos)))] if plan.photos else None
    if partner is None or partner["id"] == record["id"] or not _composites(record):
        partner = None
    return _Variant(number, partner, photo)


def _tasks(src: str, plan: _Plan) -> Iterator[_Task]:
    """One task per input pair, or several when it has many variants, in manifest order."""
    position: Counter = Counter()
    for index, record in enumerate(read_manifest(src)):
        cluster, count = _cluster(record), 0
        record = {**record, "cluster": cluster, "split": record.get("split", "train")}
        if _is_train(record):
            count = _variant_count(plan, cluster, position[cluster])
            position[cluster] += 1
        variants = [_plan_variant(plan, index, record, k) for k in range(1, count + 1)]
        starts = range(0, max(count, 1), VARIANTS_PER_TASK)
        for start in starts:
            chunk = tuple(variants[start : start + VARIANTS_PER_TASK])
            yield _Task(index, record, start == 0, chunk, start == starts[-1])


# --- one variant -----------------------------------------------------------------------------------


def _as_image(image: Image.Image) -> tv_tensors.Image:
    return tv_tensors.Image(F.pil_to_tensor(image))


def _as_mask(mask: np.ndarray) -> tv_tensors.Mask:
    return tv_tensors.Mask(torch.from_numpy(mask.astype(np.uint8))[None])


def _bounding_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right), bottom and right exclusive; None for an empty mask."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(columns[0]), int(rows[-1]) + 1, int(columns[-1]) + 1


def _crop_keeping_product(photo: tv_tensors.Image, silhouette: tv_tensors.Mask, rng: Rng) -> tuple:
    """A random crop of the frame's shape containing the product's bounding box, resized to the frame."""
    height, width = silhouette.shape[-2:]
    top, left, bottom, right = _bounding_box(silhouette[0].numpy() > 0) or (0, 0, height, width)
    scale = rng.uniform(max((bottom - top) / height, (right - left) / width, MIN_CROP_SCALE), 1.0)
    crop_h, crop_w = max(round(scale * height), bottom - top), max(round(scale * width), right - left)
    y = int(rng.integers(max(0, bottom - crop_h), min(top, height - crop_h) + 1))
    x = int(rng.integers(max(0, right - crop_w), min(left, width - crop_w) + 1))
    box = (y, x, crop_h, crop_w, [height, width])
    return F.resized_crop(photo, *box, antialias=True), F.resized_crop(silhouette, *box)


def _feathered(mask: np.ndarray) -> np.ndarray:
    """Alpha (H, W, 1) softened over about a pixel: composited edges look anti-aliased, as in a photo."""
    edge = Image.fromarray(mask.astype(np.uint8) * 255).filter(ImageFilter.GaussianBlur(FEATHER_RADIUS))
    return np.asarray(edge, dtype=np.float32)[..., None] / 255.0


def _least_covered_place(mask: np.ndarray, size: list[int], rng: Rng) -> tuple[int, int]:
    """Of a few random places for a (h, w) paste, the one that hides least of the products there."""
    (h, w), (height, width) = size, mask.shape
    places = [(int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))) for _ in range(6)]
    return min(places, key=lambda place: mask[place[0] : place[0] + h, place[1] : place[1] + w].sum())


def _paste_partner(pixels: np.ndarray, mask: np.ndarray, partner: dict, src: str, rng: Rng) -> bool:
    """Paste another pair's product, smaller and elsewhere, behind this one; merges the masks in place."""
    try:
        image, other = _decode_pair(*_load_pair(src, partner), partner["id"])
    except _SKIPPED as error:
        logger.warning("not pasting %s: %s", partner["id"], error)
        return False
    top, left, bottom, right = _bounding_box(other) or (0, 0, 0, 0)
    if bottom == 0:
        return False
    height, width = bottom - top, right - left
    factor = rng.uniform(0.3, 0.55) * min(mask.shape) / max(height, width)  # it fits in any frame
    box = (top, left, height, width, [max(1, round(height * factor)), max(1, round(width * factor))])
    part = F.resized_crop(_as_image(image), *box, antialias=True).permute(1, 2, 0).numpy()
    part_mask = F.resized_crop(_as_mask(other), *box)[0].numpy() > 0
    y, x = _least_covered_place(mask, box[-1], rng)
    window = (slice(y, y + part.shape[0]), slice(x, x + part.shape[1]))
    alpha = _feathered(part_mask) * (1.0 - mask[window][..., None])  # behind: this product stays whole
    pixels[window] = pixels[window] * (1.0 - alpha) + part * alpha
    mask[window] |= part_mask
    return True


def _ramp(shape: tuple[int, int], rng: Rng) -> np.ndarray:
    """Values 0..1 rising across the frame in a random direction."""
    angle = rng.uniform(0, 2 * np.pi)
    y, x = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    along = x * np.cos(angle) + y * np.sin(angle)
    return (along - along.min()) / max(float(np.ptp(along)), 1.0)


def _texture(shape: tuple[int, int], rng: Rng) -> np.ndarray:
    """Values 0..1: smooth blotches (a coarse random grid upsampled) or a few broad stripes, and grain."""
    if rng.random() < 0.5:
        grid = Image.fromarray(rng.random(rng.integers(3, 12, 2)).astype(np.float32), mode="F")
        values = np.asarray(grid.resize(shape[::-1], Image.Resampling.BICUBIC))
    else:
        values = 0.5 + 0.5 * np.sin(2 * np.pi * rng.uniform(2, 8) * _ramp(shape, rng) + rng.uniform(0, 6.3))
    return np.clip(values + rng.normal(0, 0.03, shape).astype(np.float32), 0, 1)


def _background(shape: tuple[int, int], photo: str | None, rng: Rng) -> tuple[np.ndarray, str]:
    """A new backdrop (H, W, 3) in 0..255 and its kind: a photo if offered and drawn, else procedural."""
    if photo is not None and rng.random() < CHANCES["photo"]:
        try:
            fitted = ImageOps.fit(read_image(photo), shape[::-1], centering=tuple(rng.random(2)))
            return np.asarray(fitted, dtype=np.float32), "photo"
        except _SKIPPED as error:
            logger.warning("not using background photo: %s", error)
    kind = ("solid", "gradient", "texture")[int(rng.integers(3))]
    first, second = rng.uniform(0, 255, (2, 3)).astype(np.float32)
    if kind == "solid":
        return np.broadcast_to(first, (*shape, 3)).copy(), kind
    mix = (_ramp if kind == "gradient" else _texture)(shape, rng)[..., None]
    return first * (1 - mix) + second * mix, kind


def _jitter(pixels: np.ndarray, rng: Rng) -> np.ndarray:
    """Colour jitter that moves no pixel. Saturation and hue scale and turn YIQ's chroma plane, keeping
    luma; contrast pulls towards the mean luma; brightness scales. All linear, so one matrix: much cheaper
    than torchvision's hue alone (an HSV round trip)."""
    saturation, hue = rng.uniform(0.7, 1.3), rng.uniform(-0.25, 0.25)  # hue in radians: about ±14°
    contrast, brightness = rng.uniform(0.75, 1.25), rng.uniform(0.75, 1.25)
    chroma = saturation * np.array([[np.cos(hue), -np.sin(hue)], [np.sin(hue), np.cos(hue)]])
    yiq_map = np.block([[np.ones((1, 1)), np.zeros((1, 2))], [np.zeros((2, 1)), chroma]])
    matrix = (brightness * contrast * np.linalg.inv(_YIQ) @ yiq_map @ _YIQ).astype(np.float32)
    mean_luma = float(pixels.reshape(-1, 3).mean(axis=0) @ _YIQ[0])
    return pixels @ matrix.T + np.float32(brightness * (1 - contrast) * mean_luma)


def _augment(image: Image.Image, mask: np.ndarray, variant: _Variant, src: str, rng: Rng) -> tuple:
    """One variant of a pair: (photo, binary mask, names of what was applied)."""
    photo, silhouette, applied = _as_image(image), _as_mask(mask), []
    if rng.random() < CHANCES["crop"]:
        photo, silhouette = _crop_keeping_product(photo, silhouette, rng)
        applied.append("crop")
    if rng.random() < CHANCES["flip"]:
        photo, silhouette = F.horizontal_flip(photo), F.horizontal_flip(silhouette)
        applied.append("flip")
    pixels, mask = photo.permute(1, 2, 0).numpy().astype(np.float32), silhouette[0].numpy() > 0
    wants_partner = rng.random() < CHANCES["composite"]  # drawn always: later draws stay put
    if wants_partner and variant.partner and _paste_partner(pixels, mask, variant.partner, src, rng):
        applied.append("composite")
    if rng.random() < CHANCES["background"]:
        backdrop, kind = _background(mask.shape, variant.photo, rng)
        alpha = _feathered(mask)
        pixels = pixels * alpha + backdrop * (1.0 - alpha)
        applied.append(f"background:{kind}")
    if rng.random() < CHANCES["jitter"] or not applied:  # every variant differs from its original
        pixels = _jitter(pixels, rng)
        applied.append("jitter")
    return Image.fromarray(np.clip(pixels + 0.5, 0, 255).astype(np.uint8)), mask, applied


# --- the worker task -------------------------------------------------------------------------------


def _load_pair(src: str, record: dict) -> tuple[bytes, bytes]:
    return tuple(storage.read_bytes(storage.join(src, record[key])) for key in ("image", "mask"))


def _decode_pair(image_bytes: bytes, mask_bytes: bytes, pair_id: str) -> tuple[Image.Image, np.ndarray]:
    image, mask = read_image(image_bytes), read_mask(mask_bytes)
    if mask.shape != (image.height, image.width):
        raise ValueError(f"{pair_id}: mask {mask.shape[::-1]} and photo {image.size} differ in size")
    return image, mask


def _variant_output(record: dict, pair: tuple, variant: _Variant, src: str, seed: int, index: int) -> tuple:
    """Make one variant and its manifest record; its randomness depends on (seed, input, variant) only."""
    image, mask, applied = _augment(*pair, variant, src, np.random.default_rng([seed, index, variant.number]))
    jpeg = encode_image(image, "JPEG", JPEG_QUALITY)
    fields = {key: value for key, value in record.items() if key not in ("image", "mask", "checksum")}
    new = {**fields, "id": f"{record['id']}-aug{variant.number}", "augmented_from": record["id"],
           "augmentations": applied, "checksum": hashlib.sha256(jpeg).hexdigest()}  # fmt: skip
    if "composite" in applied:
        new["partner"] = variant.partner["id"]  # whose product was pasted in
    return new, jpeg, "jpg", encode_image(mask_to_image(mask), "PNG")


def _reject(record: dict, error: Exception) -> dict:
    fallback = "not_found" if isinstance(error, FileNotFoundError) else "size_mismatch"
    return {"id": record["id"], "reason": getattr(error, "reason", fallback), "message": str(error)}


def _task_outputs(task: _Task, src: str, seed: int) -> tuple[list[tuple], dict | None, bool]:
    """(outputs, reject, last): the original copied through unchanged, bytes and all, and the variants."""
    record, outputs = task.record, []
    try:
        image_bytes, mask_bytes = _load_pair(src, record)
        if task.with_original:
            outputs.append((record, image_bytes, record["image"].rsplit(".", 1)[-1], mask_bytes))
        pair = _decode_pair(image_bytes, mask_bytes, record["id"]) if task.variants else None
    except _SKIPPED as error:  # rejected once, by the pair's first task
        return [], _reject(record, error) if task.with_original else None, task.last
    outputs += [_variant_output(record, pair, variant, src, seed, task.index) for variant in task.variants]
    return outputs, None, task.last


def _run_task(task: _Task, src: str, seed: int) -> tuple[list[tuple], dict | None, bool]:
    """`_task_outputs` on one torch thread: on images this small more threads only contend (much slower
    on a busy machine), and the pool already keeps every core busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _task_outputs(task, src, seed)
    finally:
        torch.set_num_threads(threads)


# --- the step --------------------------------------------------------------------------------------


def _background_photos(backgrounds: str | None) -> list[str]:
    if backgrounds is None:
        return []
    photos = sorted(storage.list_files(backgrounds, PHOTO_SUFFIXES))
    if not photos:
        raise ValueError(f"{backgrounds}: no background photos ({', '.join(PHOTO_SUFFIXES)})")
    return photos


def augment_dataset(
    src: str,
    dst: str,
    copies: int = 2,
    backgrounds: str | None = None,
    balance: bool = True,
    seed: int = 0,
    on_progress: Callable[[], None] | None = None,
    workers: int | None = None,
) -> AugmentSummary:
    """Write an augmented, cluster-balanced copy of a dataset.

    Training pairs are written unchanged plus their variants (``<id>-aug<k>``, with ``augmented_from``
    and ``augmentations`` in the record). Pairs of any other split are copied through unchanged:
    augmenting validation data would bias evaluation towards our own augmentations. Images are JPEG
    (quality 95), masks PNG; ``dst/summary.json`` holds the counts per cluster.

    Args:
        src: Dataset folder or ``s3://`` prefix, with ``cluster`` and ``split`` in its records (falling
            back to ``product_type``, then ``"unknown"``, and to ``"train"``). Never modified.
        dst: Output folder or ``s3://`` prefix.
        copies: Variants per pair of the largest cluster (of every pair without ``balance``).
        backgrounds: Folder or prefix of background photos, used beside procedural backgrounds.
        balance: Oversample the smaller clusters up to the largest one (rule in the module doc).
        seed: Augmentation seed; the output depends only on it and the input.
        on_progress: Called once after each input pair's outputs are written.
        workers: Worker processes; default all usable cores. The output does not depend on it.

    Returns:
        The counts written, per cluster.

    Raises:
        ValueError: for negative ``copies``, ``dst`` equal to ``src``, or an empty backgrounds folder.
    """
    if copies < 0 or storage.join(src, "") == storage.join(dst, ""):
        raise ValueError(f"need copies >= 0 and an output other than the input, got {copies}, {dst!r}")
    counts, pool = _survey(src, seed)
    target = max(counts.values(), default=0) * (1 + copies) if balance else 0
    plan = _Plan(seed, copies, target, counts, pool, _background_photos(backgrounds))
    summary = AugmentSummary(src, dst, copies, seed, target, dict(sorted(counts.items())))
    after, val = Counter(), Counter()
    with DatasetWriter(dst) as writer:
        for outputs, reject, last in ordered_map(
            partial(_run_task, src=src, seed=seed), _tasks(src, plan), workers
        ):
            for record, image, ext, mask in outputs:
                writer.add_pair(record, image, ext, mask)
                (after if _is_train(record) else val)[record["cluster"]] += 1
            if reject is not None:
                writer.reject(reject)
            if last and on_progress is not None:
                on_progress()
    summary.train_after, summary.val = dict(sorted(after.items())), dict(sorted(val.items()))
    summary.written, summary.rejected = writer.kept, writer.rejected
    storage.write_text(storage.join(dst, SUMMARY_NAME), json.dumps(asdict(summary), indent=2) + "\n")
    return summary
