"""What fine-tuning does with batch norms that the pretrained weights had folded into their convolutions.

The official U²-NetP (rembg's ONNX export) carries every batch norm inside its convolution; loaded into our
U²-Net, each batch norm is an identity (`cutout.model.folded`). Put into train mode as they are, they would
normalise by batch statistics again and the first step would wreck the network. `--batch-norm` chooses:

- `frozen`: the batch norms stay identities in eval mode and do not learn; only the convolutions do.
- `reestimate`: each batch norm's input statistics are measured on training photos, and its scale and
  shift are set to undo them, so the network still computes exactly the same function; batch norm then
  trains as usual (batch statistics, learned scale and shift), as the original U²-Net was trained.
- `train`: ordinary batch norm (models from scratch, or checkpoints whose batch norms are real).

`auto` picks `frozen` when every batch norm is an identity and `train` otherwise: fine-tuned on real
photos, the official U²-NetP scores higher with frozen batch norms than with re-estimated ones
(figures: `docs/benchmarks.md`). Re-estimating starts the batch norms from statistics of many batches,
which train mode then replaces with each small batch's own, noisier ones.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from cutout.train.config import BATCH_NORM_MODES


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """A batch norm that stays in eval mode (running statistics) whatever `model.train()` asks.

    Same parameters and buffers as `nn.BatchNorm2d`, so checkpoints load into the plain model.
    """

    def train(self, mode: bool = True) -> FrozenBatchNorm2d:
        return super().train(False)


def batch_norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]


def is_identity(norm: nn.BatchNorm2d) -> bool:
    """Whether a batch norm is the identity that `set_batch_norms_to_identity` makes of a folded one.

    Exact comparisons: a new, untrained batch norm (variance 1, not 1 − eps) is not one, so a model built
    from scratch still trains its batch norms.
    """
    return bool(
        torch.all(norm.weight == 1) and torch.all(norm.bias == 0) and torch.all(norm.running_mean == 0)
        and torch.all(norm.running_var == 1.0 - norm.eps)
    )  # fmt: skip


def resolve_mode(model: nn.Module, mode: str) -> str:
    """`auto` → `frozen` for folded weights (every batch norm an identity), `train` otherwise."""
    if mode not in BATCH_NORM_MODES:
        raise ValueError(f"--batch-norm must be one of {', '.join(BATCH_NORM_MODES)}, not {mode!r}")
    if mode != "auto":
        return mode
    norms = batch_norms(model)
    return "frozen" if norms and all(is_identity(norm) for norm in norms) else "train"


def freeze_batch_norms(model: nn.Module) -> None:
    """Keep every batch norm in eval mode and out of the optimiser's reach."""
    for norm in batch_norms(model):
        norm.__class__ = FrozenBatchNorm2d  # same state, another `train`: no module surgery needed
        norm.requires_grad_(False)
        norm.eval()


@torch.no_grad()
def reestimate_batch_norms(model: nn.Module, batches: Iterable[torch.Tensor]) -> int:
    """Measure each batch norm's input mean and variance per channel, then make it undo them.

    Running mean and variance become the measured ones, and weight = sqrt(var + eps), bias = mean, so in
    eval mode every batch norm still passes values through unchanged (the network's function is kept),
    while in train mode it normalises again with statistics close to the running ones.

    Returns:
        The number of photos measured.
    """
    norms = batch_norms(model)
    sums = {norm: [0.0, 0.0, 0] for norm in norms}

    def record(norm: nn.BatchNorm2d, inputs: tuple[torch.Tensor, ...]) -> None:
        values = inputs[0].double()
        sums[norm][0] = sums[norm][0] + values.sum(dim=(0, 2, 3))
        sums[norm][1] = sums[norm][1] + values.square().sum(dim=(0, 2, 3))
        sums[norm][2] += values.numel() // values.shape[1]

    hooks = [norm.register_forward_pre_hook(record) for norm in norms]
    model.eval()
    photos = 0
    try:
        for images in batches:
            model(images)
            photos += len(images)
    finally:
        for hook in hooks:
            hook.remove()
    if photos == 0:
        raise ValueError("no photos to re-estimate batch-norm statistics on")
    for norm, (total, squares, count) in sums.items():
        mean = total / count
        variance = (squares / count - mean.square()).clamp_min(0)
        norm.running_mean.copy_(mean)
        norm.running_var.copy_(variance)
        norm.weight.copy_((variance + norm.eps).sqrt())
        norm.bias.copy_(mean)
    return photos
