"""Augment benchmark: output pairs written per second and peak memory, on 320×320 synthetic datasets.

Each dataset size runs in a fresh process, so its peak is its own. Memory: the main process's peak RSS
(VmHWM); the largest worker's RSS; and the peak total PSS of main and workers together (shared pages —
torch's libraries, mostly — counted once), sampled each second. Time: wall-clock pairs/s; CPU ms per
pair (main and workers), which a busy machine inflates less than wall time; and the main process's
seconds inside `DatasetWriter.add_pair` (its file writes, each fsynced). The datasets carry no clusters
or splits: every pair is a training pair of its product type, the six types equal, each pair gets
`copies` variants — the slowest case, as validation pairs would only be copied. Targets on 2 cores:
≥ 150 pairs/s, peak RSS ≤ 1 GiB and flat.

    python -m tests.benchmarks.bench_augment [--counts 2000 10000] [--copies 2]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor

import psutil
from tests.benchmarks.bench_inference import peak_rss_mib
from tests.benchmarks.datasets import studio_dataset

SIZE = (320, 320)
MIB = 2**20


class MemorySampler:
    """Samples this process and its children in a thread: peak total PSS and largest worker RSS (MiB)."""

    def __init__(self, interval: float = 1.0):
        self.total_pss = self.worker_rss = 0.0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        me = psutil.Process()
        pss = me.memory_full_info().pss
        for child in me.children(recursive=True):
            try:
                info = child.memory_full_info()
            except psutil.NoSuchProcess:  # a worker that just exited
                continue
            pss += info.pss
            self.worker_rss = max(self.worker_rss, info.rss / MIB)
        self.total_pss = max(self.total_pss, pss / MIB)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def time_writes() -> list[float]:
    """Make `DatasetWriter.add_pair` add its seconds to the returned one-item list (this process only)."""
    from cutout.data.manifest import DatasetWriter

    spent, add_pair = [0.0], DatasetWriter.add_pair

    def timed(self: DatasetWriter, *args: object) -> dict:
        start = time.perf_counter()
        try:
            return add_pair(self, *args)
        finally:
            spent[0] += time.perf_counter() - start

    DatasetWriter.add_pair = timed
    return spent


def augment_rate(src: str, copies: int) -> dict:
    """Augment `src` into a temporary folder and measure it (runs in a fresh process)."""
    from cutout.data.augment import augment_dataset

    writing = time_writes()
    with tempfile.TemporaryDirectory(prefix="bench-augment-") as out, MemorySampler() as memory:
        cpu, start = os.times(), time.perf_counter()
        summary = augment_dataset(src, out, copies=copies)
        seconds, cpu_end = time.perf_counter() - start, os.times()
    cpu_seconds = sum(cpu_end[:4]) - sum(cpu[:4])  # user + system, this process and its reaped workers
    return {"written": summary.written, "seconds": seconds, "rate": summary.written / seconds,
            "cpu_ms": cpu_seconds / summary.written * 1000, "writing": writing[0], "main_mib": peak_rss_mib(),
            "worker_mib": memory.worker_rss, "pss_mib": memory.total_pss}  # fmt: skip


HEADER = ("input pairs", "written", "seconds", "pairs/s", "CPU ms/pair", "writes s", "main RSS MiB",
          "worker RSS MiB", "total PSS MiB", "load average")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--copies", type=int, default=2)
    args = parser.parse_args()
    datasets = [studio_dataset(count, size=SIZE) for count in args.counts]  # made before any timing
    print(" | ".join(HEADER), flush=True)
    for count, src in zip(args.counts, datasets, strict=True):
        # A fresh process per size: an executor's, since a Pool's daemon process may not start workers.
        with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
            row = pool.submit(augment_rate, str(src), args.copies).result()
        load = " ".join(f"{value:.1f}" for value in psutil.getloadavg())
        values = (count, row["written"], f"{row['seconds']:.1f}", f"{row['rate']:.0f}",
                  f"{row['cpu_ms']:.1f}", f"{row['writing']:.1f}", f"{row['main_mib']:.0f}",
                  f"{row['worker_mib']:.0f}", f"{row['pss_mib']:.0f}", load)  # fmt: skip
        print(
            " | ".join(f"{value:>{len(title)}}" for value, title in zip(values, HEADER, strict=True)),
            flush=True,
        )


if __name__ == "__main__":
    main()
