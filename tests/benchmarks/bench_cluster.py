"""Cluster benchmark: pairs per second and peak memory of `cluster_dataset` on synthetic 320×320 pairs.

    python -m tests.benchmarks.bench_cluster [--counts 2000 10000]

The input is what the clean step writes: 320×320 JPEG photos and PNG masks (`studio_dataset`, cached).
Each size runs in a fresh interpreter, so the peaks are the step's own: the parent's ``VmHWM`` (it holds
the feature matrix), the largest worker's ``VmHWM``, and the largest sum of resident memory over all
of the step's processes (sampled every 50 ms; shared copy-on-write pages count once per process, so the
sum overstates). Targets on 2 cores: at least 300 pairs/s, at most 1 GiB, flat with the dataset size.
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
from pathlib import Path

from tests.benchmarks.datasets import studio_dataset

SIZE = (320, 320)


def _status_kib(pid: int | str, field: str) -> int:
    """A memory field of /proc/<pid>/status in KiB; 0 once the process is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except (FileNotFoundError, ProcessLookupError):
        return 0
    return next((int(line.split()[1]) for line in lines if line.startswith(field + ":")), 0)


def _children(pid: int) -> list[int]:
    """Direct children of a process (the worker pool)."""
    pids: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            pids += [int(child) for child in (task / "children").read_text().split()]
        except FileNotFoundError:
            continue
    return pids


def _sample_memory(peaks: dict[str, int], stop: threading.Event) -> None:
    """Track the workers' peak and the largest total resident memory of the step's processes."""
    me = os.getpid()
    while not stop.wait(0.05):
        workers = _children(me)
        total = _status_kib(me, "VmRSS") + sum(_status_kib(pid, "VmRSS") for pid in workers)
        peaks["worker_hwm"] = max([peaks["worker_hwm"], *(_status_kib(pid, "VmHWM") for pid in workers)])
        peaks["total_rss"] = max(peaks["total_rss"], total)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished children (the worker pool, once shut down)."""
    usages = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(usage.ru_utime + usage.ru_stime for usage in usages)


def measure(src: str) -> dict:
    """Cluster ``src`` into a temporary folder here; report speed, CPU time, memory and purity."""
    from cutout.data.cluster import cluster_dataset  # imported here: its import is part of the footprint

    peaks = {"worker_hwm": 0, "total_rss": 0}
    stop = threading.Event()
    sampler = threading.Thread(target=_sample_memory, args=(peaks, stop), daemon=True)
    sampler.start()
    with tempfile.TemporaryDirectory(prefix="bench-cluster-") as out:
        start, cpu_start = time.perf_counter(), _cpu_seconds()
        summary = cluster_dataset(src, out)
        seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
    stop.set()
    sampler.join()
    return {"pairs": summary.count, "seconds": round(seconds, 1),
            "pairs_per_s": round(summary.count / seconds),
            "cpu_ms_per_pair": round(cpu / summary.count * 1000, 2),
            "parent_hwm_mib": round(_status_kib("self", "VmHWM") / 1024),
            "worker_hwm_mib": round(peaks["worker_hwm"] / 1024),
            "total_rss_mib": round(peaks["total_rss"] / 1024),
            "purity": summary.purity, "ari": summary.adjusted_rand_index}  # fmt: skip


def measure_in_subprocess(src: Path) -> dict:
    """`measure` in a fresh interpreter, so that the peaks are the step's own."""
    command = [sys.executable, "-m", "tests.benchmarks.bench_cluster", "--measure", str(src)]
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
    print(f"cluster on {len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f} before")
    header = ("pairs", "seconds", "pairs/s", "cpu ms", "parent", "worker", "total", "purity", "ARI")
    print(" ".join(f"{name:>8}" for name in header))
    for count in args.counts:
        row = measure_in_subprocess(studio_dataset(count, size=SIZE))
        cells = [row[key] for key in ("pairs", "seconds", "pairs_per_s", "cpu_ms_per_pair")]
        cells += [f"{row[key]}MiB" for key in ("parent_hwm_mib", "worker_hwm_mib", "total_rss_mib")]
        print(" ".join(f"{cell:>8}" for cell in [*cells, row["purity"], row["ari"]]), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} after (other jobs on the cores slow pairs/s, not cpu ms)")
    print("targets on 2 cores: ≥ 300 pairs/s (so ≤ 6.7 cpu ms per pair), total ≤ 1024 MiB, flat with size")


if __name__ == "__main__":
    main()
