"""Clean benchmark: pairs per second and peak memory of `clean_dataset` on synthetic 1000×1500 studio pairs.

    python -m tests.benchmarks.bench_clean [--counts 2000 10000]

Each dataset size is cleaned in a fresh subprocess, so the peaks are the step's own: the parent's
``VmHWM``, the largest worker's ``VmHWM``, and the largest sum of resident memory over all of the
step's processes (sampled every 50 ms; shared copy-on-write pages count once per process, so the
sum overstates). Targets on 2 cores: at least 100 pairs/s, at most 1 GiB.

More than 2,000 pairs are made from `studio_dataset` (2000) rather than synthesised (10,000 take
about 10 minutes): each pair is written again with a deterministic crop, shift, mirror and colour
change per copy, which moves it far outside the near-duplicate threshold, so every copy is kept
like a new photo (the summary's reject counts show it).
"""

from __future__ import annotations

import os
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tests.benchmarks.datasets import CACHE, studio_dataset
from tests.benchmarks.measure import measure_in_subprocess, parse_bench_args, run_measured

from cutout.data.io import encode_image, mask_to_image, read_image, read_mask
from cutout.data.manifest import DatasetWriter, read_manifest
from cutout.data.synth import JPEG_QUALITY
from cutout.platform.parallel import ordered_map

BASE_COUNT = 2000
# Copies 1-4 of a pair: a 90% crop at an offset (fractions of the frame), a mirror for odd copies,
# and a channel order (the product changes colour, the off-white backdrop hardly does). Copies move
# by at least 5% of the frame from each other, far beyond the near-duplicate threshold.
_CROP_OFFSETS = ((0.0, 0.1), (0.1, 0.0), (0.1, 0.1), (0.05, 0.05))
_RECOLOURS = ((1, 2, 0), (2, 0, 1), (2, 1, 0), (0, 2, 1))


# --- the larger inputs -----------------------------------------------------------------------------


def _varied_pair(record: dict, src: str, copy: int) -> tuple[bytes, bytes]:
    """Copy ``copy`` (1-4) of a pair: cropped, resized back, mirrored if odd, recoloured."""
    photo = read_image(f"{src}/{record['image']}")
    mask = mask_to_image(read_mask(f"{src}/{record['mask']}"))
    (width, height), (left, top) = photo.size, _CROP_OFFSETS[copy - 1]
    box = (round(width * left), round(height * top), round(width * (left + 0.9)), round(height * (top + 0.9)))
    photo = photo.resize(photo.size, Image.Resampling.BICUBIC, box=box)
    mask = mask.resize(mask.size, Image.Resampling.BILINEAR, box=box)
    if copy % 2:
        photo, mask = (
            photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
            mask.transpose(Image.Transpose.FLIP_LEFT_RIGHT),
        )
    photo = Image.fromarray(np.asarray(photo)[..., list(_RECOLOURS[copy - 1])])
    return encode_image(photo, "JPEG", JPEG_QUALITY), encode_image(
        mask_to_image(np.asarray(mask) >= 128), "PNG"
    )


def _copy_task(task: tuple[dict, int], src: str) -> tuple[dict, bytes, bytes]:
    record, copy = task
    if copy == 0:
        return record, Path(src, record["image"]).read_bytes(), Path(src, record["mask"]).read_bytes()
    photo, mask = _varied_pair(record, src, copy)
    return {**record, "id": f"{record['id']}-v{copy}", "source": f"synth-variant-{copy}"}, photo, mask


def studio_inputs(count: int) -> Path:
    """``count`` studio pairs: `studio_dataset` up to 2,000, else up to 5 varied copies of those 2,000."""
    if count <= BASE_COUNT:
        return studio_dataset(count)
    copies = -(-count // BASE_COUNT)
    if copies > 1 + len(_RECOLOURS):
        raise ValueError(f"at most {BASE_COUNT * (1 + len(_RECOLOURS))} pairs, got {count}")
    folder = CACHE / f"synth-1000x1500-{count}-copies"
    if (folder / "manifest.jsonl").exists():
        return folder
    base = str(studio_dataset(BASE_COUNT))
    print(f"making {count} pairs in {folder} from {BASE_COUNT} (once; minutes)...", flush=True)
    tasks = [(record, copy) for copy in range(copies) for record in read_manifest(base)][:count]
    with DatasetWriter(str(folder)) as writer:
        for record, photo, mask in ordered_map(partial(_copy_task, src=base), tasks):
            writer.add_pair(record, photo, "jpg", mask)
    return folder


# --- measuring ---------------------------------------------------------------------------------------


def measure(src: str) -> dict:
    """Clean ``src`` into a temporary folder here, and report speed, CPU time and memory."""
    from cutout.data.clean import clean_dataset  # imported here: its import is part of the footprint

    result = {}

    def clean() -> int:
        with tempfile.TemporaryDirectory(prefix="bench-clean-") as out:
            summary = clean_dataset(src, out)
        result.update(kept=summary.kept, rejects=summary.per_reason)
        return summary.kept + summary.rejected

    return {**run_measured(clean), **result}


def main(argv: list[str] | None = None) -> None:
    counts = parse_bench_args(__doc__, measure, argv)
    if counts is None:
        return
    print(f"clean on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before the runs")
    header = ("pairs", "seconds", "pairs/s", "cpu ms", "kept", "parent", "worker", "total")
    print(" ".join(f"{name:>8}" for name in header), " rejects")
    for count in counts:
        row = measure_in_subprocess("tests.benchmarks.bench_clean", studio_inputs(count))
        cells = [row[key] for key in ("pairs", "seconds", "pairs_per_s", "cpu_ms_per_pair", "kept")]
        cells += [f"{row[key]}MiB" for key in ("parent_hwm_mib", "worker_hwm_mib", "total_rss_mib")]
        print(" ".join(f"{cell:>8}" for cell in cells), "", row["rejects"], flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} after (other jobs on the cores slow pairs/s, not cpu ms)")
    print("targets on 2 cores: ≥ 100 pairs/s (so ≤ 20 cpu ms per pair), total ≤ 1024 MiB")


if __name__ == "__main__":
    main()
