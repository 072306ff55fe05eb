"""Fine-tuning the official weights must not wreck them: their batch norms were folded into convolutions."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from cutout.data.real import REAL_PHOTOS
from cutout.model import build_model, load_model
from cutout.model.inference import preprocess
from cutout.train.batchnorm import (
    freeze_batch_norms,
    reestimate_batch_norms,
    resolve_mode,
)
from cutout.train.engine import criterion


def real_batch(count: int = 4, size: int = 160) -> torch.Tensor:
    photos = sorted((REAL_PHOTOS / "images").glob("*.jpg"))[:count]
    return torch.from_numpy(np.stack([preprocess(Image.open(p).convert("RGB"), size) for p in photos]))


def fused(model: torch.nn.Module, batch: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return torch.sigmoid(model.eval()(batch)[0])


def test_auto_freezes_folded_weights_and_trains_the_batch_norms_of_anything_else():
    assert resolve_mode(load_model("u2netp")[0], "auto") == "frozen"
    assert resolve_mode(build_model("u2netp"), "auto") == "train"  # a new model, variance 1 (not 1 − eps)
    with pytest.raises(ValueError, match="--batch-norm must be one of"):
        resolve_mode(build_model("u2netp"), "folded")


def test_frozen_batch_norms_stay_identities_through_a_training_step():
    model, batch = load_model("u2netp")[0], real_batch()
    freeze_batch_norms(model)
    before = fused(model, batch)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.0)

    model.train()
    loss = criterion(model(batch), (before > 0.5).float())
    loss.backward()
    optimizer.step()

    # With lr 0 and batch norms in eval mode, the training pass computed the same maps as inference.
    assert torch.allclose(torch.sigmoid(model(batch)[0].detach()), before, atol=1e-6)
    assert resolve_mode(model, "auto") == "frozen"  # its checkpoint fine-tunes the same way again


def test_reestimated_batch_norms_keep_the_function_and_normalise_again_in_training():
    model, batch = load_model("u2netp")[0], real_batch(8)
    before = fused(model, batch)

    assert reestimate_batch_norms(model, [batch[:4], batch[4:]]) == 8

    after = fused(model, batch)
    assert (after - before).abs().max() < 1e-4  # eval mode: the same network
    stem = model.stage1.rebnconvin.bn_s1
    assert stem.running_var.min() > 0 and not torch.all(stem.weight == 1)
    model.train()
    with torch.no_grad():
        in_training = torch.sigmoid(model(batch)[0])
    # Train mode normalises by this batch's statistics, which are the ones measured: close to inference.
    assert (in_training - before).abs().mean() < 0.02
