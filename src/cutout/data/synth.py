"""Synthetic studio product photos with exact masks: the project's embedded default dataset.

No public dataset can be downloaded where the demo and the tests run, so they train on these:
garment silhouettes of the six product types (the project's clusters) drawn at 4× supersampling,
fabrics with prints and folds, seams, lighting, light backdrops with drop shadows, camera noise.
The photo's edges are anti-aliased; the mask is the exact silhouette (coverage ≥ 0.5). Each pair
depends only on (seed, index), so any pair can be regenerated alone, in any order or process.
"""

from __future__ import annotations

import colorsys
import hashlib
import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from cutout.data.garments import SILHOUETTES, Shape
from cutout.data.io import encode_image, mask_to_image
from cutout.data.manifest import SYNTHETIC_DOMAIN, DatasetWriter
from cutout.platform.parallel import ordered_map

PRODUCT_TYPES: tuple[str, ...] = (
    "long_pants",
    "shorts",
    "short_sleeve_top",
    "long_sleeve_top",
    "swimwear_accessory",
    "light_coloured",
)
JPEG_QUALITY = 92
STUDIO, CHECKS = "studio", "checks"
BACKDROPS = (STUDIO, CHECKS)  # the plain studio sweep, and a new, busy backdrop
SUPERSAMPLE = 4  # silhouettes are drawn 4× larger, then box-averaged: anti-aliased edges
_Rng = np.random.Generator


@dataclass
class SynthSummary:
    """What `synthesize_dataset` wrote.

    Attributes:
        out: The dataset folder or S3 prefix.
        count: Number of (image, mask) pairs.
        per_type: Pairs per product type, every type of `PRODUCT_TYPES` listed.
    """

    out: str
    count: int
    per_type: dict[str, int] = field(default_factory=dict)


@dataclass
class _Pose:
    """Where the product lies in the photo: centre (pixels), pixels per unit, rotation (radians)."""

    centre: np.ndarray
    scale: float
    angle: float

    def to_pixels(self, points: np.ndarray) -> np.ndarray:
        c, s = np.cos(self.angle), np.sin(self.angle)
        return self.centre + self.scale * np.asarray(points) @ np.array([[c, s], [-s, c]])

    def to_canonical(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Python floats keep float32 pixel grids in float32 (NumPy scalars would promote them).
        c, s, (cx, cy) = math.cos(self.angle), math.sin(self.angle), self.centre.tolist()
        dx, dy = (x - cx) / self.scale, (y - cy) / self.scale
        return c * dx + s * dy, -s * dx + c * dy


# --- posing and rendering ----------------------------------------------------------------------


def _pose(rng: _Rng, shape: Shape, size: tuple[int, int]) -> _Pose:
    """Fill 60-85% of the frame, tilt a few degrees; about one product in ten crosses an edge."""
    points = np.vstack(shape.outlines + [p for p, _ in shape.straps])
    low, high = points.min(axis=0), points.max(axis=0)
    angle, frame = float(np.clip(rng.normal(0.0, 0.05), -0.12, 0.12)), np.array(size, dtype=np.float64)
    scale = rng.uniform(0.6, 0.85) * np.min(frame / (high - low))
    c, s = abs(np.cos(angle)), abs(np.sin(angle))
    half = scale / 2 * np.array([[c, s], [s, c]]) @ (high - low)  # half the rotated bounding box
    centre = frame / 2 + rng.uniform(-0.8, 0.8, 2) * np.maximum(frame / 2 - half, 0)
    if rng.random() < 0.1:
        axis, sign = rng.integers(2), rng.choice([-1, 1])
        centre[axis] = frame[axis] / 2 + sign * (frame[axis] / 2 - half[axis] * rng.uniform(0.5, 0.9))
    pose = _Pose(centre, float(scale), angle)
    pose.centre = 2 * centre - pose.to_pixels((low + high) / 2)  # centre the bounds, not the origin
    return pose


def _render_coverage(shape: Shape, pose: _Pose, size: tuple[int, int]) -> tuple[np.ndarray, tuple]:
    """Draw the silhouette at 4× inside its bounding box only; return coverage there and the box."""
    pad = max((w for _, w in shape.straps), default=0.0) * pose.scale
    points = pose.to_pixels(np.vstack(shape.outlines + [p for p, _ in shape.straps]))
    x0, y0 = np.maximum(np.floor(points.min(axis=0) - pad - 1), 0).astype(int)
    x1, y1 = np.minimum(np.ceil(points.max(axis=0) + pad + 1), size).astype(int)
    canvas = Image.new("L", ((x1 - x0) * SUPERSAMPLE, (y1 - y0) * SUPERSAMPLE))
    draw = ImageDraw.Draw(canvas)

    def canvas_xy(points: np.ndarray) -> list[float]:
        return ((pose.to_pixels(points) - (x0, y0)) * SUPERSAMPLE).ravel().tolist()

    for outline in shape.outlines:
        draw.polygon(canvas_xy(outline), fill=255)
    for line, width in shape.straps:
        width_px = max(1, round(width * pose.scale * SUPERSAMPLE))
        draw.line(canvas_xy(line), fill=255, width=width_px, joint="curve")
    return np.asarray(canvas.reduce(SUPERSAMPLE), dtype=np.float32) / 255.0, (x0, y0, x1, y1)


def _smooth_noise(rng: _Rng, shape: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1]: a coarse random grid upsampled bicubically."""
    grid = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32), mode="F")
    return np.asarray(grid.resize((shape[1], shape[0]), Image.Resampling.BICUBIC))


def _blur(values: np.ndarray, radius: float, shift: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """Gaussian blur (and shift) of values in [0, 1] at a quarter resolution: wide blurs cost 1/16."""
    h, w = values.shape
    small = Image.fromarray(np.uint8(values * 255 + 0.5)).reduce(4)
    small = small.rotate(0, Image.Resampling.BILINEAR, translate=(shift[0] / 4, shift[1] / 4))
    small = small.filter(ImageFilter.GaussianBlur(float(radius) / 4))
    blurred = small.resize((w, h), Image.Resampling.BILINEAR)
    return np.asarray(blurred, dtype=np.float32) / 255.0


# --- colour, fabric, light ---------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, s, v), dtype=np.float32)


def _product_colours(rng: _Rng, product_type: str) -> tuple[np.ndarray, np.ndarray, str]:
    """Base colour, second colour for prints, and the fabric pattern; palettes differ per type."""
    if product_type == "light_coloured":  # white, cream, very light grey or pastel: low contrast
        base = _hsv(rng.uniform(0.05, 0.6), rng.uniform(0.0, 0.12), rng.uniform(0.88, 0.99))
        return base, base * rng.uniform(0.9, 0.96), str(rng.choice(["solid", "solid", "stripes"]))
    if product_type in ("long_pants", "shorts") and rng.random() < 0.55:
        base = _hsv(rng.uniform(0.58, 0.63), rng.uniform(0.45, 0.75), rng.uniform(0.25, 0.6))
        return base, base * 1.6, "denim"
    dark = product_type == "long_pants" or rng.random() < 0.3
    value = rng.uniform(0.12, 0.45) if dark else rng.uniform(0.3, 0.8)
    base = _hsv(rng.random(), rng.uniform(0.2, 0.9), value)
    second = _hsv(rng.random(), rng.uniform(0.0, 0.8), rng.uniform(0.2, 0.95))
    patterns = ["solid", "solid", "stripes", "checks", "dots"][: 3 if product_type == "long_pants" else 5]
    return base, second, str(rng.choice(patterns))


def _print_mix(rng: _Rng, u: np.ndarray, v: np.ndarray, pattern: str, pixel: float) -> np.ndarray:
    """Where the second colour shows (0-1) for a print; edges about a pixel soft against aliasing."""
    period, soft = max(rng.uniform(0.04, 0.12), 6 * pixel), 1.5 * pixel

    def bands(t: np.ndarray) -> np.ndarray:
        return np.clip(np.sin(2 * np.pi * t / period) * period / (2 * np.pi * soft) + 0.5, 0, 1)

    if pattern == "denim":  # diagonal twill: a thread every two pixels
        return (np.sin((u + v) * (np.pi / (2 * pixel))) > 0.3).astype(np.float32) * 0.12
    if pattern == "stripes":
        a = float(rng.choice([0.0, np.pi / 2, np.pi / 4]))
        return bands(u * math.cos(a) + v * math.sin(a))
    if pattern == "checks":  # gingham: two crossing sets of bands, three tones
        return (bands(u) + bands(v)) / 2
    if pattern == "dots":
        du, dv = (u / period) % 1 - 0.5, (v / period + 0.5 * np.floor(u / period)) % 1 - 0.5
        return np.clip((rng.uniform(0.15, 0.3) - np.hypot(du, dv)) * period / soft, 0, 1)
    return np.zeros_like(u)


def _fabric(rng: _Rng, u: np.ndarray, v: np.ndarray, product_type: str, pixel: float) -> np.ndarray:
    """Fabric colours (h, w, 3) at canonical coordinates; ``pixel`` is one pixel in canonical units."""
    base, second, pattern = _product_colours(rng, product_type)
    mix = _print_mix(rng, u, v, pattern, pixel)
    # Uneven dye and yarn: a slow tone variation and per-column streaks (strong in denim).
    width = u.shape[1]
    yarns = rng.uniform(-1, 1, max(width // 3, 2))
    streaks = np.interp(np.arange(width), np.linspace(0, width, len(yarns)), yarns).astype(np.float32)
    tone = 1 + 0.05 * _smooth_noise(rng, u.shape, 4) + (0.07 if pattern == "denim" else 0.015) * streaks
    return (base + (second - base) * mix[..., None]) * tone[..., None]


def _shading(rng: _Rng, u: np.ndarray, v: np.ndarray, coverage: np.ndarray, scale: float) -> np.ndarray:
    """Light falling across the product, folds (creases along the garment), darker rounded edges."""
    phi = rng.uniform(0, 2 * np.pi)
    shade = 1.0 + rng.uniform(0.05, 0.15) * (u * math.cos(phi) + v * math.sin(phi))
    ys, xs = np.nonzero(coverage > 0.5)
    for _ in range(rng.integers(3, 7) if len(ys) else 0):
        y, x = ys[i := rng.integers(len(ys))], xs[i]
        a = rng.normal(np.pi / 2, 0.35) if rng.random() < 0.7 else rng.normal(0, 0.3)  # mostly lengthwise
        width, length = rng.uniform(0.015, 0.04), rng.uniform(0.1, 0.35)
        r = int(2.5 * length * scale) + 1  # the fold fades out within this many pixels: compute only there
        window = np.s_[max(y - r, 0) : y + r, max(x - r, 0) : x + r]
        du, dv = u[window] - u[y, x], v[window] - v[y, x]
        across = (-du * math.sin(a) + dv * math.cos(a)) / width
        along = (du * math.cos(a) + dv * math.sin(a)) / length
        # A Gaussian's derivative: lit on one side of the fold, in shadow on the other.
        shade[window] += rng.uniform(0.08, 0.22) * across * np.exp(-(across**2) - along**2)
    rounding = np.clip(_blur(coverage, 0.03 * scale) * 2.0, 0.0, 1.0)  # the garment curves away at its edge
    return shade * (1.0 - rng.uniform(0.1, 0.25) * (1.0 - rounding))


def _draw_seams(shape: Shape, pose: _Pose, box: tuple) -> np.ndarray:
    """Stitching lines as a layer over the box (1 on a seam), at the final resolution."""
    x0, y0, x1, y1 = box
    layer = Image.new("L", (x1 - x0, y1 - y0))
    draw, width = ImageDraw.Draw(layer), max(1, round(0.005 * pose.scale))
    for seam in shape.seams:
        draw.line((pose.to_pixels(seam) - (x0, y0)).ravel().tolist(), fill=255, width=width)
    return np.asarray(layer, dtype=np.float32) / 255.0


def _backdrop(rng: _Rng, size: tuple[int, int], light_product: bool) -> np.ndarray:
    """An off-white or light-grey studio sweep: gradient, vignette, faint blotches."""
    w, h = size
    y, x = np.linspace(-1, 1, h, dtype=np.float32)[:, None], np.linspace(-1, 1, w, dtype=np.float32)[None]
    level = rng.uniform(0.8, 0.9) if light_product else rng.uniform(0.84, 0.97)  # white on white is rarer
    tone = level + rng.uniform(-0.05, 0.05) * y + rng.uniform(-0.03, 0.03) * x
    tone = tone - rng.uniform(0.02, 0.1) * (x**2 + y**2) / 2 + 0.012 * _smooth_noise(rng, (h, w), 5)
    return tone[..., None] * (1.0 + rng.uniform(-0.02, 0.02, 3).astype(np.float32))


def _checked_backdrop(rng: _Rng, size: tuple[int, int]) -> np.ndarray:
    """A bold check in two random colours, nothing like a studio sweep: what a new, busy backdrop looks like.

    Checks of 12-20% of the width, the two colours far apart in every channel: the official U²-NetP cuts
    products out of them much worse than out of a studio sweep, and its quality score is rightly low on
    the worst.
    """
    width, height = size
    cell = max(1, int(width * rng.uniform(0.12, 0.2)))
    rows, columns = np.mgrid[0:height, 0:width]
    checks = (((rows // cell) + (columns // cell)) % 2).astype(bool)[..., None]
    first = rng.integers(0, 256, 3)
    second = (first + rng.integers(96, 161, 3)) % 256  # every channel 96+ apart: never a faint check
    first, second = first.astype(np.float32) / 255.0, second.astype(np.float32) / 255.0
    return np.where(checks, first, second).astype(np.float32)


def _cast_shadow(rng: _Rng, backdrop: np.ndarray, silhouette: np.ndarray, scale: float) -> np.ndarray:
    """Darken the backdrop with a soft drop shadow and a tight contact shadow of the product."""
    direction = rng.uniform(0, 2 * np.pi)
    away = scale * np.array([np.cos(direction), np.sin(direction) + 0.5])  # light from above, mostly
    soft = rng.uniform(0.12, 0.3) * _blur(silhouette, 0.05 * scale, tuple(0.04 * away))
    contact = rng.uniform(0.08, 0.2) * _blur(silhouette, 0.01 * scale, tuple(0.008 * away))
    return backdrop * (1.0 - np.clip(soft + contact, 0, 0.6))[..., None]


def _camera(rng: _Rng, photo: np.ndarray) -> Image.Image:
    """Sensor noise, then exposure and gamma varying a little, as a lookup table on 8-bit values."""
    noise = rng.standard_normal(photo.shape[:2], dtype=np.float32) * rng.uniform(1.0, 3.0)
    photo *= 255.0
    photo += noise[..., None] + 0.5  # in place: this runs over every pixel of the photo
    pixels = np.clip(photo, 0, 255, out=photo).astype(np.uint8)
    gain, gamma = np.exp(rng.normal(0, 0.04)), np.exp(rng.normal(0, 0.05))
    table = np.clip(255.0 * gain * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels, "RGB").point(table.tolist() * 3)


def _soft_highlights(colours: np.ndarray, knee: float = 0.85) -> np.ndarray:
    """Roll off values above ``knee`` smoothly, as film and camera curves do: white fabric keeps detail."""
    high = colours > knee
    colours[high] = knee + (1.0 - knee) * np.tanh((colours[high] - knee) / (1.0 - knee))
    return colours


def _photograph(
    rng: _Rng, product_type: str, shape: Shape, pose: _Pose, size: tuple[int, int], backdrop: str
) -> tuple[np.ndarray, np.ndarray]:
    """The product textured, lit and composited over its backdrop and shadow; also its coverage."""
    coverage, (x0, y0, x1, y1) = _render_coverage(shape, pose, size)
    silhouette = np.zeros((size[1], size[0]), np.float32)
    silhouette[y0:y1, x0:x1] = coverage
    behind = (
        _checked_backdrop(rng, size)
        if backdrop == CHECKS
        else _backdrop(rng, size, product_type == "light_coloured")
    )
    photo = _cast_shadow(rng, behind, silhouette, pose.scale)
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5  # pixel centres
    u, v = pose.to_canonical(xs, ys)  # textures follow the product's own axes
    fabric = _fabric(rng, u, v, product_type, 1.0 / pose.scale)
    seams = _draw_seams(shape, pose, (x0, y0, x1, y1))
    shade = _shading(rng, u, v, coverage, pose.scale) * (1.0 - rng.uniform(0.15, 0.35) * seams)
    alpha = coverage[..., None]
    product = _soft_highlights(fabric * shade[..., None])
    photo[y0:y1, x0:x1] = photo[y0:y1, x0:x1] * (1.0 - alpha) + product * alpha
    return photo, silhouette


def generate_pair(
    index: int, size: tuple[int, int] = (320, 320), seed: int = 0, backdrop: str = STUDIO
) -> tuple[Image.Image, np.ndarray, str]:
    """Generate one synthetic product photo and its exact mask.

    The pair depends only on ``(seed, index)``: each uses its own random generator, so any pair
    can be regenerated alone, in any order or process. Product types cycle with ``index``.

    Args:
        index: Position of the pair in the dataset.
        size: ``(width, height)`` in pixels.
        seed: Dataset seed.
        backdrop: `studio` (the plain sweep of the catalogue) or `checks` (a new, busy backdrop).

    Returns:
        The RGB photo, the mask (bool, shape ``(height, width)``, True on the product) and the
        product type, one of `PRODUCT_TYPES`.

    Raises:
        ValueError: for a size under 32 pixels or an unknown backdrop.
    """
    if min(size) < 32:  # smaller frames leave no room for a product's parts
        raise ValueError(f"size must be at least 32×32 pixels, got {size}")
    if backdrop not in BACKDROPS:
        raise ValueError(f"unknown backdrop {backdrop!r}: choose one of {', '.join(BACKDROPS)}")
    rng = np.random.default_rng([seed, index])
    product_type = PRODUCT_TYPES[index % len(PRODUCT_TYPES)]
    # Light-coloured products come in every silhouette: only their colour sets them apart.
    silhouette = PRODUCT_TYPES[rng.integers(5)] if product_type == "light_coloured" else product_type
    shape = SILHOUETTES[silhouette](rng)
    photo, coverage = _photograph(rng, product_type, shape, _pose(rng, shape, size), size, backdrop)
    return _camera(rng, photo), coverage >= 0.5, product_type


# --- the dataset -------------------------------------------------------------------------------


def _encode_pair(index: int, size: tuple[int, int], seed: int, backdrop: str) -> tuple[str, bytes, bytes]:
    """Worker task: one pair as (product type, JPEG bytes, PNG mask bytes)."""
    image, mask, product_type = generate_pair(index, size, seed, backdrop)
    return product_type, encode_image(image, "JPEG", JPEG_QUALITY), encode_image(mask_to_image(mask), "PNG")


def _encoded_pair_record(index: int, encoded: tuple[str, bytes, bytes], size: tuple, seed: int, backdrop: str,
                         domain: str) -> dict:  # fmt: skip
    product_type, jpeg, _ = encoded
    return {"id": f"synth-{index:06d}", "width": size[0], "height": size[1], "product_type": product_type,
            "source": "synth", "domain": domain, "backdrop": backdrop, "seed": seed,
            "checksum": hashlib.sha256(jpeg).hexdigest()}  # fmt: skip


def synthesize_dataset(
    out: str,
    count: int,
    size: tuple[int, int] = (320, 320),
    seed: int = 0,
    on_progress: Callable[[], None] | None = None,
    backdrop: str = STUDIO,
    domain: str = SYNTHETIC_DOMAIN,
) -> SynthSummary:
    """Write a synthetic dataset of studio product photos and exact masks.

    Layout: ``out/images/<id>.jpg``, ``out/masks/<id>.png`` (mode L, 0/255) and
    ``out/manifest.jsonl`` in index order, ids ``synth-000000``, ``synth-000001``, …. Pairs are
    generated on two worker processes, streaming: memory does not grow with ``count``.

    Args:
        out: Dataset folder or ``s3://bucket/prefix``.
        count: Number of pairs.
        size: ``(width, height)`` of every pair, in pixels.
        seed: Dataset seed; pair ``i`` is `generate_pair` ``(i, size, seed)``.
        on_progress: Called once after each pair is written.
        backdrop: `studio` or `checks` (see `generate_pair`).
        domain: The records' `domain`, which evaluation and the promotion gate score apart.

    Returns:
        What was written, with counts per product type.

    Raises:
        ValueError: for a negative ``count``, a size under 32 pixels or an unknown backdrop.
    """
    if count < 0 or min(size) < 32:
        raise ValueError(f"need count >= 0 and a size of at least 32×32, got {count} and {size}")
    if backdrop not in BACKDROPS:
        raise ValueError(f"unknown backdrop {backdrop!r}: choose one of {', '.join(BACKDROPS)}")
    per_type = Counter(dict.fromkeys(PRODUCT_TYPES, 0))
    encoded_pairs = ordered_map(partial(_encode_pair, size=size, seed=seed, backdrop=backdrop), range(count))
    with DatasetWriter(out) as writer:
        for index, encoded in enumerate(encoded_pairs):
            record = _encoded_pair_record(index, encoded, size, seed, backdrop, domain)
            writer.add_pair(record, encoded[1], "jpg", encoded[2])
            per_type[record["product_type"]] += 1
            if on_progress is not None:
                on_progress()
    return SynthSummary(out=out, count=count, per_type=dict(per_type))
