"""The training loop, as prose: `criterion`, `train_one_epoch`, `evaluate`.

Nothing here knows about Horovod or MLflow: the entry point wraps these with distribution and tracking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F


def criterion(outputs: tuple[torch.Tensor, ...], target: torch.Tensor) -> torch.Tensor:
    """The original deep supervision: BCE over the fused and the six side maps, summed (on logits here)."""
    # In float32 whatever the autocast type: a bf16 loss would round away the small late-training values.
    return sum(F.binary_cross_entropy_with_logits(logits.float(), target) for logits in outputs)


def iou_per_image(logits: torch.Tensor, target: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """IoU of each predicted mask (probability ≥ threshold) with its true mask; 1 when both are empty."""
    predicted = torch.sigmoid(logits) >= threshold
    truth = target >= 0.5
    intersection = (predicted & truth).flatten(1).sum(1)
    union = (predicted | truth).flatten(1).sum(1)
    return torch.where(
        union > 0, intersection / union.clamp_min(1), torch.ones_like(union, dtype=torch.float32)
    )


def _to_device(
    batch: tuple[torch.Tensor, torch.Tensor], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    images, masks = batch
    return (
        images.to(device, memory_format=torch.channels_last, non_blocking=True),
        masks.to(device, non_blocking=True),
    )


def train_one_epoch(
    model: torch.nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    autocast_dtype: torch.dtype | None = None,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    on_batch: Callable[[int, float], None] | None = None,
) -> float:
    """One pass over `loader` (stepping `scheduler` after each batch); returns the mean batch loss.

    `on_batch(batches_done, loss)` is called after each step (progress reports).
    """
    model.train()
    total, batches = 0.0, 0
    for batch in loader:
        images, masks = _to_device(batch, device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = criterion(model(images), masks)
        optimizer.zero_grad()  # set_to_none is the default; Horovod's optimizer takes no arguments
        loss.backward()
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        total, batches = total + loss.item(), batches + 1
        if on_batch is not None:
            on_batch(batches, total / batches)
    return total / max(batches, 1)


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module, loader: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device
) -> dict[str, float]:
    """Sums of loss and IoU over `loader`, with the image count (sums, so workers can add them up)."""
    model.eval()
    loss_sum, iou_sum, count = 0.0, 0.0, 0
    for batch in loader:
        images, masks = _to_device(batch, device)
        outputs = model(images)
        loss_sum += criterion(outputs, masks).item() * len(images)
        iou_sum += iou_per_image(outputs[0].float(), masks).sum().item()
        count += len(images)
    return {"loss_sum": loss_sum, "iou_sum": iou_sum, "count": float(count)}
