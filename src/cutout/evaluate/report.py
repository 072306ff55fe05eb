"""The evaluation report: `metrics.json`, per-image scores, and an HTML page with the examples that matter.

Layout of a report folder (local or `s3://`):

- `metrics.json`: the summary from `metrics.summarize` (dataset-wide figures and `per_cluster`).
- `per_image.jsonl`: one `ImageScore` per line, to find any pair's numbers.
- `index.html`: the figures, the per-cluster table, the IoU histogram (`iou_histogram.png`) and the
  worst and best examples as photo / true mask / predicted mask / errors / cutout (`img/`).

Examples are kept as small thumbnails while the evaluation runs (`ExampleKeeper`), so memory holds a
dozen thumbnails, never the dataset's photos.
"""

from __future__ import annotations

import dataclasses
import heapq
import html
import io
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from cutout.compose import alpha_at_size, compose_cutout
from cutout.data.gallery import STYLE as GALLERY_STYLE
from cutout.data.io import encode_image, mask_to_image
from cutout.evaluate.metrics import IOU_LEVELS, ImageScore
from cutout.platform import storage

THUMBNAIL_SIDE = 480
HISTOGRAM_BIN = 0.005  # IoUs of a usable model crowd above 0.9: bins must be narrow to tell them apart
_STYLE = GALLERY_STYLE + ".figures td, .figures th { text-align: right; } img.plot { max-width: none; }"
_FIGURES = {  # summary key → column heading
    "count": "images",
    "mean_iou": "mean IoU",
    **{f"iou_ge_{level}": f"IoU ≥ {level}" for level in IOU_LEVELS},
    "mean_mae": "MAE",
    "mean_max_fbeta": "max F-β",
    "mean_boundary_iou": "boundary IoU",
}
_CLUSTER_COLUMNS = ("count", "mean_iou", "iou_ge_0.95", "mean_mae", "mean_max_fbeta", "mean_boundary_iou")


@dataclass(frozen=True)
class Example:
    """One pair to show: its scores and its thumbnails, by column name."""

    score: ImageScore
    images: dict[str, Image.Image]


def _thumbnail_size(size: tuple[int, int], side: int) -> tuple[int, int]:
    scale = min(1.0, side / max(size))
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _error_overlay(photo: Image.Image, predicted: np.ndarray, truth: np.ndarray) -> Image.Image:
    """The photo faded, tinted red where background was taken for product and blue where product was lost."""
    pixels = np.asarray(photo, dtype=np.float32) * 0.35 + 160
    pixels[predicted & ~truth] = pixels[predicted & ~truth] * 0.4 + np.array([230, 20, 20]) * 0.6
    pixels[truth & ~predicted] = pixels[truth & ~predicted] * 0.4 + np.array([20, 60, 230]) * 0.6
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def make_example(
    score: ImageScore, image: Image.Image, truth: np.ndarray, probabilities: np.ndarray
) -> Example:
    """Thumbnails of a pair: photo, true mask, predicted mask, errors, and the cutout (RGBA)."""
    size = _thumbnail_size(image.size, THUMBNAIL_SIDE)
    photo = image.resize(size, Image.Resampling.BILINEAR)
    alpha = alpha_at_size(probabilities, size)
    true_mask = mask_to_image(truth).resize(size, Image.Resampling.BILINEAR)
    errors = _error_overlay(photo, np.asarray(alpha) >= 128, np.asarray(true_mask) >= 128)
    images = {"photo": photo, "true mask": true_mask, "predicted mask": alpha, "errors": errors}
    return Example(score, images | {"cutout": compose_cutout(photo, alpha)})


class ExampleKeeper:
    """The `count` lowest- and highest-IoU pairs seen so far, in bounded memory.

    Each side is a heap whose root is the pair to drop next; ties go to the pair seen first.
    """

    def __init__(self, count: int = 6):
        self.count = count
        self._order = itertools.count()
        self._worst: list[tuple[float, int, Example]] = []  # key −IoU: root = best of the worst
        self._best: list[tuple[float, int, Example]] = []  # key IoU: root = worst of the best

    def _fits(self, heap: list, key: tuple[float, int]) -> bool:
        return self.count > 0 and (len(heap) < self.count or key > heap[0][:2])

    def offer(self, score: ImageScore, build: Callable[[], Example]) -> None:
        """Keep the pair if it is among the worst or best so far; `build` runs only then."""
        order = -next(self._order)  # later pairs sort lower, so they are dropped first among ties
        sides = ((self._worst, (-score.iou, order)), (self._best, (score.iou, order)))
        wanted = [(heap, key) for heap, key in sides if self._fits(heap, key)]
        if not wanted:
            return
        example = build()
        for heap, key in wanted:
            if len(heap) < self.count:
                heapq.heappush(heap, (*key, example))
            else:
                heapq.heapreplace(heap, (*key, example))

    def worst(self) -> list[Example]:
        """The kept worst pairs, lowest IoU first."""
        return [entry[2] for entry in sorted(self._worst, reverse=True)]

    def best(self) -> list[Example]:
        """The kept best pairs, highest IoU first."""
        return [entry[2] for entry in sorted(self._best, reverse=True)]


class ExamplesByDomain:
    """An `ExampleKeeper` per domain, so real photos show among the worst and best even when the
    synthetic catalogue outnumbers them."""

    def __init__(self, count: int = 6):
        self.count = count
        self.keepers: dict[str, ExampleKeeper] = {}

    def offer(self, score: ImageScore, build: Callable[[], Example]) -> None:
        self.keepers.setdefault(score.domain, ExampleKeeper(self.count)).offer(score, build)

    def sections(self) -> list[tuple[str, list[Example], list[Example]]]:
        """(domain, worst, best) per domain, by domain name."""
        return [(domain, keeper.worst(), keeper.best()) for domain, keeper in sorted(self.keepers.items())]


# --- writing -----------------------------------------------------------------------------------


def _format(name: str, value: float) -> str:
    if name == "count":
        return str(int(value))
    return f"{value:.1%}" if name.startswith("iou_ge_") else f"{value:.4f}"


def _figures_html(summary: dict) -> str:
    header = "".join(f"<th>{html.escape(_FIGURES[name])}</th>" for name in _FIGURES)
    cells = "".join(f"<td>{_format(name, summary[name])}</td>" for name in _FIGURES)
    return f"<table class='figures'><tr>{header}</tr><tr>{cells}</tr></table>"


def _group_table_html(label: str, groups: dict[str, dict]) -> str:
    header = f"<th>{label}</th>" + "".join(f"<th>{_FIGURES[name]}</th>" for name in _CLUSTER_COLUMNS)
    rows = [
        f"<tr><th>{html.escape(group)}</th>"
        + "".join(f"<td>{_format(name, figures[name])}</td>" for name in _CLUSTER_COLUMNS)
        + "</tr>"
        for group, figures in groups.items()
    ]
    return f"<table class='figures'><tr>{header}</tr>{''.join(rows)}</table>"


def _examples_html(out: str, section: str, examples: Sequence[Example]) -> str:
    """Write the examples' thumbnails under `img/` and return their table."""
    if not examples:
        return "<p>none</p>"
    columns = list(examples[0].images)
    lines = ["<table><tr><th></th>", *(f"<th>{html.escape(c)}</th>" for c in columns), "</tr>"]
    for rank, example in enumerate(examples, start=1):
        score = example.score
        caption = f"{score.id}<br>{score.cluster}<br>IoU {score.iou:.4f}<br>boundary {score.boundary_iou:.4f}"
        lines.append(f"<tr><th>{caption}</th>")
        for column, image in example.images.items():
            name = f"img/{section}-{rank:02d}-{column.replace(' ', '_')}.png"
            storage.write_bytes(storage.join(out, name), encode_image(image))
            checker = " class='checker'" if image.mode == "RGBA" else ""
            lines.append(f"<td{checker}><img src='{name}' alt='{html.escape(column)}'></td>")
        lines.append("</tr>")
    return "\n".join([*lines, "</table>"])


def write_histogram(uri: str, ious: Sequence[float]) -> None:
    """A PNG histogram of per-image IoU, with the `IOU_LEVELS` marked."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # lazily: only reports need it
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    low = min(0.9, np.floor(min(ious) * 10) / 10)
    bins = np.linspace(low, 1.0, round((1.0 - low) / HISTOGRAM_BIN) + 1)
    figure = Figure(figsize=(7, 3.5), layout="constrained")
    axes = figure.add_subplot()
    axes.hist(ious, bins=bins, color="#4a78b0")
    for level in IOU_LEVELS:
        axes.axvline(level, color="#c44", linestyle="--", linewidth=1)
    axes.yaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set(xlabel="IoU", ylabel="images", title=f"IoU per image ({len(ious)} images)")
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    storage.write_bytes(uri, buffer.getvalue())


def write_report(
    out: str,
    summary: dict,
    scores: Sequence[ImageScore],
    sections: Sequence[tuple[str, Sequence[Example], Sequence[Example]]],
    subtitle: str = "",
) -> str:
    """Write `metrics.json`, `per_image.jsonl`, the histogram and `index.html`; return the page's URI.

    Args:
        out: the report folder or `s3://` prefix.
        summary: `metrics.summarize(scores)`.
        scores: every pair's scores.
        sections: (domain, worst examples lowest IoU first, best highest first) per domain
            (`ExamplesByDomain.sections`).
        subtitle: a line under the title (which model, on which data).
    """
    storage.write_text(storage.join(out, "metrics.json"), json.dumps(summary, indent=2) + "\n")
    lines = (json.dumps(dataclasses.asdict(score)) + "\n" for score in scores)
    storage.write_text(storage.join(out, "per_image.jsonl"), "".join(lines))
    write_histogram(storage.join(out, "iou_histogram.png"), [score.iou for score in scores])
    page = [
        f"<!doctype html><meta charset='utf-8'><title>cutout evaluation</title><style>{_STYLE}</style>",
        f"<h1>cutout evaluation</h1><p>{html.escape(subtitle)}</p>",
        _figures_html(summary),
        "<h2>Per domain</h2><p>real photographs and the synthetic catalogue, scored apart</p>",
        _group_table_html("domain", summary["per_domain"]),
        "<h2>Per cluster</h2>",
        _group_table_html("cluster", summary["per_cluster"]),
        "<h2>IoU per image</h2><img class='plot' src='iou_histogram.png' alt='IoU histogram'>",
        "<p>errors in the examples: red = background taken for product, blue = product lost</p>",
    ]
    for domain, worst, best in sections:
        page += [
            f"<h2>Worst examples: {html.escape(domain)}</h2>",
            _examples_html(out, f"{domain}-worst", worst),
            f"<h2>Best examples: {html.escape(domain)}</h2>",
            _examples_html(out, f"{domain}-best", best),
        ]
    uri = storage.join(out, "index.html")
    storage.write_text(uri, "\n".join(page))
    return uri
