"""Product features, and the k-means proposal of a product type from them.

**Features.** One pair becomes a short vector of interpretable numbers (`FEATURE_NAMES`) computed at a
small working resolution: product types show at 160 pixels as well as at 1,500. Shape is measured in the
product's bounding box, so it does not depend on where the product lies or how large it is; colour is
CIELAB, where distances (ΔE*ab) match what people see.

**Proposal** (`propose_clusters`). The six types differ in two unrelated ways, so k-means runs twice
(one k-means over all the features mixed the two up: purity 0.75-0.90 on the synthetic catalogue,
against 0.91-0.97 this way):

1. Colour. Light-coloured products come in every outline; only their low contrast with the backdrop
   sets them apart. k-means with 2 clusters on log ΔE*ab (product against backdrop) finds the
   low-contrast group; it is `light_coloured` if its centre is under `LIGHT_CONTRAST_LIMIT`, else the
   data has no light products.
2. Silhouette. The other pairs: standardised `SHAPE_FEATURES`, k-means with ``k - 1`` clusters. Each
   cluster takes a type by Hungarian matching of its centroid against `SILHOUETTE_PROTOTYPES` (squared
   distance in the data's standard deviations). With more clusters than types the types repeat, so each
   cluster gets its nearest free type; with fewer, some types stay empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from cutout.data.synth import PRODUCT_TYPES

SHAPE_SIDE = 160  # the mask is box-reduced to about this many pixels along its longer side
COLOUR_SIDE = 80  # the photo is reduced further: a mean colour needs few pixels

# What the silhouette clustering reads. Depths are in box widths from the top, so that a dress and a shirt,
# which differ only in length, measure alike where their sleeves are.
SHAPE_FEATURES: tuple[str, ...] = (
    "aspect_log",  # log(height / width) of the bounding box: trousers are tall, shorts and caps wide
    "fill",  # product area / bounding-box area
    "top_width",  # filled fraction of the box width in the top tenth: waistband, shoulders, or straps
    "shoulder_width",  # the same at a depth of 0.2-0.3 box widths: across a top's short sleeves
    "sleeve_runs",  # pieces per row at a depth of 0.3-0.6 box widths: sleeve, body, sleeve = 3
    "hem_runs",  # pieces per row in the bottom third: two legs = 2, a hem = 1
    "leg_gap",  # how far up from the bottom the middle stays open, over the height: the legs
)
# Colour, for the light-coloured type and for people reading the centroids; the hue (a*, b*) is not
# clustered on: it says nothing about a product's type.
COLOUR_FEATURES: tuple[str, ...] = ("lightness", "colour_a", "colour_b", "backdrop_lightness", "contrast")
FEATURE_NAMES: tuple[str, ...] = SHAPE_FEATURES + COLOUR_FEATURES

LIGHT_TYPE = "light_coloured"
# ΔE*ab, between the contrast of light products on their backdrops and that of the others. A low-contrast
# group centred above it is not light products but the flat end of a catalogue without any.
LIGHT_CONTRAST_LIMIT = 20.0
N_INIT = 10  # k-means restarts: the silhouette clustering has a few local optima
# One thread: the k-means input is small, and OpenMP's threads, spinning on a shared machine's few cores,
# make it far slower rather than faster.
KMEANS_THREADS = 1
# What each silhouette type looks like in `SHAPE_FEATURES` (aspect_log, fill, top_width, shoulder_width,
# sleeve_runs, hem_runs, leg_gap), written from the garments' geometry: the names the clusters can take.
SILHOUETTE_PROTOTYPES: dict[str, tuple[float, ...]] = {
    "long_pants": (0.7, 0.8, 0.75, 0.9, 1.3, 2.0, 0.65),  # twice as tall as wide; legs open to the crotch
    "shorts": (-0.3, 0.8, 0.55, 0.8, 1.5, 1.9, 0.35),  # wider than tall; short open legs
    "short_sleeve_top": (0.1, 0.6, 0.35, 0.95, 1.6, 1.0, 0.0),  # widest across the sleeves; one hem
    "long_sleeve_top": (-0.1, 0.55, 0.25, 0.65, 2.9, 1.8, 0.0),  # sleeve, body, sleeve side by side
    "swimwear_accessory": (0.15, 0.5, 0.1, 0.25, 1.75, 1.15, 0.0),  # straps and handles: a sparse top
}
MAPPING_RULE = (
    "light_coloured: the low-contrast group of a 2-means on log ΔE*ab (product against backdrop), if its "
    "centre is under light_contrast_limit. Others: k-means with k - 1 clusters on the standardised "
    "shape_features; clusters take types by Hungarian matching of centroids to the prototypes (squared "
    "distance in standard deviations), types repeating when clusters outnumber them."
)

# sRGB (D65) to CIE XYZ and the D65 white: the constants of IEC 61966-2-1 and CIE 15.
_RGB_TO_XYZ = np.array(
    [[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]]
)
_WHITE_XYZ = np.array([0.95047, 1.0, 1.08883])


class FeatureError(ValueError):
    """A pair whose features are undefined (no product, or no backdrop); `reason` goes to rejects."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(reason, message)  # all arguments to ValueError: picklable across processes
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.message} ({self.reason})"


@dataclass
class Clustering:
    """The k-means proposal for a set of pairs: a cluster per pair and a type per cluster."""

    cluster_ids: np.ndarray  # per pair
    cluster_types: list[str]  # per cluster id; the last cluster is the light-coloured one
    typicality: np.ndarray  # per pair, its distance from its cluster's centre (small: typical)


def extract_features(image: Image.Image, mask: np.ndarray) -> np.ndarray:
    """Describe one product by the numbers of `FEATURE_NAMES`.

    Args:
        image: The RGB photo.
        mask: Boolean, the photo's (height, width), True on the product.

    Returns:
        A float64 vector in the order of `FEATURE_NAMES`.

    Raises:
        FeatureError: ``size_mismatch``, ``empty_mask``, or ``full_mask`` (no backdrop to compare with).
    """
    if mask.shape != (image.height, image.width):
        raise FeatureError("size_mismatch", f"mask {mask.shape[::-1]} and photo {image.size} differ in size")
    if not mask.any():
        raise FeatureError("empty_mask", "the mask has no product pixels")
    if mask.all():
        raise FeatureError("full_mask", "the mask covers the whole photo: no backdrop to compare with")
    shape = _reduce_mask(mask, SHAPE_SIDE) >= 0.5
    if not shape.any():  # a product thinner than the working resolution: measure it at full size
        shape = mask
    return np.concatenate([_shape_features(shape), _colour_features(image, mask)])


# --- shape -------------------------------------------------------------------------------------


def _reduce_mask(mask: np.ndarray, side: int) -> np.ndarray:
    """Coverage (0-1) of the mask box-averaged by a whole factor, to about ``side`` pixels."""
    factor = max(1, max(mask.shape) // side)
    return np.asarray(Image.fromarray(mask.astype(np.uint8) * 255).reduce(factor), np.float32) / 255.0


def _bounding_box(mask: np.ndarray) -> np.ndarray:
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return mask[rows[0] : rows[-1] + 1, columns[0] : columns[-1] + 1]


def _shape_features(mask: np.ndarray) -> np.ndarray:
    box = _bounding_box(mask)
    height, width = box.shape
    filled = box.mean(axis=1)  # per row, the fraction of the box width that is product
    # A piece starts wherever a product pixel follows background (or the box's left edge).
    runs = (np.diff(box.astype(np.int8), axis=1, prepend=0) == 1).sum(axis=1)

    def rows_at(top: float, bottom: float) -> slice:
        """Rows at these depths (in box widths); the bottom row when the box is shorter than that."""
        first = min(int(top * width), height - 1)
        return slice(first, max(int(bottom * width), first + 1))

    return np.array([
        np.log(height / width),
        box.mean(),
        filled[: max(1, height // 10)].mean(),
        filled[rows_at(0.2, 0.3)].mean(),
        runs[rows_at(0.3, 0.6)].mean(),
        runs[-max(1, height // 3) :].mean(),
        _leg_gap(box),
    ])  # fmt: skip


def _leg_gap(box: np.ndarray) -> float:
    """How far up from the bottom the product stays open in its middle, over the box height.

    Per row the middle is the product's own centre (mean column): between two legs it falls on the
    backdrop, on a body it falls on the fabric, so a tilted pair of trousers still reads as open. The open
    stretch must reach the bottom fifth (one leg often ends lower than the other). Trousers are open
    up to the crotch, shorts for less, tops, dresses, swimsuits and bags not at all.
    """
    height, width = box.shape
    centres = np.rint((box * np.arange(width)).sum(axis=1) / box.sum(axis=1).clip(min=1)).astype(int)
    open_rows = ~box[np.arange(height), centres]
    low = int(height * 0.8)
    open_low = np.flatnonzero(open_rows[low:])
    if not len(open_low):
        return 0.0
    closed_above = np.flatnonzero(~open_rows[: low + open_low[-1]])
    crotch = closed_above[-1] + 1 if len(closed_above) else 0
    return (height - crotch) / height


# --- the proposal --------------------------------------------------------------------------------


def propose_clusters(features: np.ndarray, k: int = 6, seed: int = 0) -> Clustering:
    """Propose a cluster and a type for every row of `features` (in `FEATURE_NAMES` order); see the module.

    Cluster ids follow the order of the types in `PRODUCT_TYPES` (with k = 6, id i is type i), so that
    they read the same from run to run; the light-coloured cluster is the last.
    """
    with threadpool_limits(KMEANS_THREADS):
        return _propose_clusters(features, k, seed)


def _propose_clusters(features: np.ndarray, k: int, seed: int) -> Clustering:
    light = _light_members(features[:, FEATURE_NAMES.index("contrast")], seed)
    shape = features[~light][:, [FEATURE_NAMES.index(name) for name in SHAPE_FEATURES]]
    if len(shape) < k - 1:
        raise ValueError(
            f"{len(shape)} readable pairs besides light-coloured ones: too few for {k - 1} clusters"
        )
    scaler = StandardScaler().fit(shape)
    standardised = scaler.transform(shape)
    kmeans = KMeans(k - 1, n_init=N_INIT, random_state=seed).fit(standardised)
    names = _name_silhouette_clusters(kmeans.cluster_centers_, scaler)
    order = sorted(range(k - 1), key=lambda c: (PRODUCT_TYPES.index(names[c]), c))
    cluster_ids, typicality = np.full(len(features), k - 1), np.zeros(len(features))
    cluster_ids[~light] = np.argsort(order)[kmeans.labels_]
    typicality[~light] = kmeans.transform(standardised).min(axis=1)
    contrast = np.log(features[light, FEATURE_NAMES.index("contrast")].clip(min=1.0))
    typicality[light] = np.abs(contrast - np.median(contrast)) if len(contrast) else 0.0
    return Clustering(cluster_ids, [names[c] for c in order] + [LIGHT_TYPE], typicality)


def describe_clusters(features: np.ndarray, clustering: Clustering) -> dict:
    """The proposal for people and for the record: the rule, and each cluster's type, size and centroid.

    Centroids are the mean of all `FEATURE_NAMES` over the cluster's pairs, in the features' own units.
    """
    clusters = []
    for cluster_id, name in enumerate(clustering.cluster_types):
        members = features[clustering.cluster_ids == cluster_id]
        centroid = members.mean(axis=0).round(4).tolist() if len(members) else [None] * len(FEATURE_NAMES)
        clusters.append({"cluster_id": cluster_id, "type": name, "size": len(members),
                         "centroid": dict(zip(FEATURE_NAMES, centroid, strict=True))})  # fmt: skip
    return {"feature_names": FEATURE_NAMES, "shape_features": SHAPE_FEATURES, "mapping_rule": MAPPING_RULE,
            "light_contrast_limit": LIGHT_CONTRAST_LIMIT, "prototypes": SILHOUETTE_PROTOTYPES,
            "clusters": clusters}  # fmt: skip


def _light_members(contrast: np.ndarray, seed: int) -> np.ndarray:
    """True for the low-contrast group of a 2-means on log ΔE, if its centre is under the limit."""
    log_contrast = np.log(contrast.clip(min=1.0))[:, None]  # ΔE under 1 is invisible anyway
    if len(np.unique(log_contrast)) < 2:
        return np.zeros(len(contrast), bool)
    kmeans = KMeans(2, n_init=N_INIT, random_state=seed).fit(log_contrast)
    low = int(np.argmin(kmeans.cluster_centers_[:, 0]))
    if math.exp(kmeans.cluster_centers_[low, 0]) > LIGHT_CONTRAST_LIMIT:
        return np.zeros(len(contrast), bool)
    return kmeans.labels_ == low


def _name_silhouette_clusters(centres: np.ndarray, scaler: StandardScaler) -> list[str]:
    """Hungarian matching of standardised centres to the prototypes; types repeat for extra clusters."""
    names = list(SILHOUETTE_PROTOTYPES)
    prototypes = scaler.transform(np.array(list(SILHOUETTE_PROTOTYPES.values())))
    cost = ((centres[:, None, :] - prototypes[None]) ** 2).sum(axis=2)
    repeats = math.ceil(len(centres) / len(names))
    rows, columns = linear_sum_assignment(np.tile(cost, (1, repeats)))
    chosen = dict(zip(rows.tolist(), columns.tolist(), strict=True))
    return [names[chosen[row] % len(names)] for row in range(len(centres))]


# --- colour ------------------------------------------------------------------------------------


def _colour_features(image: Image.Image, mask: np.ndarray) -> np.ndarray:
    """Product L*, a*, b*, backdrop L*, and their ΔE*ab; edge pixels (part product) count for neither."""
    factor = max(1, max(image.size) // COLOUR_SIDE)
    pixels = np.asarray(image.convert("RGB").reduce(factor), np.float64) / 255.0
    coverage = _reduce_mask(mask, COLOUR_SIDE)[: pixels.shape[0], : pixels.shape[1]]
    product = _mean_lab(pixels, coverage >= 0.99, fallback=coverage >= 0.5)
    backdrop = _mean_lab(pixels, coverage <= 0.01, fallback=coverage < 0.5)
    contrast = float(np.linalg.norm(product - backdrop))
    return np.array([*product, backdrop[0], contrast])


def _mean_lab(pixels: np.ndarray, where: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Mean CIELAB over the chosen pixels, else the fallback ones (a thin product has no interior)."""
    chosen = pixels[where] if where.any() else pixels[fallback]
    if not len(chosen):  # a sliver smaller than one working pixel
        chosen = pixels.reshape(-1, 3)
    return srgb_to_lab(chosen).mean(axis=0)


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Convert sRGB values in [0, 1], shape (..., 3), to CIELAB (D65), in float (ImageCms gives 8 bits)."""
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE_XYZ
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lightness = 116 * f[..., 1] - 16
    return np.stack([lightness, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)
