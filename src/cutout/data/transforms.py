"""Paired photo/mask transforms (torchvision v2: `tv_tensors.Mask` moves with the photo) and presets.

The normalisation is the original U²-Net one: divide by the image's max, then ImageNet mean/std.
Masks are resized nearest-neighbour by torchvision itself, so they stay binary.
"""

from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cutout.model.inference import IMAGENET_MEAN, IMAGENET_STD, INPUT_SIZE


def _divide_by_max(image: torch.Tensor) -> torch.Tensor:
    return image / image.amax().clamp_min(1e-6)


def _normalise() -> list[v2.Transform]:
    return [
        v2.ToDtype(
            {tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.float32, "others": None}, scale=True
        ),
        v2.Lambda(_divide_by_max, tv_tensors.Image),
        v2.Normalize(mean=IMAGENET_MEAN.tolist(), std=IMAGENET_STD.tolist()),
    ]


def train_transform(size: int = INPUT_SIZE, crop: int | None = None) -> v2.Compose:
    """The original recipe: resize to `size`, random crop (`crop`, default 0.9 × size), horizontal flip."""
    crop = crop or round(size * 0.9)
    return v2.Compose(
        [v2.Resize((size, size)), v2.RandomCrop(crop), v2.RandomHorizontalFlip(), *_normalise()]
    )


def eval_transform(size: int = INPUT_SIZE) -> v2.Compose:
    """Resize to `size` and normalise, no randomness."""
    return v2.Compose([v2.Resize((size, size)), *_normalise()])
