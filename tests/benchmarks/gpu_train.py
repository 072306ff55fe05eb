"""GPU training throughput: U²-Net images/s per GPU at 288×288, bf16 autocast and channels_last inputs.

Run on a GPU node (not part of `make bench`, which runs on the CPU):

    PYTHONPATH=src python -m tests.benchmarks.gpu_train [--data DIR] [--batch-sizes 10 16 32] [--compile]

Each configuration runs the training step of `cutout.train` (the seed's loss over the seven outputs,
Adam, bf16 autocast, inputs channels_last, weights contiguous as Horovod needs them) on random batches
already on the GPU, so the figure is the model's own rate. With `--data`, the best configuration runs
again fed by the real `DataLoader` (random 288 crops of the 320 pairs, pinned memory, `--loader-workers`
processes) to show whether the loader keeps the GPU busy. The seed managed about 1.4 images/s per GPU.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from cutout.model import build_model
from cutout.train.batch_size import largest_gpu_batch
from cutout.train.engine import criterion


def random_batches(batch_size: int, crop: int, device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
    """The same random batch forever: measures the model, not the input pipeline."""
    images = torch.randn(batch_size, 3, crop, crop, device=device).contiguous(
        memory_format=torch.channels_last
    )
    masks = (torch.rand(batch_size, 1, crop, crop, device=device) > 0.5).float()
    while True:
        yield images, masks


def loader_batches(data: str, batch_size: int, crop: int, workers: int, device: torch.device):
    """Batches from the training `DataLoader`, copied to the GPU as `cutout.train` does."""
    from cutout.data.dataset import PairDataset
    from cutout.data.transforms import train_transform

    dataset = PairDataset(data, train_transform(320, crop))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=True, persistent_workers=True, prefetch_factor=4)  # fmt: skip
    while True:
        for images, masks in loader:
            yield (images.to(device, memory_format=torch.channels_last, non_blocking=True),
                   masks.to(device, non_blocking=True))  # fmt: skip


def measure(
    model: torch.nn.Module, batches: Iterator, steps: int, warmup: int, dtype: torch.dtype | None
) -> dict:
    """Images/s over `steps` optimizer steps after `warmup` untimed ones (cuDNN autotuning, compilation)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)
    model.train()

    def step() -> int:
        images, masks = next(batches)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            loss = criterion(model(images), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return len(images)

    started = time.perf_counter()
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    warmup_s = time.perf_counter() - started
    torch.cuda.reset_peak_memory_stats()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    images = sum(step() for _ in range(steps))
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000
    return {"images_per_s": images / seconds, "ms_per_step": 1000 * seconds / steps, "warmup_s": warmup_s,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30}  # fmt: skip


def run(args: argparse.Namespace, batch_size: int, compiled: bool, precision: str, data: str | None = None):
    torch.manual_seed(0)
    device = torch.device("cuda")
    model = build_model(args.model).to(device)
    if compiled:
        model = torch.compile(model)
    dtype = {"bf16": torch.bfloat16, "fp32": None}[precision]
    batches = (
        loader_batches(data, batch_size, args.crop, args.loader_workers, device)
        if data
        else random_batches(batch_size, args.crop, device)
    )
    result = measure(model, batches, args.steps, args.warmup, dtype)
    result.update(model=args.model, batch_size=batch_size, compiled=compiled, precision=precision,
                  input="data loader" if data else "random tensors on the GPU")  # fmt: skip
    mode = "compiled" if compiled else "eager"
    print(f"{args.model:7} {precision:5} batch {batch_size:3} {mode:8} {result['input']:26} "
          f"{result['images_per_s']:8.1f} images/s {result['ms_per_step']:7.1f} ms/step "
          f"peak {result['peak_memory_gib']:5.1f} GiB (warm-up {result['warmup_s']:.0f} s)",
          flush=True)  # fmt: skip
    del model
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="u2net", choices=["u2net", "u2netp"])
    parser.add_argument("--crop", type=int, default=288)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[10, 16, 32])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--fp32-baseline", action="store_true", help="also time fp32 at the first batch size")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile at the largest batch")
    parser.add_argument("--data", help="a prepared dataset of 320×320 pairs: also time with the real loader")
    parser.add_argument("--loader-workers", type=int, default=8)
    parser.add_argument(
        "--find-batch-size", action="store_true", help="also probe the largest batch that fits"
    )
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()

    torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick the fastest kernels once
    print(
        f"{torch.cuda.get_device_name()}  torch {torch.__version__}  cuDNN {torch.backends.cudnn.version()}"
    )
    results = []
    if args.fp32_baseline:
        results.append(run(args, args.batch_sizes[0], compiled=False, precision="fp32"))
    results += [run(args, batch, compiled=False, precision="bf16") for batch in args.batch_sizes]
    if args.compile:
        results.append(run(args, max(args.batch_sizes), compiled=True, precision="bf16"))
    if args.data:
        best = max(results, key=lambda result: result["images_per_s"])
        results.append(run(args, best["batch_size"], best["compiled"], "bf16", data=args.data))
    if args.find_batch_size:
        model = build_model(args.model).to("cuda").train()
        largest = largest_gpu_batch(model, args.crop, torch.device("cuda"))
        print(
            f"largest batch per GPU for {args.model} at {args.crop}×{args.crop} (bf16): {largest}", flush=True
        )
    if args.json:
        with open(args.json, "w") as file:
            json.dump(results, file, indent=2)


if __name__ == "__main__":
    main()
