"""Safe image I/O: decode photos and masks fully, or reject them with a machine-readable reason.

Every later step (cleaning, the KServe server, the CLI) reads images through here, so a bad file
becomes one `ImageError` with a `reason` from `REASONS` instead of a half-grey training pair or a
stack trace. Sources are bytes, local paths, or ``s3://`` URIs.

Pixel limits: our explicit ``max_pixels`` is checked from the header before decoding; Pillow's own
guard stays on untouched as a ceiling (``2 × PIL.Image.MAX_IMAGE_PIXELS``, about 179 M pixels; raise
that global to go beyond). The one global we change is ``ImageFile.LOAD_TRUNCATED_IMAGES``, forced
back to False if someone turned it on: a partially decoded photo would pass as a half-grey pair.
"""

from __future__ import annotations

import logging
import os
import struct
import warnings
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import IO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

logger = logging.getLogger(__name__)

ImageSource = bytes | bytearray | memoryview | str | os.PathLike[str]

REASONS: tuple[str, ...] = (
    "empty",
    "not_found",
    "unreadable",
    "not_an_image",
    "truncated",
    "corrupt",
    "too_many_pixels",
    "unsupported",
)

DEFAULT_MAX_PIXELS = 40_000_000
MAX_PIXELS_ENV = "CUTOUT_MAX_PIXELS"
ENCODE_FORMATS = ("PNG", "JPEG", "WEBP")
FAST_PNG_LEVELS = 3  # up to this zlib level, PNGs use the run-length strategy (`encode_image`)
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp")  # what a folder of photos holds

# Modes with more than 8 bits per sample: scaled by their full range, never clipped.
_HIGH_DEPTH_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})
# Modes whose conversion to RGB/L Pillow gets right; it "converts" LAB, for one, to wrong colours.
_KNOWN_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "HSV"})
# Everything Pillow raises for a damaged file, besides UnidentifiedImageError.
_DAMAGE_ERRORS = (OSError, SyntaxError, EOFError, ValueError, struct.error)
_TRUNCATION_HINTS = ("truncat", "broken data stream", "premature end", "not enough data")
# EXIF orientations 5-8 turn the picture by 90°, so width and height trade places.
_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})
_WHITE = (255, 255, 255)


class ImageError(ValueError):
    """An input that is not a usable image.

    Attributes:
        reason: One of `REASONS`, for rejects files and API error codes.
        message: What is wrong, for people.
        source: The path, URI or name that was read, if there was one.
    """

    def __init__(self, reason: str, message: str, source: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown image error reason {reason!r}; expected one of {REASONS}")
        # Passing all three to ValueError keeps the error picklable across worker processes.
        super().__init__(reason, message, source)
        self.reason = reason
        self.message = message
        self.source = source

    def __str__(self) -> str:
        prefix = f"{self.source}: " if self.source else ""
        return f"{prefix}{self.message} ({self.reason})"


def read_image(source: ImageSource, *, max_pixels: int | None = None) -> Image.Image:
    """Read a photo as an upright 8-bit RGB image.

    Transparent pixels are composited over white (product photos sit on white); CMYK, palette,
    grayscale and 16/32-bit images are converted; only the first frame of an animation is used.

    Args:
        source: Encoded bytes, a local path, or an ``s3://`` URI.
        max_pixels: Largest width × height accepted, checked from the header before decoding.
            Defaults to ``$CUTOUT_MAX_PIXELS`` or 40,000,000.

    Returns:
        A fully decoded RGB image with EXIF orientation applied.

    Raises:
        ImageError: if the source is missing, empty, not an image, damaged or too large.
    """
    name = _describe(source)
    return _to_rgb(_decode(source, max_pixels, name), name)


def read_soft_mask(source: ImageSource, *, max_pixels: int | None = None) -> np.ndarray:
    """Read a mask as float32 values in [0, 1], shape (H, W).

    Uses the alpha channel when it varies, otherwise luminance (palette colours, not indices);
    16/32-bit masks are scaled by their full range.

    Args:
        source: Encoded bytes, a local path, or an ``s3://`` URI.
        max_pixels: As for `read_image`.

    Returns:
        The upright mask, 1.0 meaning foreground.

    Raises:
        ImageError: as for `read_image`.
    """
    name = _describe(source)
    return _mask_values(_decode(source, max_pixels, name), name)


def read_mask(source: ImageSource, *, max_pixels: int | None = None, threshold: float = 0.5) -> np.ndarray:
    """Read a mask as a boolean array of shape (H, W).

    Args:
        source: Encoded bytes, a local path, or an ``s3://`` URI.
        max_pixels: As for `read_image`.
        threshold: Fraction of the full value at or above which a pixel is foreground.

    Returns:
        True where the mask is foreground.

    Raises:
        ImageError: as for `read_image`.
        ValueError: if ``threshold`` is not in (0, 1].
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    return read_soft_mask(source, max_pixels=max_pixels) >= threshold


def read_photos(folder: str, *, limit: int | None = None) -> Iterator[Image.Image]:
    """The readable photos under a folder or ``s3://`` prefix, in name order, at most `limit` of them.

    An unreadable photo is logged with its reason and skipped: for callers that sample (int8 calibration).
    A folder without one readable photo is a ValueError naming it.
    """
    from cutout.platform import storage

    count = 0
    for uri in sorted(storage.list_files(folder, suffixes=PHOTO_SUFFIXES)):
        if limit is not None and count >= limit:
            return
        try:
            photo = read_image(uri)
        except ImageError as error:
            logger.warning("skipped %s: %s (%s)", uri, error, error.reason)
            continue
        count += 1
        yield photo
    if count == 0:
        raise ValueError(f"no readable photos ({', '.join(PHOTO_SUFFIXES)}) under {folder}")


def image_info(source: ImageSource, *, max_pixels: int | None = None) -> tuple[int, int, str]:
    """Read width, height and format from the header only, without decoding pixels.

    Width and height are as `read_image` returns them, after EXIF orientation. A truncated body
    is not detected here: that needs a full decode.

    Args:
        source: Encoded bytes, a local path, or an ``s3://`` URI.
        max_pixels: As for `read_image`.

    Returns:
        ``(width, height, format)``, the format as Pillow names it (``"JPEG"``, ``"PNG"``, …).

    Raises:
        ImageError: if the source is missing, empty, not an image or too large.
    """
    name = _describe(source)
    with _open(source, name) as image:
        _check_pixels(image.size, max_pixels, name)
        width, height = image.size
        if _orientation(image) in _SWAPPING_ORIENTATIONS:
            width, height = height, width
        return width, height, str(image.format)


def encode_image(image: Image.Image, fmt: str = "PNG", quality: int = 95, compress_level: int = 6) -> bytes:
    """Encode an image as PNG, JPEG or WEBP.

    Args:
        image: The image to encode.
        fmt: ``"PNG"``, ``"JPEG"`` (or ``"JPG"``) or ``"WEBP"``, any case.
        quality: JPEG/WEBP quality, 1-100; PNG is lossless and ignores it.
        compress_level: PNG zlib level, 0-9: lower levels encode much faster for a somewhat larger
            file. The fast levels (1-3) use zlib's run-length strategy: masks and cutouts are mostly
            long runs of one value (transparent pixels are black), which it packs tighter than the
            plain fast levels at their speed.

    Returns:
        The encoded bytes.

    Raises:
        ValueError: for another format, for transparency in JPEG (flatten it first), or for a
            mode the format cannot store.
    """
    fmt = "JPEG" if fmt.upper() == "JPG" else fmt.upper()
    if fmt not in ENCODE_FORMATS:
        raise ValueError(f"can't encode {fmt!r}: expected one of {ENCODE_FORMATS}")
    if fmt == "JPEG" and image.has_transparency_data:
        raise ValueError(f"JPEG can't hold transparency (mode {image.mode}); flatten or use PNG/WEBP")
    if fmt != "PNG":
        options = {"quality": quality}
    elif 1 <= compress_level <= FAST_PNG_LEVELS:
        options = {"compress_level": compress_level, "compress_type": zlib.Z_RLE}
    else:
        options = {"compress_level": compress_level}
    buffer = BytesIO()
    try:
        image.save(buffer, format=fmt, **options)
    except OSError as exc:  # Pillow's "cannot write mode X as Y"
        raise ValueError(f"can't encode mode {image.mode} as {fmt}: {exc}") from exc
    return buffer.getvalue()


def mask_to_image(mask: np.ndarray) -> Image.Image:
    """Turn a boolean or float [0, 1] mask of shape (H, W) into a mode ``L`` image.

    Args:
        mask: True/1.0 for foreground.

    Returns:
        An 8-bit grayscale image, 255 for foreground.

    Raises:
        ValueError: for another shape or dtype, NaN, or floats outside [0, 1].
    """
    array = np.asarray(mask)
    if array.ndim != 2:
        raise ValueError(f"mask must have shape (H, W), got {array.shape}")
    if array.dtype == np.bool_:
        return Image.fromarray(array.astype(np.uint8) * 255)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"mask must be bool or float in [0, 1], got dtype {array.dtype}")
    # A small tolerance lets sigmoid outputs that round past 1.0 through; logits are refused.
    if np.isnan(array).any() or array.min(initial=0) < -1e-3 or array.max(initial=0) > 1 + 1e-3:
        raise ValueError("float mask values must lie in [0, 1]")
    return Image.fromarray(np.rint(np.clip(array, 0, 1) * 255).astype(np.uint8))


# --- reading ---------------------------------------------------------------------------------


def _describe(source: ImageSource) -> str | None:
    """Name a source for error messages; raw bytes have no name."""
    if isinstance(source, bytes | bytearray | memoryview):
        return None
    return os.fspath(source)


def _max_pixels(max_pixels: int | None) -> int:
    """The explicit limit, else ``$CUTOUT_MAX_PIXELS``, else the default; read per call so it can change."""
    limit = max_pixels if max_pixels is not None else int(os.environ.get(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS))
    if limit <= 0:
        raise ValueError(f"max_pixels must be positive, got {limit}")
    return limit


def _as_file(source: ImageSource, name: str | None) -> Path | IO[bytes]:
    """A local path to open lazily (header reads stay cheap), or the bytes in memory."""
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif isinstance(source, str) and source.startswith("s3://"):
        data = _read_s3(source)
    else:
        return _checked_path(Path(source), name)
    if not data:
        raise ImageError("empty", "the file has no bytes", name)
    return BytesIO(data)


def _read_s3(uri: str) -> bytes:
    """Fetch an S3 object; network errors propagate, as they say nothing about the image."""
    from cutout.platform import storage  # lazily: boto3 is only needed for s3:// sources

    try:
        return storage.read_bytes(uri)
    except FileNotFoundError as exc:
        raise ImageError("not_found", "no such object", uri) from exc


def _checked_path(path: Path, name: str | None) -> Path:
    """Reject a missing, unreadable or empty local file before Pillow sees it."""
    try:
        size = path.stat().st_size
    except FileNotFoundError as exc:
        raise ImageError("not_found", "no such file", name) from exc
    except OSError as exc:
        raise ImageError("unreadable", f"the file can't be read: {exc.strerror}", name) from exc
    if path.is_dir():
        raise ImageError("unreadable", "this is a folder, not a file", name)
    if size == 0:
        raise ImageError("empty", "the file has no bytes", name)
    return path


@contextmanager
def _open(source: ImageSource, name: str | None) -> Iterator[ImageFile.ImageFile]:
    """Open the header (first frame only) and close the file afterwards."""
    file = _as_file(source, name)
    try:
        with warnings.catch_warnings():
            # Our own limit (`_check_pixels`) decides; Pillow's warning would only repeat it.
            # Its hard error at 2 × Image.MAX_IMAGE_PIXELS still applies and is mapped below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(file, formats=None)
    except Image.DecompressionBombError as exc:
        raise ImageError("too_many_pixels", f"Pillow refused it: {exc}", name) from exc
    except UnidentifiedImageError as exc:
        raise ImageError("not_an_image", "the file is not an image Pillow can read", name) from exc
    except PermissionError as exc:
        raise ImageError("unreadable", f"the file can't be read: {exc.strerror}", name) from exc
    except _DAMAGE_ERRORS as exc:
        raise _damaged(exc, name) from exc
    with image:
        yield image


def _check_pixels(size: tuple[int, int], max_pixels: int | None, name: str | None) -> None:
    """Refuse a decompression bomb from its header size, before any pixel is decoded."""
    limit = _max_pixels(max_pixels)
    width, height = size
    if width * height > limit:
        message = f"{width}×{height} = {width * height:,} pixels is more than the limit of {limit:,}"
        raise ImageError("too_many_pixels", message, name)


def _decode(source: ImageSource, max_pixels: int | None, name: str | None) -> Image.Image:
    """Open, check the size, decode every pixel, and turn the image upright."""
    with _open(source, name) as image:
        _check_pixels(image.size, max_pixels, name)
        _load_fully(image, name)
        _require_known_mode(image, name)
        return _upright(image)


def _require_known_mode(image: Image.Image, name: str | None) -> None:
    """Refuse modes that Pillow would convert silently but wrongly, rather than return bad colours."""
    if image.mode not in _KNOWN_MODES | _HIGH_DEPTH_MODES:
        raise ImageError("unsupported", f"can't convert mode {image.mode} to RGB", name)


def _load_fully(image: ImageFile.ImageFile, name: str | None) -> None:
    """Decode all pixel data so that a file cut short fails here instead of reading as grey."""
    _require_strict_loading()
    try:
        image.load()
    except _DAMAGE_ERRORS as exc:
        raise _damaged(exc, name) from exc


def _require_strict_loading() -> None:
    """Undo a global opt-in to partial decoding: every input must be kept or rejected with a reason."""
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        logger.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES was True; setting it back to False")
        ImageFile.LOAD_TRUNCATED_IMAGES = False


def _damaged(exc: Exception, name: str | None) -> ImageError:
    """Tell a file cut short (the common case: interrupted uploads and copies) from other damage."""
    if any(hint in str(exc).lower() for hint in _TRUNCATION_HINTS):
        return ImageError("truncated", "the file ends before the image data does", name)
    return ImageError("corrupt", f"the image data is damaged: {exc}", name)


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation tag, 1 (upright) when absent or unreadable."""
    try:
        return int(image.getexif().get(0x0112, 1))
    except _DAMAGE_ERRORS:  # broken EXIF is common in the wild and does not spoil the pixels
        return 1


def _upright(image: Image.Image) -> Image.Image:
    """A decoded copy turned by its EXIF orientation; a copy because the file image gets closed."""
    try:
        return ImageOps.exif_transpose(image)
    except _DAMAGE_ERRORS as exc:
        logger.debug("ignoring unreadable EXIF orientation: %s", exc)
        return image.copy()


# --- mode normalisation ----------------------------------------------------------------------


def _convert(image: Image.Image, mode: str, name: str | None) -> Image.Image:
    """Image.convert, with Pillow's refusal mapped to `unsupported`."""
    try:
        return image.convert(mode)
    except ValueError as exc:
        raise ImageError("unsupported", f"can't convert mode {image.mode} to {mode}", name) from exc


def _unit_values(image: Image.Image) -> np.ndarray:
    """Scale a 16/32-bit single-channel image to float32 [0, 1] by its mode's full range."""
    array = np.asarray(image, dtype=np.float32)
    peak = float(array.max(initial=0))
    if image.mode.startswith("I;16"):
        full = 65535.0
    elif image.mode == "I":  # Pillow's mode for 16-bit PNG/TIFF; true 32-bit data by its own peak
        full = max(65535.0, peak)
    else:  # "F": conventionally [0, 1]; otherwise by its own peak
        full = max(1.0, peak)
    return np.clip(array / full, 0.0, 1.0)


def _to_8bit(image: Image.Image) -> Image.Image:
    """A 16/32-bit grayscale image as mode L, the full range mapped onto 0..255."""
    return Image.fromarray(np.rint(_unit_values(image) * 255).astype(np.uint8))


def _flatten_on_white(image: Image.Image, name: str | None) -> Image.Image:
    """Composite any transparency over white, where product photos sit."""
    rgba = _convert(image, "RGBA", name)
    background = Image.new("RGB", rgba.size, _WHITE)
    background.paste(rgba, mask=rgba.getchannel("A"))
    return background


def _to_rgb(image: Image.Image, name: str | None) -> Image.Image:
    """Normalise any decoded mode to 8-bit RGB."""
    if image.mode in _HIGH_DEPTH_MODES:
        image = _to_8bit(image)
    if image.has_transparency_data:
        return _flatten_on_white(image, name)
    return image if image.mode == "RGB" else _convert(image, "RGB", name)


def _mask_values(image: Image.Image, name: str | None) -> np.ndarray:
    """Mask values in [0, 1]: a varying alpha channel, else luminance (palette colours, not indices)."""
    if image.mode in _HIGH_DEPTH_MODES:
        return _unit_values(image)
    if image.has_transparency_data:
        image = _convert(image, "RGBA", name)
        alpha = np.asarray(image.getchannel("A"))
        if alpha.min() != alpha.max():
            return alpha.astype(np.float32) / 255.0
    return np.asarray(_convert(image, "L", name), dtype=np.float32) / 255.0


# --- headers and reduced decoding, for steps that normalise and report what they did --------


@dataclass(frozen=True)
class ImageHeader:
    """What a file's header says, read without decoding its pixels.

    Attributes:
        width: Upright width (after EXIF orientation), as `read_image` returns it.
        height: Upright height.
        format: The format as Pillow names it (``"JPEG"``, ``"PNG"``, …).
        mode: Pillow's mode for the file as opened, before any conversion (``"CMYK"``, ``"P"``, …).
        bits: Bits per sample: 8, or 16 for deeper files (also those Pillow opens as 8-bit ``"RGB"``).
        orientation: The EXIF orientation tag, 1 when upright.
        transparency: Whether the file has an alpha channel or a transparent colour.
    """

    width: int
    height: int
    format: str
    mode: str
    bits: int
    orientation: int
    transparency: bool


def read_header(source: ImageSource, *, max_pixels: int | None = None) -> ImageHeader:
    """Read a file's header: upright size, format, mode, bit depth, orientation, transparency.

    Args:
        source: Encoded bytes, a local path, or an ``s3://`` URI.
        max_pixels: As for `read_image`.

    Returns:
        The header facts; a truncated body is not detected here (that needs a full decode).

    Raises:
        ImageError: if the source is missing, empty, not an image or too large.
    """
    name = _describe(source)
    with _open(source, name) as image:
        _check_pixels(image.size, max_pixels, name)
        return _header(image)


def decode_image(
    source: ImageSource, *, max_pixels: int | None = None, min_size: tuple[int, int] | None = None
) -> tuple[ImageHeader, Image.Image]:
    """Decode every pixel and turn the image upright, keeping the file's own mode.

    With ``min_size``, a JPEG may be decoded at 1/2, 1/4 or 1/8 scale (libjpeg's DCT scaling, much
    faster) as long as both upright sides stay at least ``min_size``; the whole stream is still
    read, so a truncated file is still refused. Convert the result with `to_rgb` or `to_mask_values`.

    Args:
        source: Encoded bytes, a local path, or an ``s3://`` URI.
        max_pixels: As for `read_image`.
        min_size: ``(width, height)`` the decoded image must keep, upright; None for full size.

    Returns:
        The header (full-size dimensions) and the decoded, upright image.

    Raises:
        ImageError: as for `read_image`.
    """
    name = _describe(source)
    with _open(source, name) as image:
        _check_pixels(image.size, max_pixels, name)
        header = _header(image)
        if min_size is not None and image.format == "JPEG":
            swapped = header.orientation in _SWAPPING_ORIENTATIONS
            image.draft(None, tuple(reversed(min_size)) if swapped else min_size)
        _load_fully(image, name)
        _require_known_mode(image, name)
        return header, _upright(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert a decoded image (from `decode_image`) to 8-bit RGB exactly as `read_image` does."""
    return _to_rgb(image, None)


def to_mask_values(image: Image.Image) -> np.ndarray:
    """Convert a decoded image (from `decode_image`) to mask values as `read_soft_mask` does."""
    return _mask_values(image, None)


def _header(image: ImageFile.ImageFile) -> ImageHeader:
    """Header facts of an open file; the tile's raw mode tells 16-bit samples Pillow reads as 8-bit."""
    # Before `_orientation`: reading a PNG's EXIF decodes the image, and decoding empties the tiles.
    wide = image.mode in _HIGH_DEPTH_MODES or any(";16" in str(tile.args) for tile in image.tile)
    width, height = image.size
    orientation = _orientation(image)
    if orientation in _SWAPPING_ORIENTATIONS:
        width, height = height, width
    return ImageHeader(width=width, height=height, format=str(image.format), mode=image.mode,
                       bits=16 if wide else 8, orientation=orientation,
                       transparency=image.has_transparency_data)  # fmt: skip
