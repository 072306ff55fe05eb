"""Training in this process, without Horovod: for quick runs (the demo) and for tests of the loop."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from cutout.data.dataset import PairDataset
from cutout.data.transforms import eval_transform, train_transform
from cutout.model import build_model, save_checkpoint
from cutout.train.engine import evaluate, train_one_epoch


@dataclass(frozen=True)
class EpochResult:
    """What one epoch gave: mean training loss, validation loss and mean IoU."""

    epoch: int
    train_loss: float
    val_loss: float
    val_iou: float


def train_locally(
    train_data: str,
    val_data: str,
    checkpoint: str,
    variant: str = "u2netp",
    epochs: int = 8,
    input_size: int = 160,
    batch_size: int = 8,
    lr: float = 1e-3,
    seed: int = 0,
    on_epoch: Callable[[EpochResult], None] | None = None,
) -> list[EpochResult]:
    """Train a model from scratch with the original recipe (Adam, deep-supervision BCE, crop and flip).

    Args:
        train_data: a dataset folder or prefix to train on.
        val_data: a dataset to report validation loss and IoU on after each epoch.
        checkpoint: where to save the final checkpoint (its input size goes with it).
        variant: `u2net` or `u2netp`.
        epochs: passes over `train_data`.
        input_size: square size photos are resized to (320 in the original; smaller trains faster).
        batch_size: photos per step.
        lr: Adam's learning rate.
        seed: makes the run repeatable.
        on_epoch: called with each epoch's result (progress).
    """
    torch.manual_seed(seed)
    device = torch.device("cpu")
    model = build_model(variant).to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    train_loader = torch.utils.data.DataLoader(
        PairDataset(train_data, train_transform(input_size)), batch_size=batch_size, shuffle=True,
        drop_last=True, generator=generator,
    )  # fmt: skip
    val_loader = torch.utils.data.DataLoader(
        PairDataset(val_data, eval_transform(input_size)), batch_size=batch_size
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    # Cosine decay per step: late epochs refine instead of jumping around (the original kept lr constant).
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * len(train_loader))
    history = []
    for epoch in range(1, epochs + 1):
        train_loss = train_one_epoch(model, train_loader, optimizer, device, scheduler=scheduler)
        sums = evaluate(model, val_loader, device)
        result = EpochResult(
            epoch, train_loss, sums["loss_sum"] / sums["count"], sums["iou_sum"] / sums["count"]
        )
        history.append(result)
        if on_epoch:
            on_epoch(result)
    save_checkpoint(checkpoint, model, variant, input_size=input_size, epoch=epochs)
    return history
