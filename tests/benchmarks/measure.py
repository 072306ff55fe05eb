"""Measuring a data step: wall time, CPU time and memory of the step's own processes.

Each measurement runs in a fresh interpreter (`measure_in_subprocess`), so the peaks are the step's own:
the parent's ``VmHWM``, the largest worker's ``VmHWM``, and the largest sum of resident memory over the
parent and its workers (sampled every 50 ms; shared copy-on-write pages count once per process, so the
sum overstates). CPU milliseconds per pair tell the step's cost even when other jobs share the cores.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def status_kib(pid: int | str, field: str) -> int:
    """A memory field of /proc/<pid>/status in KiB; 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children(pid: int) -> list[int]:
    """Direct children of a process (the worker pool), from /proc/<pid>/task/*/children."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            pids += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return pids


def _sample_memory(peaks: dict[str, int], stop: threading.Event) -> None:
    me = os.getpid()
    while not stop.wait(0.05):
        workers = children(me)
        total = status_kib(me, "VmRSS") + sum(status_kib(pid, "VmRSS") for pid in workers)
        peaks["worker_hwm"] = max([peaks["worker_hwm"], *(status_kib(pid, "VmHWM") for pid in workers)])
        peaks["total_rss"] = max(peaks["total_rss"], total)


def cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker pool, once shut down)."""
    usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)


@contextmanager
def measured(figures: dict) -> Iterator[None]:
    """Fill `figures` with seconds, CPU seconds and memory peaks (MiB) of the block."""
    peaks = {"worker_hwm": 0, "total_rss": 0}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(peaks, stop), daemon=True)
    sampler.start()
    start, cpu_start = time.perf_counter(), cpu_seconds()
    try:
        yield
    finally:
        figures["seconds"], figures["cpu_seconds"] = time.perf_counter() - start, cpu_seconds() - cpu_start
        stop.set()
        sampler.join()
        figures["parent_hwm_mib"] = round(status_kib("self", "VmHWM") / 1024)
        figures["worker_hwm_mib"] = round(peaks["worker_hwm"] / 1024)
        figures["total_rss_mib"] = round(peaks["total_rss"] / 1024)


def per_pair(figures: dict, pairs: int) -> dict:
    """Add pairs, pairs per second and CPU milliseconds per pair to `figures`."""
    return {**figures, "pairs": pairs, "seconds": round(figures["seconds"], 1),
            "pairs_per_s": round(pairs / figures["seconds"], 1),
            "cpu_ms_per_pair": round(figures["cpu_seconds"] / pairs * 1000, 2)}  # fmt: skip


def measure_in_subprocess(module: str, src: Path) -> dict:
    """Run `python -m module --measure src` and return the JSON it prints last."""
    command = [sys.executable, "-m", module, "--measure", str(src)]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_measured(function: Callable[[], int]) -> dict:
    """`function` (returning the number of pairs it handled) under `measured`, as per-pair figures."""
    figures: dict = {}
    with measured(figures):
        pairs = function()
    return per_pair(figures, pairs)


def parse_bench_args(
    doc: str, measure: Callable[[str], dict], argv: list[str] | None = None
) -> list[int] | None:
    """The `--counts` to run; None when the internal `--measure SRC` was given (measured and printed here)."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--counts", type=int, nargs="+", default=[2000, 10000])
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: the subprocess's job
    args = parser.parse_args(argv)
    if args.measure:
        print(json.dumps(measure(args.measure)))
        return None
    return args.counts
