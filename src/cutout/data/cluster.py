"""The cluster step: a new dataset whose pairs carry a product type and a train/validation split.

k-means proposes (`cutout.data.features.propose_clusters`: features, the two k-means and how clusters
are named), and an overrides file (id → type) that a person edits decides for the pairs it names. The
output is a new dataset: the pair files copied, manifest records with ``cluster``, ``cluster_id``,
``cluster_source`` and ``split``; ``clusters.json``, ``summary.json``, ``rejects.jsonl``, and a
contact sheet in ``report/`` for the person who writes the overrides.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Set
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import numpy as np
from PIL import Image
from sklearn.metrics import adjusted_rand_score
from sklearn.metrics.cluster import contingency_matrix

from cutout.data.features import (
    FEATURE_NAMES,
    Clustering,
    FeatureError,
    describe_clusters,
    extract_features,
    propose_clusters,
)
from cutout.data.gallery import GalleryRow, write_gallery
from cutout.data.io import ImageError, read_image, read_mask
from cutout.data.manifest import REJECTS_NAME, SOURCE_AUTO, manifest_uri, read_manifest
from cutout.data.synth import PRODUCT_TYPES
from cutout.platform import storage
from cutout.platform.parallel import ordered_map

TYPICAL_EXAMPLES, OUTLYING_EXAMPLES = 4, 2  # contact-sheet photos per cluster: nearest and farthest
THUMBNAIL = 160
COPY_THREADS = 8  # copies wait on the disk or the network, not on the CPU
OVERRIDE_FIELDS = ("id", "type")


@dataclass
class ClusterSummary:
    """What `cluster_dataset` wrote.

    Attributes:
        count: Pairs in the input manifest; ``kept + rejected == count``.
        kept, rejected: Pairs clustered, and pairs unreadable (see ``rejects``, per reason).
        sizes: Pairs per product type after overrides, every type of `PRODUCT_TYPES` listed.
        splits: Pairs per split (``train``, ``val``); ``val_sizes``: validation pairs per type.
        overrides_applied: Pairs whose type came from the overrides file; ``overrides_changed``: those
            where it differs from the k-means proposal.
        purity, adjusted_rand_index: Of the k-means proposal against the records' ``product_type``,
            when every kept record has one; ``type_accuracy``: share of final types equal to it.
    """

    count: int = 0
    kept: int = 0
    rejected: int = 0
    sizes: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    val_sizes: dict[str, int] = field(default_factory=dict)
    rejects: dict[str, int] = field(default_factory=dict)
    overrides_applied: int = 0
    overrides_changed: int = 0
    purity: float | None = None
    adjusted_rand_index: float | None = None
    type_accuracy: float | None = None


class _Pair(NamedTuple):
    """One pair's files, in the input and in the output dataset."""

    id: str
    image: str
    mask: str
    image_out: str
    mask_out: str
    product_type: str | None  # the true type, where the data has one (synthetic data does)
    train_only: bool  # an auto-accepted pair: its mask is a model's own, no fair test of a model


@dataclass
class Assignment:
    """The outcome for the kept pairs, in manifest order."""

    pairs: list[_Pair]
    clustering: Clustering
    types: list[str]  # after overrides
    splits: list[str]
    overridden: set[str]  # ids whose type came from the overrides file


def cluster_dataset(
    src: str,
    dst: str,
    k: int = 6,
    overrides: str | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    on_progress: Callable[[], None] | None = None,
) -> ClusterSummary:
    """Assign every pair of a dataset to a product type and a train/val split, into a new dataset.

    Args:
        src: Dataset folder or ``s3://`` prefix (``images/``, ``masks/``, ``manifest.jsonl``); read only.
        dst: Where the new dataset goes (local or ``s3://``), outside ``src``.
        k: Number of k-means clusters, the light-coloured one included (6: one per type).
        overrides: A JSON object or CSV (``id,type``) file of corrections; they win over k-means.
        val_fraction: Share of each cluster that goes to the validation split.
        seed: Seed for k-means; the output depends only on the input, ``k``, the overrides and this.
        on_progress: Called once per input pair, as it is measured.

    Returns:
        Counts per type, split and reject reason, and the agreement with true types where known.

    Raises:
        ValueError: for bad arguments, a bad overrides file (naming the unknown ids or types), a
            manifest with repeated ids, or fewer readable pairs than clusters.
    """
    _check_arguments(src, dst, k, val_fraction)
    pairs = _pair_index(src, dst)
    corrections = load_overrides(overrides, {pair.id for pair in pairs}) if overrides else {}
    features, kept, rejects = _collect(pairs, ordered_map(_measure_pair, pairs), on_progress)
    clustering = propose_clusters(features, k, seed)
    proposed = [clustering.cluster_types[c] for c in clustering.cluster_ids]
    types = [corrections.get(pair.id, name) for pair, name in zip(kept, proposed, strict=True)]
    train_only = {pair.id for pair in kept if pair.train_only}
    splits = assign_splits([pair.id for pair in kept], types, val_fraction, train_only)
    assignment = Assignment(kept, clustering, types, splits, {p.id for p in kept if p.id in corrections})
    storage.write_text(storage.join(dst, REJECTS_NAME), "".join(json.dumps(r) + "\n" for r in rejects))
    summary = _summarise(len(pairs), rejects, assignment)
    clusters_file = {"k": k, "seed": seed, **describe_clusters(features, clustering)}
    storage.write_text(storage.join(dst, "clusters.json"), json.dumps(clusters_file, indent=2))
    storage.write_text(storage.join(dst, "summary.json"), json.dumps(asdict(summary), indent=2))
    write_contact_sheet(dst, assignment, summary)
    _write_manifest(src, dst, assignment)  # last: a dataset with a manifest is complete
    return summary


def _check_arguments(src: str, dst: str, k: int, val_fraction: float) -> None:
    if k < 2:
        raise ValueError(f"k must be at least 2 (the light-coloured cluster and one other), got {k}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    source, target = (uri.rstrip("/") if storage.is_s3(uri) else os.path.realpath(uri) for uri in (src, dst))
    if target == source or target.startswith(source + "/"):
        raise ValueError(f"dst {dst!r} is or lies inside src {src!r}: a step never writes into its input")


# --- reading and measuring ---------------------------------------------------------------------


def _pair_index(src: str, dst: str) -> list[_Pair]:
    """Every pair of the manifest with its file locations; repeated ids or missing paths are errors."""
    pairs, seen = [], set()
    for record in read_manifest(src):
        pair_id = str(record.get("id"))
        if pair_id in seen or not {"id", "image", "mask"} <= record.keys():
            problem = "appears twice" if pair_id in seen else "lacks an id, image or mask"
            raise ValueError(f"{manifest_uri(src)}: the record of id {pair_id!r} {problem}")
        seen.add(pair_id)
        image, mask = record["image"], record["mask"]
        inputs = storage.join(src, image), storage.join(src, mask)
        outputs = storage.join(dst, image), storage.join(dst, mask)
        pairs.append(_Pair(pair_id, *inputs, *outputs, record.get("product_type"),
                           record.get("source") == SOURCE_AUTO))  # fmt: skip
    return pairs


def _measure_pair(pair: _Pair) -> np.ndarray | ImageError | FeatureError:
    """Worker task: one pair's features, or the error that says why it has none."""
    try:
        return extract_features(read_image(pair.image), read_mask(pair.mask))
    except (ImageError, FeatureError) as error:
        return error


def _copy_pair(pair: _Pair) -> None:
    storage.copy(pair.image, pair.image_out)
    storage.copy(pair.mask, pair.mask_out)


def _collect(
    pairs: list[_Pair],
    measured: Iterable[np.ndarray | ImageError | FeatureError],
    on_progress: Callable | None,
) -> tuple[np.ndarray, list[_Pair], list[dict]]:
    """The feature matrix of the readable pairs (only it is kept: a few numbers a pair), and rejects.

    Kept pairs are copied into the new dataset meanwhile, on threads of this process: a copy mostly
    waits (on fsync, or on S3), so threads overlap those waits with the workers' computing.
    """
    rows, kept, rejects, copies = [], [], [], deque()
    with ThreadPoolExecutor(COPY_THREADS) as copier:
        for pair, result in zip(pairs, measured, strict=True):
            if isinstance(result, ImageError | FeatureError):
                rejects.append({"id": pair.id, "reason": result.reason, "message": result.message})
            else:
                rows.append(result)
                kept.append(pair)
                copies.append(copier.submit(_copy_pair, pair))
            while copies and (copies[0].done() or len(copies) > 4 * COPY_THREADS):
                copies.popleft().result()  # raises a failed copy's error; bounds the queue
            if on_progress is not None:
                on_progress()
        for copy in copies:
            copy.result()
    return np.array(rows).reshape(-1, len(FEATURE_NAMES)), kept, rejects


# --- splits and overrides ----------------------------------------------------------------------


def assign_splits(
    ids: list[str], clusters: list[str], val_fraction: float, train_only: Set[str] = frozenset()
) -> list[str]:
    """``train``/``val`` per pair, stratified: in each cluster the pairs whose id hashes lowest are val.

    A hash of the id, not a random draw, so that the split is the same on every run and a pair stays
    in its split when others are added. Clusters of two or more keep at least one pair in each split.
    Pairs in `train_only` (auto-accepted: the champion's own masks) always train: in the validation split
    they would score the champion as perfect and every candidate as worse.
    """
    members: dict[str, list[int]] = {}
    for index, cluster in enumerate(clusters):
        if ids[index] not in train_only:
            members.setdefault(cluster, []).append(index)
    splits = ["train"] * len(ids)
    for indices in members.values():
        count = len(indices)
        wanted = round(val_fraction * count)
        if val_fraction > 0 and count >= 2:
            wanted = min(max(wanted, 1), count - 1)
        for index in sorted(indices, key=lambda i: hashlib.sha256(ids[i].encode()).digest())[:wanted]:
            splits[index] = "val"
    return splits


def load_overrides(uri: str, known_ids: set[str]) -> dict[str, str]:
    """Read an overrides file: a JSON object ``{id: type}`` or CSV rows ``id,type`` (header optional).

    Raises:
        ValueError: naming the ids that are not in the dataset, the types that are not product
            types, an id given twice, or a malformed line.
    """
    text = storage.read_text(uri)
    is_json = text.lstrip().startswith(("{", "["))
    corrections = _parse_json_overrides(uri, text) if is_json else _parse_csv(uri, text)
    bad_types = sorted({t for t in corrections.values() if t not in PRODUCT_TYPES})
    if bad_types:
        raise ValueError(f"{uri}: unknown product types {bad_types}; expected one of {list(PRODUCT_TYPES)}")
    unknown = sorted(set(corrections) - known_ids)
    if unknown:
        more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
        raise ValueError(
            f"{uri}: {len(unknown)} ids are not in the dataset: {', '.join(map(repr, unknown[:10]))}{more}"
        )
    return corrections


def _parse_json_overrides(uri: str, text: str) -> dict[str, str]:
    try:
        corrections = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"{uri}: not valid JSON ({error.msg}, line {error.lineno})") from None
    if not isinstance(corrections, dict) or not all(isinstance(v, str) for v in corrections.values()):
        raise ValueError(f"{uri}: expected a JSON object of id → type name")
    return {str(key): value for key, value in corrections.items()}


def _parse_csv(uri: str, text: str) -> dict[str, str]:
    corrections: dict[str, str] = {}
    for number, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        cells = [cell.strip() for cell in row]
        if not any(cells) or (number == 1 and tuple(cells) == OVERRIDE_FIELDS):
            continue
        if len(cells) != 2 or not all(cells):
            raise ValueError(f"{uri}, line {number}: expected 'id,type', got {row!r}")
        if cells[0] in corrections:
            raise ValueError(f"{uri}, line {number}: id {cells[0]!r} is listed twice")
        corrections[cells[0]] = cells[1]
    return corrections


# --- writing -----------------------------------------------------------------------------------


def _write_manifest(src: str, dst: str, assignment: Assignment) -> None:
    """Second pass over the input manifest: each kept record plus its cluster and split, spooled locally."""
    row_of = {pair.id: row for row, pair in enumerate(assignment.pairs)}
    with tempfile.TemporaryDirectory(prefix="cutout-cluster-") as spool:
        with open(os.path.join(spool, "manifest.jsonl"), "w", encoding="utf-8") as out:
            for record in read_manifest(src):
                if (row := row_of.get(str(record["id"]))) is not None:
                    source = "override" if assignment.pairs[row].id in assignment.overridden else "kmeans"
                    fields = {"cluster": assignment.types[row], "cluster_source": source,
                              "cluster_id": int(assignment.clustering.cluster_ids[row]),  # the proposal
                              "split": assignment.splits[row]}  # fmt: skip
                    out.write(json.dumps({**record, **fields}) + "\n")
        storage.copy(out.name, manifest_uri(dst))


def _summarise(count: int, rejects: list[dict], assignment: Assignment) -> ClusterSummary:
    types, clustering = assignment.types, assignment.clustering
    summary = ClusterSummary(count, len(types), len(rejects))
    summary.sizes = {name: types.count(name) for name in PRODUCT_TYPES}
    summary.splits = {name: assignment.splits.count(name) for name in ("train", "val")}
    summary.val_sizes = dict(Counter(t for t, s in zip(types, assignment.splits, strict=True) if s == "val"))
    summary.rejects = dict(Counter(reject["reason"] for reject in rejects))
    summary.overrides_applied = len(assignment.overridden)
    proposed = [clustering.cluster_types[c] for c in clustering.cluster_ids]
    summary.overrides_changed = sum(t != p for t, p in zip(types, proposed, strict=True))
    truth = [pair.product_type for pair in assignment.pairs]
    if truth and all(truth):
        summary.purity = round(_purity(truth, clustering.cluster_ids), 4)
        summary.adjusted_rand_index = round(float(adjusted_rand_score(truth, clustering.cluster_ids)), 4)
        summary.type_accuracy = round(float(np.mean([t == u for t, u in zip(types, truth, strict=True)])), 4)
    return summary


def _purity(truth: list[str], cluster_ids: np.ndarray) -> float:
    """Share of pairs that belong to their cluster's most common true type."""
    return float(contingency_matrix(truth, cluster_ids).max(axis=0).sum() / len(truth))


def write_contact_sheet(dst: str, assignment: Assignment, summary: ClusterSummary) -> str:
    """``dst/report/index.html``: a row per k-means cluster with its most and least typical photos."""
    clustering, rows = assignment.clustering, []
    for cluster_id, name in enumerate(clustering.cluster_types):
        members = np.flatnonzero(clustering.cluster_ids == cluster_id)
        ordered = members[np.argsort(clustering.typicality[members], kind="stable")]
        moved = sum(assignment.types[row] != name for row in members)
        caption = f"{name} (cluster {cluster_id}): {len(members)} pairs"
        caption += f", {moved} moved by overrides" if moved else ""
        rows.append(GalleryRow(caption, _example_images([assignment.pairs[row] for row in ordered])))
    text = "After overrides: " + ", ".join(f"{name} {size}" for name, size in summary.sizes.items())
    if summary.purity is not None:
        text += f". k-means against true types: purity {summary.purity}, ARI {summary.adjusted_rand_index}"
    return write_gallery(storage.join(dst, "report"), "Product-type clusters", rows, text)


def _example_images(ordered: list[_Pair]) -> dict[str, Image.Image]:
    """A cluster's most typical and most outlying photos; blanks where it has too few."""
    typical, outlying = ordered[:TYPICAL_EXAMPLES], ordered[TYPICAL_EXAMPLES:][::-1][:OUTLYING_EXAMPLES]
    images = {f"typical {i + 1}": _thumbnail(typical, i) for i in range(TYPICAL_EXAMPLES)}
    return images | {f"outlying {i + 1}": _thumbnail(outlying, i) for i in range(OUTLYING_EXAMPLES)}


def _thumbnail(pairs: list[_Pair], index: int) -> Image.Image:
    if index >= len(pairs):
        return Image.new("RGB", (THUMBNAIL, THUMBNAIL), (240, 240, 240))
    image = read_image(pairs[index].image_out)
    image.thumbnail((THUMBNAIL, THUMBNAIL))
    return image
