"""The dataset layout's manifest: one JSON record per pair in `<dataset>/manifest.jsonl`."""

from __future__ import annotations

import json
from collections.abc import Iterator

from cutout.platform import storage

MANIFEST_NAME = "manifest.jsonl"


def manifest_uri(dataset: str) -> str:
    """Where a dataset's manifest lives."""
    return storage.join(dataset, MANIFEST_NAME)


def read_manifest(dataset: str) -> Iterator[dict]:
    """The records of a dataset's manifest, in file order; a broken line is an error naming its number."""
    text = storage.read_text(manifest_uri(dataset))
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{manifest_uri(dataset)}, line {number}: not JSON ({error.msg})") from None
