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

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path

import numpy as np
from PIL import Image
from tests.benchmarks.datasets import CACHE, studio_dataset

from cutout.data.io import encode_image, mask_to_image, read_image, read_mask
from cutout.data.manifest import DatasetWriter, read_manifest
from cutout.data.parallel import ordered_map
from cutout.data.synth import JPEG_QUALITY

BASE_COUNT = 2000
# Copies 1-4 of a pair: a 90% crop at an offset (fractions of the frame), a mirror for odd copies,
# and a channel order (the product changes colour, the off-white backdrop hardly does). Copies move
# by at least 5% of the frame from each other, far beyond the near-duplicate threshold.
_CROP_OFFSETS = ((0.0, 0.1), (0.1, 0.0), (0.1, 0.1), (0.05, 0.05))
_RECOLOURS = ((1, 2, 0), (2, 0, 1), (2, 1, 0), (0, 2, 1))


def _status_kib(pid: int | str, field: str) -> int:
    """A memory field of /proc/<pid>/status in KiB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    """Direct children of a process (the worker pool), from /proc/<pid>/task/*/children."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            pids += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return pids


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


def _sample_memory(peaks: dict[str, int], stop: threading.Event) -> None:
    """Track the parent's and the workers' peaks, and the largest total resident memory."""
    me = os.getpid()
    while not stop.wait(0.05):
        workers = _children(me)
        hwm = [_status_kib(pid, "VmHWM") for pid in workers]
        total = _status_kib(me, "VmRSS") + sum(_status_kib(pid, "VmRSS") for pid in workers)
        peaks["worker_hwm"] = max([peaks["worker_hwm"], *hwm])
        peaks["total_rss"] = max(peaks["total_rss"], total)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker pool, once shut down)."""
    usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)


def measure(src: str) -> dict:
    """Clean ``src`` into a temporary folder here, and report speed, CPU time and memory.

    CPU milliseconds per pair tell the step's own cost when other jobs share the cores: on an idle
    machine, 2 cores give at most 2,000 / (ms per pair) pairs per second.
    """
    from cutout.data.clean import clean_dataset  # imported here: its import is part of the footprint

    peaks = {"worker_hwm": 0, "total_rss": 0}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(peaks, stop), daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="bench-clean-") as out:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        summary = clean_dataset(src, out)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    stop.set()
    sampler.join()
    pairs = summary.kept + summary.rejected
    return {"pairs": pairs, "seconds": round(seconds, 1), "pairs_per_s": round(pairs / seconds, 1),
            "cpu_ms_per_pair": round(cpu / pairs * 1000, 1), "kept": summary.kept,
            "rejects": summary.per_reason,
            "parent_hwm_mib": round(_status_kib("self", "VmHWM") / 1024),
            "worker_hwm_mib": round(peaks["worker_hwm"] / 1024),
            "total_rss_mib": round(peaks["total_rss"] / 1024)}  # fmt: skip


def measure_in_subprocess(src: Path) -> dict:
    """`measure` in a fresh interpreter, so that the peaks are the step's own."""
    command = [sys.executable, "-m", "tests.benchmarks.bench_clean", "--measure", str(src)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the subprocess's job
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return
    print(f"clean on {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} before the runs")
    header = ("pairs", "seconds", "pairs/s", "cpu ms", "kept", "parent", "worker", "total")
    print(" ".join(f"{name:>8}" for name in header), " rejects")
    for count in args.counts:
        row = measure_in_subprocess(studio_inputs(count))
        cells = [row[key] for key in ("pairs", "seconds", "pairs_per_s", "cpu_ms_per_pair", "kept")]
        cells += [f"{row[key]}MiB" for key in ("parent_hwm_mib", "worker_hwm_mib", "total_rss_mib")]
        print(" ".join(f"{cell:>8}" for cell in cells), "", row["rejects"], flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} after (other jobs on the cores slow pairs/s, not cpu ms)")
    print("targets on 2 cores: ≥ 100 pairs/s (so ≤ 20 cpu ms per pair), total ≤ 1024 MiB")


if __name__ == "__main__":
    main()
