"""Photo/mask pairs of a dataset folder or prefix as a torch Dataset (read lazily, one pair at a time)."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torchvision import tv_tensors
from torchvision.transforms.v2 import functional as TF

from cutout.data.io import read_image, read_mask
from cutout.data.manifest import read_manifest, record_domain
from cutout.platform import storage

PairTransform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]


class PairDataset(torch.utils.data.Dataset):
    """The pairs a manifest lists (optionally one split of them), transformed together."""

    def __init__(self, root: str, transform: PairTransform, split: str | None = None):
        self.root = root
        self.transform = transform
        self.records = [r for r in read_manifest(root) if split is None or r.get("split") == split]
        if not self.records:
            raise ValueError(f"{root}: no pairs" + (f" in split {split!r}" if split else ""))

    def domains(self) -> list[str]:
        """The `domain` fields of its records (`real`, `synthetic`, ...), sorted; `unlabelled` where none."""
        return sorted({record_domain(record) for record in self.records})

    def only_domain(self, domain: str) -> PairDataset:
        """The same dataset restricted to one domain's pairs."""
        subset = copy.copy(self)
        subset.records = [record for record in self.records if record_domain(record) == domain]
        return subset

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        record = self.records[index]
        image = tv_tensors.Image(TF.pil_to_tensor(read_image(storage.join(self.root, record["image"]))))
        mask = read_mask(storage.join(self.root, record["mask"]))
        return self.transform(image, tv_tensors.Mask(torch.from_numpy(mask)[None].to(torch.uint8)))
