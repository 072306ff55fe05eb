"""Content checks for photo/mask pairs: does the mask belong to the photo, and have we seen the photo?

`edge_contrast` tells a mask drawn for this photo from one drawn for another; `perceptual_hash` finds
copies of a shot (re-encoded, re-toned, rescaled); `content_hash` finds exact copies. Used by the clean
step; small, and testable on their own.
"""

from __future__ import annotations

import hashlib

import numpy as np
from PIL import Image
from scipy import fft, ndimage

from cutout.data.io import mask_to_image
from cutout.data.manifest import REAL_DOMAIN

# Edge contrast below this means the mask's outline does not follow the photo's edges (see
# `edge_contrast`); calibrated on synthetic pairs with swapped masks and on light-coloured products.
CONTENT_MISMATCH_BELOW = 2.0
# Real photos (the manifest's `domain: real`) have busy backdrops whose edges drown the outline's: a lower
# bar keeps nearly all of their true pairs and still catches nearly every mask of another photo.
REAL_CONTENT_MISMATCH_BELOW = 1.4


def content_mismatch_threshold(domain: str | None) -> float:
    """The edge contrast below which a pair of this domain counts as a mask of another photo."""
    return REAL_CONTENT_MISMATCH_BELOW if domain == REAL_DOMAIN else CONTENT_MISMATCH_BELOW


# pHash bits (of 64) that may differ for two photos to count as the same shot: enough for nearly every
# re-encoded, re-toned or downscaled copy, while distinct photos almost never come that close.
NEAR_DUPLICATE_BITS = 6
WORKING_SIZE = 160  # the content check works at this resolution: fast, and above pixel noise


def resize_square(image: Image.Image, size: int) -> Image.Image:
    """Area-average when shrinking (U²-Net's input is a plain square resize); interpolate when growing."""
    shrinking = image.width >= size and image.height >= size
    return image.resize((size, size), Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR)


def resize_mask(levels: Image.Image, size: int) -> np.ndarray:
    """Resample the mask's levels, then threshold at half: a pixel is foreground if mostly covered."""
    return np.asarray(resize_square(levels, size)) >= 128


def edge_contrast(photo: Image.Image, mask: np.ndarray) -> float:
    """How much stronger the photo's edges are on the mask's outline than elsewhere.

    The median gradient magnitude of the photo on a 2-pixel band around the mask's outline, divided
    by its mean everywhere else, at `WORKING_SIZE`. A mask drawn for this photo scores well above 1;
    a mask of another photo scores about 1. The frame's border is not an outline.

    Args:
        photo: The RGB photo.
        mask: Its boolean mask, any size (resampled to the working size).

    Returns:
        The ratio; 0.0 for a mask with no outline.
    """
    working = min(WORKING_SIZE, photo.width, photo.height)
    grey = np.asarray(photo.convert("L").resize((working, working), Image.Resampling.BOX), np.float32)
    small_mask = resize_mask(mask_to_image(mask), working)
    gradient = np.hypot(ndimage.sobel(grey, axis=0), ndimage.sobel(grey, axis=1))
    outline = ndimage.binary_dilation(small_mask) & ~ndimage.binary_erosion(small_mask, border_value=1)
    if not outline.any() or outline.all():
        return 0.0
    # The median: a wrong outline that crosses the product's edges here and there stays low.
    return float(np.median(gradient[outline]) / max(float(gradient[~outline].mean()), 1e-6))


def perceptual_hash(photo: Image.Image) -> int:
    """A 64-bit DCT perceptual hash, on the frequencies that tell studio shots apart.

    Classic pHash keeps the 8×8 lowest DCT frequencies of a 32×32 grey thumbnail. In a catalogue
    they encode the shared composition (a centred product on a light backdrop), so distinct photos
    hash close together. The next band (DCT frequencies 8-15 of a 128×128 thumbnail) carries the
    product's own outline and detail, and a re-encoded or re-toned copy keeps its signs (see
    `NEAR_DUPLICATE_BITS`). Each bit: coefficient above the band's median.
    """
    thumbnail = np.asarray(photo.convert("L").resize((128, 128), Image.Resampling.LANCZOS), np.float64)
    band = fft.dctn(thumbnail, type=2, norm="ortho")[8:16, 8:16]
    bits = (band > np.median(band)).ravel()
    return int.from_bytes(np.packbits(bits).tobytes(), "big")


def content_hash(photo: Image.Image) -> int:
    """A 64-bit hash of the decoded, resized pixels: equal for the same picture in any file.

    At the output size because that is what training sees, and hashing fewer pixels is cheaper.
    """
    digest = hashlib.blake2b(np.array(photo.size, dtype=np.int64).tobytes(), digest_size=8)
    digest.update(photo.tobytes())
    return int.from_bytes(digest.digest(), "big")
