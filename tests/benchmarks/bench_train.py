"""Training benchmark (`make bench`): images/s per worker on the CPU, 1 and 2 Horovod workers, both variants,
and the data loader's rate beside the model's consumption (the loader must not be what limits training).

Timed over a few steps at the recipe's crop (288) with the default precision (bf16 where the CPU computes
it natively). GPU figures come from `tests/benchmarks/gpu_train.py` on a GPU machine (not here).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.benchmarks.datasets import studio_dataset

WORKER = str(Path(__file__).with_name("train_worker_throughput.py"))


def run(data: Path, variant: str, workers: int, batch_size: int, loader_workers: int) -> dict:
    args = [str(data), "--val-data", str(data), "--model", variant, "--batch-size", str(batch_size),
            "--loader-workers", str(loader_workers), "--no-tracking"]  # fmt: skip
    command = [sys.executable, WORKER, *args]
    if workers > 1:
        horovodrun = shutil.which("horovodrun", path=str(Path(sys.executable).parent))
        command = [horovodrun, "-np", str(workers), "-H", f"localhost:{workers}", "--gloo", *command]
    with tempfile.TemporaryDirectory() as cwd:
        output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=cwd).stdout
    line = next(line for line in output.splitlines() if "RESULT " in line)
    return json.loads(line.split("RESULT ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--variants", nargs="+", default=["u2netp", "u2net"])
    parser.add_argument(
        "--batch-size", type=int, default=4, help="per worker (the recipe's 10 is slow on a CPU)"
    )
    args = parser.parse_args()
    data = studio_dataset(64, size=(320, 320))
    header = ("workers", "images/s per worker", "images/s in all", "loader images/s")
    print(f"{'model':8} " + " ".join(f"{name:>20}" for name in header))
    for variant in args.variants:
        for workers in (1, 2):
            result = run(data, variant, workers, args.batch_size, loader_workers=1)
            per_worker = result["model_images_per_s"]
            print(f"{variant:8} {workers:>20} {per_worker:>20.2f} {per_worker * workers:>20.2f} "
                  f"{result['loader_images_per_s']:>20.1f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
