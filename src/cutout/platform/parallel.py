"""Process pools for the data steps: both cores, results in input order, memory bounded.

A step maps one function over a stream of items (pairs, indices). Only a few tasks are in flight at a
time, so memory does not grow with the dataset; results come back in input order, so outputs and
manifests are the same whatever the number of workers.
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

IN_FLIGHT_PER_WORKER = 4


def available_cores() -> int:
    """The cores this process may use (the container's CPU set, not the host's)."""
    return len(os.sched_getaffinity(0))


def ordered_map(
    function: Callable[[Item], Result], items: Iterable[Item], workers: int | None = None
) -> Iterator[Result]:
    """`map(function, items)` on worker processes, in order, with few tasks in flight.

    `function` must be picklable (a module-level function or a `functools.partial` of one). With one
    worker it runs in this process: simpler to debug, and no pool start-up for small jobs.
    """
    workers = workers or available_cores()
    if workers == 1:
        yield from map(function, items)
        return
    pending: deque[Future[Result]] = deque()
    with ProcessPoolExecutor(workers) as pool:
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) >= workers * IN_FLIGHT_PER_WORKER:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:  # the consumer stopped early: drop work nobody will read
                future.cancel()
