"""`cutout remove`: cut the products out of a batch of photos, and account for every input.

Each input is a file, a folder (searched recursively), a glob, or an `s3://` prefix. Every photo ends as an
output file or as a failure with a reason; one bad file never stops the batch.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from PIL import Image

from cutout.compose import Color, alpha_from_probabilities, compose_cutout
from cutout.data.io import PHOTO_SUFFIXES, ImageError, encode_image, read_image
from cutout.model.inference import MaskPredictor, predict_probabilities
from cutout.platform import storage

OUTPUT_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


@dataclass(frozen=True)
class InputPhoto:
    """One photo to process: where it is, and the output name (relative, without suffix)."""

    source: str
    name: str


@dataclass(frozen=True)
class Failure:
    """An input that produced no output, and why (`reason` is machine-readable)."""

    source: str
    reason: str
    message: str


@dataclass(frozen=True)
class RemoveOptions:
    """What to write for each photo."""

    mask_only: bool = False
    bg_color: Color | None = None
    crop: bool = False
    output_format: str = "png"
    batch_size: int = 4
    png_compression: int = 1  # fast: PNG encoding, not the network, dominated the time per photo

    def __post_init__(self) -> None:
        if self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"unknown output format {self.output_format!r}: use {', '.join(OUTPUT_FORMATS)}")
        if OUTPUT_FORMATS[self.output_format] == "JPEG" and self.bg_color is None and not self.mask_only:
            raise ValueError("JPEG has no transparency: add a background colour (--bg-color) or use png/webp")
        if not 0 <= self.png_compression <= 9:
            raise ValueError(f"PNG compression is a level from 0 to 9, not {self.png_compression}")
        if self.batch_size < 1:
            raise ValueError(f"batch size must be at least 1, not {self.batch_size}")


@dataclass
class RemoveSummary:
    """What a run did: the outputs written and the inputs that failed."""

    written: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def _has_glob(text: str) -> bool:
    return any(char in text for char in "*?[")


def _folder_photos(folder: str) -> Iterator[InputPhoto]:
    prefix = folder.rstrip("/") + "/"
    for uri in storage.list_files(folder, suffixes=PHOTO_SUFFIXES):
        relative = uri[len(prefix) :] if uri.startswith(prefix) else os.path.relpath(uri, folder)
        yield InputPhoto(uri, str(PurePosixPath(relative).with_suffix("")))


def _expand(argument: str) -> Iterator[InputPhoto]:
    """The photos one command-line argument names; raises FileNotFoundError when it names none."""
    if _has_glob(argument) and not storage.is_s3(argument):
        matches = sorted(glob.glob(argument, recursive=True))
        if not matches:
            raise FileNotFoundError("no file matches this pattern")
        for match in matches:
            yield from _folder_photos(match) if os.path.isdir(match) else [_single(match)]
    elif (storage.is_s3(argument) and not storage.exists(argument)) or os.path.isdir(argument):
        found = list(_folder_photos(argument))
        if not found:
            raise FileNotFoundError("no photos (" + ", ".join(PHOTO_SUFFIXES) + ") under this folder")
        yield from found
    elif storage.is_s3(argument) or os.path.isfile(argument):
        yield _single(argument)
    else:
        raise FileNotFoundError("no such file or folder")


def _single(path: str) -> InputPhoto:
    return InputPhoto(path, PurePosixPath(path.rstrip("/")).stem)


def collect_inputs(arguments: Iterable[str]) -> tuple[list[InputPhoto], list[Failure]]:
    """Expand files, folders, globs and prefixes into photos with unique output names."""
    photos: list[InputPhoto] = []
    failures: list[Failure] = []
    taken: set[str] = set()
    for argument in arguments:
        try:
            for photo in _expand(argument):
                name, counter = photo.name, 1
                while name in taken:  # two inputs called shirt.jpg must not overwrite each other's output
                    counter += 1
                    name = f"{photo.name}-{counter}"
                taken.add(name)
                photos.append(InputPhoto(photo.source, name))
        except FileNotFoundError as error:
            failures.append(Failure(argument, "not_found", str(error)))
    return photos, failures


def _render(image: Image.Image, probabilities, options: RemoveOptions) -> Image.Image:
    alpha = alpha_from_probabilities(probabilities)
    if options.mask_only:
        return alpha
    return compose_cutout(image, alpha, bg_color=options.bg_color, crop=options.crop)


def _write(photo: InputPhoto, rendered: Image.Image, out_dir: str, options: RemoveOptions) -> str:
    suffix = "png" if options.mask_only else options.output_format
    target = storage.join(out_dir, f"{photo.name}.{suffix}")
    encoded = encode_image(rendered, OUTPUT_FORMATS[suffix], compress_level=options.png_compression)
    storage.write_bytes(target, encoded)
    return target


def _decode(photo: InputPhoto) -> Image.Image | ImageError:
    try:
        return read_image(photo.source)
    except ImageError as error:
        return error


def remove_backgrounds(
    photos: list[InputPhoto],
    out_dir: str,
    predictor: MaskPredictor,
    options: RemoveOptions = RemoveOptions(),
    on_done: Callable[[InputPhoto], None] | None = None,
) -> RemoveSummary:
    """Cut out every photo into `out_dir`, in batches; report unreadable ones instead of stopping.

    Decoding the next batch and encoding the last one run on threads while the network works on the
    current batch (Pillow releases the GIL while it decodes and encodes).
    """
    summary = RemoveSummary()
    with ThreadPoolExecutor(max_workers=2) as pool:
        size = options.batch_size
        batches = [photos[start : start + size] for start in range(0, len(photos), size)]
        decoding = [pool.submit(_decode, photo) for photo in batches[0]] if batches else []
        writing: list[tuple[InputPhoto, Future[str]]] = []
        for index, batch in enumerate(batches):
            decoded = [future.result() for future in decoding]
            if index + 1 < len(batches):
                decoding = [pool.submit(_decode, photo) for photo in batches[index + 1]]
            readable = [
                (p, image) for p, image in zip(batch, decoded, strict=True) if isinstance(image, Image.Image)
            ]
            for photo, error in zip(batch, decoded, strict=True):
                if isinstance(error, ImageError):
                    summary.failures.append(Failure(photo.source, error.reason, error.message))
                    if on_done:
                        on_done(photo)
            if readable:
                maps = predict_probabilities(predictor, [image for _, image in readable])
                for (photo, image), probabilities in zip(readable, maps, strict=True):
                    rendered = _render(image, probabilities, options)
                    writing.append((photo, pool.submit(_write, photo, rendered, out_dir, options)))
            writing = _collect_writes(writing, summary, on_done, wait=False)
        _collect_writes(writing, summary, on_done, wait=True)
    return summary


def _collect_writes(
    writing: list[tuple[InputPhoto, Future[str]]],
    summary: RemoveSummary,
    on_done: Callable[[InputPhoto], None] | None,
    wait: bool,
) -> list[tuple[InputPhoto, Future[str]]]:
    """Record finished writes (all of them when `wait`), return the ones still running."""
    pending = []
    for photo, future in writing:
        if not wait and not future.done():
            pending.append((photo, future))
            continue
        try:
            summary.written.append(future.result())
        except OSError as error:  # a full disk or a refused S3 write fails this photo, not the batch
            summary.failures.append(Failure(photo.source, "write_failed", str(error)))
        if on_done:
            on_done(photo)
    return pending
