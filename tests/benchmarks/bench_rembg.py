"""cutout against rembg: the same official U²-NetP ONNX file, the same real photos, each tool as users run it.

    make bench-rembg                        # builds rembg's own virtual environment once, then runs this
    python -m tests.benchmarks.bench_rembg --rembg-python ~/.cache/cutout/bench/rembg-venv/bin/python

rembg (`new_session("u2net_custom", model_path=…)`, then `remove(bytes, session=…)`, what its `rembg i`
command does) runs in its own virtual environment: it pins ONNX Runtime and other packages against
cutout's. cutout runs as `cutout remove FOLDER -o OUT --model u2netp`. Both read the same ONNX file.

Photos: the first `--photos` real street-fashion photos cutout ships, at their own size and resized to
1000×1500 (JPEG, quality 95). For each tool, size and output (RGBA PNG, mask only) the benchmark runs the
tool twice, on one photo and on all of them, as fresh processes: the time per photo is the difference
divided by the photos in between (start-up, imports and model loading excluded), and the whole run is
printed too. Peak RSS is each process's own (`wait4`). Agreement is the mean IoU between the two tools'
masks (alpha ≥ 128), photo by photo, with the lowest.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cutout.data.real import REAL_PHOTOS
from cutout.model.builtin import builtin_model_path

CUTOUT = str(Path(sys.executable).with_name("cutout"))
FULL_SIZE = (1000, 1500)
# What `rembg i` does with one file, for a folder: one session, then remove() on each file's bytes.
REMBG_SCRIPT = """
import sys
from pathlib import Path
from rembg import new_session, remove

model, src, out, mask_only = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4] == "1"
session = new_session("u2net_custom", model_path=model)
out.mkdir(parents=True, exist_ok=True)
for photo in sorted(src.glob("*.jpg")):
    cut = remove(photo.read_bytes(), session=session, only_mask=mask_only)
    (out / (photo.stem + ".png")).write_bytes(cut)
"""


@dataclass
class Run:
    """One process: its wall time, its own peak resident memory, and the folder it wrote."""

    seconds: float
    peak_rss_mib: float
    out: Path


def prepare_photos(folder: Path, count: int) -> dict[str, Path]:
    """The first `count` shipped real photos at their own size, and resized to 1000×1500."""
    photos = sorted((Path(REAL_PHOTOS) / "images").glob("*.jpg"))[:count]
    sets = {"own size": folder / "own", f"{FULL_SIZE[0]}×{FULL_SIZE[1]}": folder / "full"}
    for path in sets.values():
        (path / "one").mkdir(parents=True)
        (path / "all").mkdir()
    for index, photo in enumerate(photos):
        full = Image.open(photo).convert("RGB").resize(FULL_SIZE, Image.Resampling.LANCZOS)
        for name, path in sets.items():
            targets = [path / "all"] + ([path / "one"] if index == 0 else [])
            for target in targets:
                if name == "own size":
                    shutil.copy(photo, target / photo.name)
                else:
                    full.save(target / photo.name, quality=95)
    return sets


def timed(command: list[str], out: Path, env: dict[str, str]) -> Run:
    """Run a command as its own process; its wall time and its own peak RSS."""
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)  # fmt: skip
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{process.stderr.read().decode()[-2000:]}")
    return Run(seconds, usage.ru_maxrss / 1024, out)


def rembg_command(python: str, model: Path, src: Path, out: Path, mask_only: bool) -> list[str]:
    return [python, "-c", REMBG_SCRIPT, str(model), str(src), str(out), "1" if mask_only else "0"]


def cutout_command(src: Path, out: Path, mask_only: bool) -> list[str]:
    return [
        CUTOUT,
        "remove",
        str(src),
        "-o",
        str(out),
        "--model",
        "u2netp",
        *(["--mask-only"] if mask_only else []),
    ]


def masks(folder: Path) -> dict[str, np.ndarray]:
    """name → boolean mask: the alpha channel of a cutout, or the mask itself."""
    found = {}
    for path in sorted(folder.glob("*.png")):
        image = Image.open(path)
        channel = image.getchannel("A") if image.mode in ("RGBA", "LA") else image.convert("L")
        found[path.stem] = np.asarray(channel) >= 128
    return found


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> tuple[float, float]:
    """Mean and lowest IoU of the masks both folders hold, photo by photo."""
    ious = []
    for name in sorted(a.keys() & b.keys()):
        union = np.logical_or(a[name], b[name]).sum()
        ious.append(1.0 if union == 0 else np.logical_and(a[name], b[name]).sum() / union)
    return float(np.mean(ious)), float(np.min(ious))


def folder_bytes(folder: Path) -> int:
    return sum(path.stat().st_size for path in folder.glob("*.png"))


def per_photo(command_for, folder: Path, out: Path, photos: int, env: dict[str, str]) -> tuple[float, Run]:
    """ms per photo (one photo's run subtracted from all of them: start-up excluded), and the whole run."""
    one = timed(command_for(folder / "one", out / "one"), out / "one", env)
    every = timed(command_for(folder / "all", out / "all"), out / "all", env)
    return 1000 * (every.seconds - one.seconds) / (photos - 1), every


def compare(commands: dict, folder: Path, out: Path, photos: int, env: dict[str, str], label: str) -> None:
    """Both tools on one set of photos; a line per tool, then the ratios and their masks' agreement."""
    runs = {}
    for tool, command_for in commands.items():
        runs[tool] = ms, run = per_photo(command_for, folder, out / tool, photos, env)
        print(f"{label} {tool:7} {ms:9.0f} {run.seconds:12.1f} {folder_bytes(run.out) / 1e6:8.2f} "
              f"{run.peak_rss_mib:13.0f}", flush=True)  # fmt: skip
    (rembg_ms, rembg), (cutout_ms, cutout) = runs["rembg"], runs["cutout"]
    mean, lowest = agreement(masks(rembg.out), masks(cutout.out))
    size_ratio = folder_bytes(cutout.out) / folder_bytes(rembg.out)
    print(f"{label} cutout {rembg_ms / cutout_ms:.2f}× faster per photo, "
          f"{rembg.seconds / cutout.seconds:.2f}× whole run; bytes cutout/rembg {size_ratio:.2f}; "
          f"mask IoU between the tools: mean {mean:.4f}, lowest {lowest:.4f}", flush=True)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rembg-python", required=True, help="a Python with rembg installed (its own venv)")
    parser.add_argument("--photos", type=int, default=24)
    args = parser.parse_args()
    model = builtin_model_path("u2netp")
    cores = len(os.sched_getaffinity(0))
    # rembg reads a custom model only from under its home folder.
    env = {**os.environ, "U2NET_HOME": str(model.parent)}
    with tempfile.TemporaryDirectory(prefix="cutout-bench-rembg-") as tmp:
        work = Path(tmp)
        sets = prepare_photos(work / "photos", args.photos)
        print(f"{args.photos} real photos; {cores} cores; both tools on {model}", flush=True)
        print(f"{'photos':10} {'output':6} {'tool':7} {'ms/photo':>9} {'whole run s':>12} {'MB out':>8} "
              f"{'peak RSS MiB':>13}")  # fmt: skip
        for size, folder in sets.items():
            for mask_only in (False, True):
                output = "mask" if mask_only else "PNG"
                commands = {
                    "rembg": lambda src, out, m=mask_only: rembg_command(
                        args.rembg_python, model, src, out, m
                    ),
                    "cutout": lambda src, out, m=mask_only: cutout_command(src, out, m),
                }
                compare(commands, folder, work / "out" / f"{size}-{output}", args.photos, env,
                        f"{size:10} {output:6}")  # fmt: skip


if __name__ == "__main__":
    main()
