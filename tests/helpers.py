"""Test helpers: weights under the official names, and product-like photos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

DATA = Path(__file__).parent / "data"


def official_shapes(variant: str) -> list[tuple[str, tuple[int, ...]]]:
    """Name and shape of every state-dict entry of the published model/u2net.py, in order."""
    entries = []
    for line in (DATA / f"{variant}_state_dict_shapes.txt").read_text().splitlines():
        name, _, shape = line.partition(" ")
        entries.append((name, tuple(int(size) for size in shape.split("x")) if shape else ()))
    return entries


def official_state_dict(variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict under the official names with random values, as an official .pth would hold."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in official_shapes(variant):
        if name.endswith("num_batches_tracked"):
            state[name] = torch.tensor(1000)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=generator) + 0.5
        else:
            state[name] = torch.randn(shape, generator=generator) * 0.1
    return state


def product_photo(width: int = 200, height: int = 300, seed: int = 0) -> Image.Image:
    """A garment-like dark shape on an off-white backdrop."""
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (width, height), (240, 238, 235))
    colour = tuple(int(c) for c in rng.integers(20, 160, size=3))
    ImageDraw.Draw(image).ellipse((width * 0.25, height * 0.2, width * 0.75, height * 0.85), fill=colour)
    return image


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under `root`, by relative path: equal before and after = input untouched."""
    import hashlib

    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}  # fmt: skip
