"""A static HTML gallery: rows of images side by side with a caption (contact sheets, report examples).

Cutouts show on a CSS checkerboard, so transparency is visible in any browser. Images are written as
PNG thumbnails beside the page; the page has no scripts and no external resources.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

from PIL import Image

from cutout.data.io import encode_image
from cutout.platform import storage

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; } td, th { padding: 6px; text-align: center; vertical-align: top; }
img { max-height: 240px; max-width: 240px; display: block; margin: auto; }
.checker { background-image: conic-gradient(#ddd 25%, #fff 0 50%, #ddd 0 75%, #fff 0);
           background-size: 16px 16px; }
"""


@dataclass(frozen=True)
class GalleryRow:
    """One row: a caption and named images (the names become column headings)."""

    caption: str
    images: dict[str, Image.Image]


def _thumbnail(image: Image.Image, size: int = 480) -> Image.Image:
    copy = image.copy()
    copy.thumbnail((size, size))
    return copy


def write_gallery(folder: str, title: str, rows: list[GalleryRow], summary: str = "") -> str:
    """Write `index.html` and its thumbnails into `folder`; return the page's path or URI."""
    return write_sections(folder, title, [GallerySection("", rows)], summary)


@dataclass(frozen=True)
class GallerySection:
    """A heading, a line under it, and its rows: one table (its columns are its first row's images)."""

    heading: str
    rows: list[GalleryRow]
    summary: str = ""


def write_sections(folder: str, title: str, sections: list[GallerySection], summary: str = "") -> str:
    """Write one page of several galleries, one table per section; return the page's path or URI."""
    head = f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title><style>{STYLE}</style>"
    lines, written = [head, f"<h1>{html.escape(title)}</h1><p>{html.escape(summary)}</p>"], 0
    for section in sections:
        if section.heading:
            lines.append(f"<h2>{html.escape(section.heading)}</h2>")
        if section.summary:
            lines.append(f"<p>{html.escape(section.summary)}</p>")
        columns = list(section.rows[0].images) if section.rows else []
        lines += ["<table><tr><th></th>", *(f"<th>{html.escape(name)}</th>" for name in columns), "</tr>"]
        for row in section.rows:
            lines.append(f"<tr><th>{html.escape(row.caption)}</th>")
            for column, image in row.images.items():
                name = f"img/{written:04d}-{column.replace(' ', '_')}.png"
                storage.write_bytes(storage.join(folder, name), encode_image(_thumbnail(image)))
                checker = " class='checker'" if image.mode == "RGBA" else ""
                lines.append(f"<td{checker}><img src='{name}' alt='{html.escape(column)}'></td>")
            lines.append("</tr>")
            written += 1
        lines.append("</table>")
    page = storage.join(folder, "index.html")
    storage.write_text(page, "\n".join(lines))
    return page
