"""`--find-batch-size`: the largest per-worker batch that trains without running out of memory.

Searching by hand costs a failed job per guess. On a GPU we double the batch until a training
step fails, then bisect; on the CPU an out-of-memory kills the process instead of raising, so we
measure the memory one more image costs and divide what is available (keeping a safety margin).
"""

from __future__ import annotations

import argparse

import psutil
import torch

from cutout.model import build_model
from cutout.train.engine import criterion

CPU_MEMORY_SHARE = 0.8  # leave room for the data loader and the rest of the process
LIMIT = 1024


def _training_step(model: torch.nn.Module, batch: int, crop: int, device: torch.device) -> None:
    images = torch.randn(batch, 3, crop, crop, device=device).to(memory_format=torch.channels_last)
    masks = (torch.rand(batch, 1, crop, crop, device=device) > 0.5).float()
    model.zero_grad(set_to_none=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        loss = criterion(model(images), masks)
    loss.backward()


def _fits_on_gpu(model: torch.nn.Module, batch: int, crop: int, device: torch.device) -> bool:
    try:
        _training_step(model, batch, crop, device)
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        torch.cuda.empty_cache()


def largest_gpu_batch(model: torch.nn.Module, crop: int, device: torch.device) -> int:
    """Double until a step fails, then bisect between the last fit and the first failure."""
    fits, fails = 0, 1
    while fails <= LIMIT and _fits_on_gpu(model, fails, crop, device):
        fits, fails = fails, fails * 2
    while fails - fits > 1:
        middle = (fits + fails) // 2
        fits, fails = (middle, fails) if _fits_on_gpu(model, middle, crop, device) else (fits, middle)
    return fits


def _peak_bytes_for(model: torch.nn.Module, batch: int, crop: int) -> int:
    process = psutil.Process()
    before = process.memory_info().rss
    _training_step(model, batch, crop, torch.device("cpu"))
    return process.memory_info().rss - before


def largest_cpu_batch(model: torch.nn.Module, crop: int) -> int:
    """What fits in the available memory, from what one more image costs (measured, not guessed)."""
    _training_step(model, 1, crop, torch.device("cpu"))  # warm-up: allocator pools, first-touch pages
    per_image = max(_peak_bytes_for(model, 2, crop) - _peak_bytes_for(model, 1, crop), 1)
    available = psutil.virtual_memory().available * CPU_MEMORY_SHARE
    return max(1, min(LIMIT, int(available // per_image)))


def report_largest_batch(args: argparse.Namespace) -> int:
    """Print the largest per-worker batch for `--model` at `--crop` on this worker's device."""
    device = torch.device("cuda" if args.device in ("auto", "cuda") and torch.cuda.is_available() else "cpu")
    model = build_model(args.model).to(device, memory_format=torch.channels_last).train()
    found = (
        largest_gpu_batch(model, args.crop, device)
        if device.type == "cuda"
        else largest_cpu_batch(model, args.crop)
    )
    print(f"largest batch per worker for {args.model} at {args.crop}×{args.crop} on {device}: {found}")
    return 0
