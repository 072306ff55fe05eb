"""Benchmark datasets, made once and kept in a cache outside the repository (they take minutes)."""

from __future__ import annotations

import os
from pathlib import Path

from cutout.data.synth import synthesize_dataset

CACHE = Path(os.environ.get("CUTOUT_BENCH_CACHE", Path.home() / ".cache" / "cutout" / "bench"))
STUDIO_SIZE = (1000, 1500)


def studio_dataset(count: int, size: tuple[int, int] = STUDIO_SIZE) -> Path:
    """`count` synthetic studio pairs at `size` (default 1000×1500, as the studio shoots), cached."""
    folder = CACHE / f"synth-{size[0]}x{size[1]}-{count}"
    if not (folder / "manifest.jsonl").exists():
        print(
            f"making {count} synthetic {size[0]}×{size[1]} pairs in {folder} (once; minutes)...", flush=True
        )
        synthesize_dataset(str(folder), count, size=size, seed=0)
    return folder
