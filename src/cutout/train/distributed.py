"""Every Horovod call of the project, in one module (`# Horovod:` marks each one).

Training imports this module and asks it for ranks, samplers, the distributed optimizer and
averaged metrics. Alone (no `horovodrun`), Horovod runs as one rank, so the same code path serves
a laptop, `horovodrun -np 2` with Gloo on the CPU, and an MPIJob on GPU nodes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, DistributedSampler, Subset

from cutout.platform.parallel import available_cores


@dataclass(frozen=True)
class Workers:
    """Where this process stands among the training workers."""

    rank: int
    size: int
    local_rank: int

    @property
    def is_root(self) -> bool:
        """Rank 0 alone logs, tracks and saves."""
        return self.rank == 0


def init() -> Workers:
    """Start Horovod (one rank when not launched by `horovodrun`/`mpirun`)."""
    import horovod.torch as hvd

    hvd.init()  # Horovod: join the other workers (or run alone)
    if hvd.local_size() > 1:  # Horovod: workers sharing this machine share its cores, not each take all
        torch.set_num_threads(max(1, available_cores() // hvd.local_size()))
    return Workers(rank=hvd.rank(), size=hvd.size(), local_rank=hvd.local_rank())  # Horovod: ranks


def train_sampler(dataset: Dataset, workers: Workers, seed: int) -> DistributedSampler:
    """Each worker trains on its own shard; `set_epoch` reshuffles identically on every worker."""
    return DistributedSampler(dataset, num_replicas=workers.size, rank=workers.rank, shuffle=True, seed=seed)


def validation_shard(dataset: Dataset, workers: Workers) -> Subset:
    """A disjoint slice per worker: unlike DistributedSampler, nothing is padded or counted twice."""
    return Subset(dataset, range(workers.rank, len(dataset), workers.size))


def distributed_optimizer(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> torch.optim.Optimizer:
    """Gradients are averaged across workers before each step."""
    import horovod.torch as hvd

    # Horovod: wrap the optimizer so that step() allreduces the gradients.
    return hvd.DistributedOptimizer(optimizer, named_parameters=model.named_parameters())


def broadcast_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Start every worker from rank 0's weights and optimizer state."""
    import horovod.torch as hvd

    hvd.broadcast_parameters(model.state_dict(), root_rank=0)  # Horovod: same initial weights
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)  # Horovod: same optimizer state


def average_buffers(model: torch.nn.Module) -> None:
    """Average batch-norm running statistics over workers.

    Gradients are averaged by the optimizer, but each worker's running mean and variance come from its own
    shard; averaging them keeps every worker's model identical and the statistics closer to the full data.
    """
    import horovod.torch as hvd

    for name, buffer in model.named_buffers():
        if buffer.is_floating_point():
            averaged = hvd.allreduce(buffer.contiguous(), op=hvd.Average, name=f"buffer.{name}")  # Horovod
            buffer.copy_(averaged)


def sum_across_workers(values: dict[str, float]) -> dict[str, float]:
    """Add up per-worker sums (loss, IoU, counts): Horovod does not merge extra metrics by itself."""
    import horovod.torch as hvd

    names = sorted(values)
    tensor = torch.tensor([values[name] for name in names], dtype=torch.float64)
    total = hvd.allreduce(tensor, op=hvd.Sum, name="metric_sums")  # Horovod: sum over workers
    return dict(zip(names, total.tolist(), strict=True))


def gather_objects(value: object) -> list:
    """One value from each worker, in rank order (for per-worker RNG states in checkpoints)."""
    import horovod.torch as hvd

    return hvd.allgather_object(value, name="gather_objects")  # Horovod: collect from every rank


def launched_by_horovod() -> bool:
    """True inside a worker started by `horovodrun` (Gloo) or `mpirun`."""
    return "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ


# Local workers share the machine's few cores, so CPU spent outside the model is CPU the model loses. With
# these, Horovod's background thread wakes up less often to look for ready tensors (every 20 ms), and
# glibc keeps large freed activations instead of returning them to the kernel at every step (system time
# spent for nothing). An environment that sets these variables wins.
LOCAL_WORKER_ENV = {
    "HOROVOD_CYCLE_TIME": "20",
    "MALLOC_MMAP_THRESHOLD_": str(32 * 2**20),
    "MALLOC_TRIM_THRESHOLD_": str(2**30),
}


def run_local_workers(count: int, module_args: Sequence[str]) -> int:
    """Run `python -m cutout.train ARGS` as `count` local workers under `horovodrun` with Gloo."""
    horovodrun = shutil.which("horovodrun", path=os.path.dirname(sys.executable)) or "horovodrun"
    # Horovod: local launch, Gloo controller, CPU or local GPUs.
    command = [horovodrun, "-np", str(count), "-H", f"localhost:{count}", "--gloo",
               sys.executable, "-m", "cutout.train", *module_args]  # fmt: skip
    return subprocess.run(command, check=False, env={**LOCAL_WORKER_ENV, **os.environ}).returncode
