"""Cluster benchmark: pairs per second and peak memory of `cluster_dataset` on synthetic 320×320 pairs.

    python -m tests.benchmarks.bench_cluster [--counts 2000 10000]

The input is what the clean step writes: 320×320 JPEG photos and PNG masks (`studio_dataset`, cached).
Each size runs in a fresh interpreter, so the peaks are the step's own: the parent's ``VmHWM`` (it holds
the feature matrix), the largest worker's ``VmHWM``, and the largest sum of resident memory over all
of the step's processes (sampled every 50 ms; shared copy-on-write pages count once per process, so the
sum overstates). Targets on 2 cores: at least 300 pairs/s, at most 1 GiB, flat with the dataset size.
"""

from __future__ import annotations

import os
import tempfile

from tests.benchmarks.datasets import studio_dataset
from tests.benchmarks.measure import measure_in_subprocess, parse_bench_args, run_measured

SIZE = (320, 320)


def measure(src: str) -> dict:
    """Cluster ``src`` into a temporary folder here; report speed, CPU time, memory and purity."""
    from cutout.data.cluster import cluster_dataset  # imported here: its import is part of the footprint

    result = {}

    def cluster() -> int:
        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as out:
            summary = cluster_dataset(src, out)
        result.update(purity=summary.purity, ari=summary.adjusted_rand_index)
        return summary.count

    return {**run_measured(cluster), **result}


def main(argv: list[str] | None = None) -> None:
    counts = parse_bench_args(__doc__, measure, argv)
    if counts is None:
        return
    print(f"cluster on {len(os.sched_getaffinity(0))} CPUs, load average {os.getloadavg()[0]:.1f} before")
    header = ("pairs", "seconds", "pairs/s", "cpu ms", "parent", "worker", "total", "purity", "ARI")
    print(" ".join(f"{name:>8}" for name in header))
    for count in counts:
        row = measure_in_subprocess("tests.benchmarks.bench_cluster", studio_dataset(count, size=SIZE))
        cells = [row[key] for key in ("pairs", "seconds", "pairs_per_s", "cpu_ms_per_pair")]
        cells += [f"{row[key]}MiB" for key in ("parent_hwm_mib", "worker_hwm_mib", "total_rss_mib")]
        print(" ".join(f"{cell:>8}" for cell in [*cells, row["purity"], row["ari"]]), flush=True)
    print(f"load average {os.getloadavg()[0]:.1f} after (other jobs on the cores slow pairs/s, not cpu ms)")
    print("targets on 2 cores: ≥ 300 pairs/s (so ≤ 6.7 cpu ms per pair), total ≤ 1024 MiB, flat with size")


if __name__ == "__main__":
    main()
