"""A quality score for a predicted mask without ground truth: how sure the network is of its own cutout.

The score is the IoU of two masks read off the fused probability map p (at the network's resolution):

    sure      pixels with p ≥ 0.9, less stray specks (see below)
    possible  pixels with p > 0.1, plus small holes (see below)
    score     |sure| / |possible|  in [0, 1]

When the two agree, every threshold between 0.1 and 0.9 gives the same cutout, and the mask's only
doubtful pixels are a thin edge: the score is high. Wide uncertain bands (blurry or hesitant edges, a
half-found sleeve, a shadow the model is unsure of) make `possible` grow away from `sure`, in
proportion to the product's area, which is how they cost IoU; the score falls. Being a ratio of
areas, it reads the same at 128 or 320 pixels and for small or large products. A faint veil
(0.1 < p < 0.5) over the background leaves the IoU at 0.5 alone, but the cutout's alpha is p, so
it shows as a grey film around the product: the score counts it too.

Two crisp mistakes leave no uncertain band, so they are counted as doubtful by shape:
- **stray specks**: parts of the mask `p ≥ 0.5` under 5% of its largest part (a product's real
  second piece, as in a bikini, is far larger); they leave `sure`.
- **small holes**: background enclosed by the mask and under 5% of its area (a pin-hole in a garment
  is a miss; a bag's handle loop is far larger); they join `possible`.

An empty mask (under 0.5% of the image: nothing found) or a nearly full one (over 98%: the background
was not removed) scores 0. A map all at 0.5 has no sure pixel and scores 0 as well.

On held-out photos the score ranks masks by true IoU well at every input size tried, and a threshold
chosen on one set catches most bad masks of another; wider bands or the expected IoU under p ranked
them no better, and agreement with the side outputs helped too little to widen the predictor's
interface for (figures: `docs/benchmarks.md`). What the score cannot see is a mask that is crisp and
wrong (a confidently cut-off part): that needs the photo.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

UNCERTAIN_BAND = 0.1  # p in (0.1, 0.9) is doubtful: sure is p ≥ 1 − band, possible is p > band
SPECK_SHARE = 0.05  # parts under 5% of the largest part, holes under 5% of the mask, are doubtful
MIN_FOREGROUND = 0.005  # below this share of the image the mask is empty: nothing was found
MAX_FOREGROUND = 0.98  # above it the mask is full: the background was not removed


@dataclass(frozen=True)
class ConfidenceTerms:
    """The pixel counts behind one confidence score (at the map's resolution).

    Attributes:
        pixels: the map's size, H × W.
        foreground: pixels of the mask p ≥ 0.5.
        sure: pixels with p ≥ 1 − band, not in a stray speck.
        possible: pixels with p > band, or in a small hole.
        specks: mask pixels in stray specks.
        holes: pixels of small holes.
    """

    pixels: int
    foreground: int
    sure: int
    possible: int
    specks: int
    holes: int

    @property
    def score(self) -> float:
        """|sure| / |possible|, or 0 for an empty or nearly full mask."""
        share = self.foreground / self.pixels
        if not MIN_FOREGROUND <= share <= MAX_FOREGROUND or self.possible == 0:
            return 0.0
        return self.sure / self.possible


def _checked(probabilities: np.ndarray) -> np.ndarray:
    """The map as float32 in [0, 1] (NaN counts as undecided, 0.5), or a ValueError naming its shape."""
    probabilities = np.asarray(probabilities, dtype=np.float32)
    if probabilities.ndim != 2 or probabilities.size == 0:
        raise ValueError(f"need an H×W probability map, got shape {probabilities.shape}")
    return np.clip(np.nan_to_num(probabilities, nan=0.5), 0.0, 1.0)


def _stray_specks(mask: np.ndarray) -> np.ndarray:
    """The parts of `mask` (8-connected) smaller than SPECK_SHARE of its largest part."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    if count < 2:
        return np.zeros_like(mask)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0  # the background is no part
    small = sizes < SPECK_SHARE * sizes.max()
    small[0] = False
    return small[labels]


def _small_holes(mask: np.ndarray) -> np.ndarray:
    """Background regions enclosed by `mask`, each smaller than SPECK_SHARE of the mask's area."""
    enclosed = ndimage.binary_fill_holes(mask) & ~mask
    labels, count = ndimage.label(enclosed)
    if count == 0:
        return enclosed
    sizes = np.bincount(labels.ravel())
    small = sizes < SPECK_SHARE * np.count_nonzero(mask)
    small[0] = False
    return small[labels]


def confidence_terms(probabilities: np.ndarray, band: float = UNCERTAIN_BAND) -> ConfidenceTerms:
    """The pixel counts that `mask_confidence` scores (see the module's docstring).

    Args:
        probabilities: the H×W fused probability map in [0, 1] at the network's resolution.
        band: the uncertain band's lower edge: p in (band, 1 − band) is doubtful.

    Raises:
        ValueError: when the map is not 2-D or is empty, or `band` is outside (0, 0.5).
    """
    if not 0.0 < band < 0.5:
        raise ValueError(f"band must lie in (0, 0.5), got {band}")
    probabilities = _checked(probabilities)
    mask = probabilities >= 0.5
    specks, holes = _stray_specks(mask), _small_holes(mask)
    sure = (probabilities >= 1.0 - band) & ~specks
    possible = (probabilities > band) | holes
    return ConfidenceTerms(
        pixels=probabilities.size,
        foreground=int(np.count_nonzero(mask)),
        sure=int(np.count_nonzero(sure)),
        possible=int(np.count_nonzero(possible)),
        specks=int(np.count_nonzero(specks)),
        holes=int(np.count_nonzero(holes)),
    )


def mask_confidence(probabilities: np.ndarray, band: float = UNCERTAIN_BAND) -> float:
    """A confidence in [0, 1] that a predicted mask is good, without ground truth; higher is better.

    The IoU of the pixels the model is sure of (p ≥ 0.9, less stray specks) with those it cannot rule
    out (p > 0.1, plus small holes); 0 for an empty or nearly full mask. See the module's docstring.

    Args:
        probabilities: the H×W float fused probability map in [0, 1] at the network's resolution
            (before upscaling to the photo); any size.
        band: the uncertain band's lower edge: p in (band, 1 − band) is doubtful.

    Returns:
        The score, in [0, 1].

    Raises:
        ValueError: when the map is not 2-D or is empty, or `band` is outside (0, 0.5).
    """
    return confidence_terms(probabilities, band).score
