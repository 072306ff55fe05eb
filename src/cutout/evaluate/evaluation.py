"""`cutout evaluate`: run a model over a dataset's held-out pairs, score every pair, write the report.

Pairs stream through in batches: memory holds the per-pair numbers and a dozen example thumbnails,
never the dataset's photos, so a 30,000-pair holdout evaluates like a 30-pair one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

from cutout.data.io import read_image, read_mask
from cutout.data.manifest import read_manifest, record_domain
from cutout.evaluate.metrics import ImageScore, score_image, summarize
from cutout.evaluate.report import ExamplesByDomain, make_example, write_report
from cutout.model.inference import MaskPredictor, predict_probabilities
from cutout.model.loader import load_predictor
from cutout.platform import storage

EXAMPLES = 6  # worst and best pairs shown in the report, each, per domain
DEFAULT_CLUSTER = "all"  # the cluster of pairs whose record has none
Scored = TypeVar("Scored")


@dataclass(frozen=True)
class EvaluationResult:
    """What `evaluate_model` measured and wrote.

    Attributes:
        metrics: the summary written to `metrics.json` (see `metrics.summarize`): `count`, `mean_iou`,
            `iou_ge_0.95`/`0.97`/`0.99`, `mean_mae`, `mean_max_fbeta`, `mean_boundary_iou`, and the same
            per cluster under `per_cluster`.
        report: the URI of the report's `index.html`.
    """

    metrics: dict
    report: str


def effective_split(data: str, split: str | None) -> str | None:
    """`split`, or None (all pairs) when the dataset's manifest has no `split` in any record."""
    if split is None or not any("split" in record for record in read_manifest(data)):
        return None
    return split


def select_records(data: str, split: str | None) -> Iterator[dict]:
    """The manifest's records of `split`, streamed; all of them when `split` is None or no record has one."""
    split = effective_split(data, split)
    return (record for record in read_manifest(data) if split is None or record.get("split") == split)


def batch_records(records: Iterable[dict], size: int) -> Iterator[list[dict]]:
    """Consecutive lists of `size` records, the last one shorter (itertools.batched is Python 3.12)."""
    batch: list[dict] = []
    for record in records:
        batch.append(record)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def score_pairs(
    model_uri: str,
    data: str,
    split: str | None,
    batch_size: int,
    score_batch: Callable[[MaskPredictor, list[dict]], list[Scored]],
    on_progress: Callable[[], None] | None = None,
) -> tuple[str | None, list[Scored]]:
    """Load a model and score a dataset's pairs of `split`, streamed in batches.

    The loop of `evaluate_model` and `cutout.evaluate.calibration.calibrate_threshold`.

    Args:
        model_uri: anything `load_predictor` takes (a checkpoint, an `.onnx` file, a registry URI).
        data: a dataset folder or `s3://` prefix (its `manifest.jsonl` lists the pairs).
        split: the records' `split`; None, or a manifest without splits, selects all pairs.
        batch_size: photos per forward pass.
        score_batch: scores one batch of records with the loaded model, one result per record.
        on_progress: called once per pair, after its batch is scored.

    Returns:
        The split in effect (see `effective_split`) and every pair's result, in manifest order.

    Raises:
        ValueError: for a batch size below 1, or what `score_batch` raises.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    split = effective_split(data, split)
    predictor = load_predictor(model_uri)
    results: list[Scored] = []
    for batch in batch_records(select_records(data, split), batch_size):
        results += score_batch(predictor, batch)
        for _ in batch if on_progress is not None else ():
            on_progress()
    return split, results


def _score_batch(
    predictor: MaskPredictor, batch: list[dict], data: str, keeper: ExamplesByDomain
) -> list[ImageScore]:
    """Predict one batch and score each pair; offer each to the keeper of examples."""
    images = [read_image(storage.join(data, record["image"])) for record in batch]
    # Our models' probabilities are calibrated: no min-max stretch (it is for official weights only).
    maps = predict_probabilities(predictor, images, minmax=False)
    scores = []
    for record, image, probabilities in zip(batch, images, maps, strict=True):
        truth = read_mask(storage.join(data, record["mask"]))
        if truth.shape != probabilities.shape:
            raise ValueError(f"pair {record['id']}: mask is {truth.shape[::-1]}, photo is {image.size} (W×H)")
        cluster = str(record.get("cluster") or DEFAULT_CLUSTER)
        score = score_image(record["id"], cluster, probabilities, truth, record_domain(record))
        keeper.offer(score, functools.partial(make_example, score, image, truth, probabilities))
        scores.append(score)
    return scores


def score_model(
    model_uri: str, data: str, split: str | None = "val", batch_size: int = 8
) -> list[ImageScore]:
    """Every selected pair's scores, without a report (the promotion gate compares them photo by photo)."""
    score = functools.partial(_score_batch, data=data, keeper=ExamplesByDomain(0))
    return score_pairs(model_uri, data, split, batch_size, score)[1]


def evaluate_model(
    model_uri: str,
    data: str,
    out: str,
    split: str | None = "val",
    batch_size: int = 8,
    on_progress: Callable[[], None] | None = None,
) -> EvaluationResult:
    """Evaluate a model on a dataset's held-out pairs and write the report to `out`.

    Probabilities are used as the model gives them (`minmax=False`): models trained here are calibrated.
    Official U²-Net weights, which `cutout remove` min-max stretches, score a little differently here.

    Args:
        model_uri: anything `load_predictor` takes (a checkpoint, an `.onnx` file, a registry URI).
        data: a dataset folder or `s3://` prefix (its `manifest.jsonl` lists the pairs).
        out: the report folder or `s3://` prefix: `metrics.json`, `per_image.jsonl`, `index.html`.
        split: the records' `split` to evaluate; None, or a manifest without splits, evaluates all pairs.
        batch_size: photos per forward pass.
        on_progress: called once per pair, after its batch is scored.

    Returns:
        The summary metrics and the report's URI.

    Raises:
        ValueError: when no pair is selected, or a mask's size differs from its photo's.
    """
    keeper = ExamplesByDomain(EXAMPLES)
    score = functools.partial(_score_batch, data=data, keeper=keeper)
    split, scores = score_pairs(model_uri, data, split, batch_size, score, on_progress)
    if not scores:
        raise ValueError(f"{data}: no pairs to evaluate" + (f" in split {split!r}" if split else ""))
    metrics = summarize(scores)
    subtitle = f"model {model_uri} on {data}, " + (f"split {split}" if split else "all pairs")
    report = write_report(out, metrics, scores, keeper.sections(), subtitle)
    return EvaluationResult(metrics=metrics, report=report)
