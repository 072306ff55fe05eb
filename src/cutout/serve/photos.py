"""One photo of a request, whichever protocol brought it: limits, options, decoding, and its PNGs.

`cutout.serve.codec` reads the v1 and v2 envelopes and hands each photo here. Every problem becomes a
KServe `InvalidInput` (HTTP 400) that says where (the ``where`` argument, ``instances[2].image_b64``)
and what is wrong; photos are decoded only through `cutout.data.io.decode_image` (header check, pixel
limit, truncation). The predictor renders every PNG; the transformer only checks photos (a JPEG at a
fraction of its size: the whole stream is still read) and passes the predictor's PNGs on.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kserve.errors import InvalidInput
from PIL import Image

from cutout.compose import Color, compose_cutout, parse_color
from cutout.data.io import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV, ImageError, decode_image, encode_image, to_rgb

OUTPUTS = ("cutout", "mask", "both")
OPTION_KEYS = ("output", "bg_color", "crop")
DEFAULT_MAX_BATCH = 8
PNG_COMPRESSION = 1  # fast: PNG encoding, not the network, dominated `cutout remove`'s time per photo
_DATA_URL = re.compile(r"^data:[\w/+.-]*(;[\w=.-]+)*;base64,", re.IGNORECASE)
_MAX_SHOWN = 80  # characters of a client's value quoted back in an error message


@dataclass(frozen=True)
class DecodeLimits:
    """How much one request may ask for.

    Attributes:
        max_pixels: Largest width × height of one photo (None: `cutout.data.io`'s default, 40 M,
            or ``$CUTOUT_MAX_PIXELS``); checked from the header before any pixel is decoded.
        max_batch: Most photos in one request: with ``max_pixels`` it bounds a request's memory.
    """

    max_pixels: int | None = None
    max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        if self.max_pixels is not None and self.max_pixels <= 0:
            raise ValueError(f"max_pixels must be positive, got {self.max_pixels}")
        if self.max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {self.max_batch}")


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True)
class CutoutOptions:
    """What to return for one photo (see `cutout.serve.codec`)."""

    output: str = "both"
    bg_color: Color | None = None
    crop: bool = False

    @property
    def wants_mask(self) -> bool:
        return self.output in ("mask", "both")

    @property
    def wants_cutout(self) -> bool:
        return self.output in ("cutout", "both")


@dataclass(frozen=True)
class Photo:
    """A decoded photo (upright RGB), what to return for it, and the file the client sent (None when
    it sent pixels): the transformer forwards and stores those bytes as they came.

    ``image`` is at the photo's own resolution, unless it was decoded as a preview
    (`decode_photo`'s ``preview``): then it may be smaller, and ``full_size`` holds the photo's size.
    """

    image: Image.Image
    options: CutoutOptions
    raw: bytes | None = None
    full_size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """The photo's upright (width, height), whatever the size of ``image``."""
        return self.full_size or self.image.size


@dataclass(frozen=True)
class PhotoResult:
    """What the predictor made of one photo: PNG bytes (None when not asked for) and the score."""

    mask_png: bytes | None
    cutout_png: bytes | None
    score: float
    width: int
    height: int


# --- decoding ------------------------------------------------------------------------------------


def decode_photo(
    text: Any,
    where: str,
    options: CutoutOptions,
    limits: DecodeLimits = DEFAULT_LIMITS,
    preview: bool = False,
) -> Photo:
    """A base64 photo → its `Photo`: the file's bytes and the upright RGB image (`decode_image`).

    With ``preview``, a JPEG is decoded at 1/8 of its size (libjpeg's DCT scaling): the whole stream is
    still read, so a damaged or truncated file is refused all the same, at a fraction of the cost. The
    transformer checks photos this way: it never looks at their pixels.

    Raises:
        InvalidInput: when it is not a string, not base64, or not a usable image (with the reason).
    """
    if isinstance(text, bytes):  # a BYTES element that arrived as raw bytes (gRPC)
        try:
            text = text.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidInput(f"{where}: must be base64 text, got raw binary bytes") from None
    if not isinstance(text, str):
        raise InvalidInput(f"{where}: must be a base64 string, not {json_kind(text)}")
    data = _base64_bytes(text, where)
    try:
        header, image = decode_image(data, max_pixels=limits.max_pixels, min_size=(1, 1) if preview else None)
        return Photo(to_rgb(image), options, data, full_size=(header.width, header.height))
    except ImageError as error:
        raise InvalidInput(f"{where}: {error.message} ({error.reason})") from None


def _base64_bytes(text: str, where: str) -> bytes:
    text = _DATA_URL.sub("", text.strip(), count=1)
    if not text:
        raise InvalidInput(f"{where}: the photo is empty (empty)")
    try:
        # validate=True refuses stray characters instead of skipping them; line breaks are legal base64.
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as error:
        raise InvalidInput(f"{where}: not valid base64 ({error})") from None


def parse_options(values: Mapping[str, Any], where: str) -> CutoutOptions:
    """Read ``output``, ``bg_color`` and ``crop`` (all optional) from an instance or v2 parameters.

    Raises:
        InvalidInput: for a value of the wrong type or outside its choices.
    """
    output = values.get("output", "both")
    if output not in OUTPUTS:
        raise InvalidInput(f"{where}.output must be one of {', '.join(OUTPUTS)}, not {quoted(output)}")
    bg_color = values.get("bg_color")
    if bg_color is not None and not isinstance(bg_color, str):
        raise InvalidInput(f"{where}.bg_color must be a colour name or '#RRGGBB', not {json_kind(bg_color)}")
    try:
        color = parse_color(bg_color) if bg_color else None
    except ValueError as error:
        raise InvalidInput(f"{where}.bg_color: {error}") from None
    crop = values.get("crop", False)
    if not isinstance(crop, bool):
        raise InvalidInput(f"{where}.crop must be true or false, not {quoted(crop)}")
    return CutoutOptions(output=output, bg_color=color, crop=crop)


def check_batch(count: int, where: str, limits: DecodeLimits) -> None:
    """Refuse a request with no photos or more than ``limits.max_batch``."""
    if count == 0:
        raise InvalidInput(f"{where} is empty: send at least one photo")
    if count > limits.max_batch:
        raise InvalidInput(f"{where} holds {count} photos; at most {limits.max_batch} per request")


def check_pixel_limit(width: int, height: int, where: str, limits: DecodeLimits) -> None:
    """Refuse pixels sent as numbers when they are more than a photo file may hold."""
    limit = limits.max_pixels or int(os.environ.get(MAX_PIXELS_ENV, DEFAULT_MAX_PIXELS))
    if width * height > limit:
        raise InvalidInput(
            f"{where}: {width}×{height} = {width * height:,} pixels is more than the limit of {limit:,} "
            "(too_many_pixels)"
        )


def json_kind(value: Any) -> str:
    """A JSON type name for messages ('a list', 'a number', …)."""
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", int: "a number",
             float: "a number", type(None): "null"}  # fmt: skip
    for kind, name in names.items():
        if isinstance(value, kind):
            return name
    return type(value).__name__


def quoted(value: Any) -> str:
    """A client's value quoted back in a message, cut short: it may be a whole photo."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"


# --- rendering -----------------------------------------------------------------------------------


def encode_png(image: Image.Image) -> bytes:
    """A mask or cutout as PNG, at the fast compression level both servers use."""
    return encode_image(image, "PNG", compress_level=PNG_COMPRESSION)


def render_cutout(photo: Photo, alpha: Image.Image) -> bytes:
    """The cutout PNG the photo's options ask for (background colour, crop), from its alpha mask."""
    options = photo.options
    return encode_png(compose_cutout(photo.image, alpha, bg_color=options.bg_color, crop=options.crop))
