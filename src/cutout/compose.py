"""From a photo and its mask probabilities to what people use: an alpha mask, a cutout, a crop."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageColor

Color = tuple[int, int, int]


def parse_color(text: str) -> Color:
    """A CSS colour name or `#RRGGBB` → an RGB tuple, with an error that names the bad value."""
    try:
        red, green, blue = ImageColor.getrgb(text)[:3]
    except ValueError:
        raise ValueError(f"not a colour: {text!r} (use a name like 'white' or '#RRGGBB')") from None
    return red, green, blue


def alpha_from_probabilities(probabilities: np.ndarray) -> Image.Image:
    """A full-resolution probability map → an 8-bit alpha mask (soft edges kept)."""
    return Image.fromarray(np.rint(probabilities * 255.0).astype(np.uint8), mode="L")


def alpha_at_size(probabilities: np.ndarray, size: tuple[int, int]) -> Image.Image:
    """A probability map at the network's resolution → the 8-bit alpha mask at `size` (width, height).

    Quantising to 8 bits first and resizing the mask is faster than resizing the float map, and differs
    from it by at most one grey level.
    """
    return alpha_from_probabilities(probabilities).resize(size, Image.Resampling.BILINEAR)


def product_box(alpha: Image.Image, margin: float = 0.05, threshold: int = 128) -> tuple[int, int, int, int]:
    """The product's bounding box in `alpha`, grown by `margin` × its longer side, within the image.

    Returns the whole image when no pixel reaches `threshold` (nothing to crop to).
    """
    box = alpha.point(lambda value: 255 if value >= threshold else 0).getbbox()
    if box is None:
        return 0, 0, alpha.width, alpha.height
    left, top, right, bottom = box
    pad = round(margin * max(right - left, bottom - top))
    return (
        max(left - pad, 0),
        max(top - pad, 0),
        min(right + pad, alpha.width),
        min(bottom + pad, alpha.height),
    )


def compose_cutout(
    image: Image.Image, alpha: Image.Image, bg_color: Color | None = None, crop: bool = False
) -> Image.Image:
    """The product cut out of `image`: RGBA with `alpha`, or flattened onto `bg_color` (RGB).

    Args:
        image: the RGB photo.
        alpha: its 8-bit mask, same size.
        bg_color: flatten onto this colour instead of keeping transparency.
        crop: crop to the product's box (with a margin).
    """
    if crop:
        box = product_box(alpha)
        image, alpha = image.crop(box), alpha.crop(box)
    if bg_color is None:
        return _transparent_cutout(image, alpha)
    return Image.composite(image, Image.new("RGB", image.size, bg_color), alpha)


def _transparent_cutout(image: Image.Image, alpha: Image.Image) -> Image.Image:
    """RGBA with the colour of fully transparent pixels set to black.

    Invisible either way, but the backdrop's noise under them makes PNG files far larger and slower to
    encode. Pillow's own loops rather than numpy's: they are faster, which matters on the serving path.
    """
    visible = alpha.point(_VISIBLE)
    cutout = Image.composite(image, Image.new("RGB", image.size), visible)
    cutout.putalpha(alpha)
    return cutout


_VISIBLE = [0] + [255] * 255  # a lookup table: 255 wherever alpha > 0
