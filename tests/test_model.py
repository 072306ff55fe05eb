"""The model protects: official names and shapes (so official weights load), shapes out, loading rules."""

import numpy as np
import pytest
import torch

from cutout.model import build_model, load_weights, save_checkpoint
from cutout.model.weights import WeightsError, detect_variant
from helpers import official_shapes, official_state_dict

PARAMETER_COUNTS = {"u2net": 44_009_869, "u2netp": 1_131_181}


@pytest.mark.parametrize("variant", ["u2net", "u2netp"])
def test_state_dict_names_and_shapes_are_the_official_ones(variant):
    ours = [(name, tuple(t.shape)) for name, t in build_model(variant).state_dict().items()]
    assert ours == official_shapes(variant)


@pytest.mark.parametrize("variant", ["u2net", "u2netp"])
def test_parameter_counts(variant):
    assert sum(p.numel() for p in build_model(variant).parameters()) == PARAMETER_COUNTS[variant]


@pytest.mark.parametrize("variant", ["u2net", "u2netp"])
@pytest.mark.parametrize("prefix", ["", "module."])
def test_official_weights_load_strictly_and_variant_is_detected(tmp_path, variant, prefix):
    state = official_state_dict(variant)
    path = tmp_path / f"{variant}.pth"
    torch.save({prefix + name: value for name, value in state.items()}, path)

    model = load_weights(path)

    assert not model.training
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[name], state[name]) for name in state)
    assert detect_variant(state) == variant


def test_checkpoint_round_trip_keeps_weights_and_metadata(tmp_path):
    model = load_weights_from(official_state_dict("u2netp", seed=3), tmp_path)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, model, "u2netp", epoch=7)
    again = load_weights(path, variant="u2netp")
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True)
    )
    with pytest.raises(WeightsError, match="u2netp weights, not u2net"):
        load_weights(path, variant="u2net")


def load_weights_from(state, tmp_path):
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    return load_weights(path)


def test_not_a_model_file_is_refused_with_its_reason(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(WeightsError, match="not a U²-Net state dict"):
        load_weights(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(WeightsError, match="got list"):
        load_weights(path)
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "missing.pth")


def test_unknown_variant_names_the_choices():
    with pytest.raises(ValueError, match="u2net, u2netp"):
        build_model("resnet")


@pytest.mark.parametrize("variant", ["u2net", "u2netp"])
@pytest.mark.parametrize("size", [(320, 320), (321, 241)])
def test_forward_gives_seven_logit_maps_at_input_size(variant, size):
    model = build_model(variant).eval()
    with torch.inference_mode():
        outputs = model(torch.randn(1, 3, *size))
    assert len(outputs) == 7
    assert all(tuple(out.shape) == (1, 1, *size) for out in outputs)
    # logits, not probabilities: training applies BCE-with-logits
    assert any(float(out.min()) < 0 or float(out.max()) > 1 for out in outputs)


def test_fused_output_is_the_outconv_of_the_side_outputs():
    model = build_model("u2netp").eval()
    with torch.inference_mode():
        fused, *sides = model(torch.randn(2, 3, 64, 96))
        expected = model.outconv(torch.cat(sides, 1))
    assert torch.allclose(fused, expected)


def test_training_step_reduces_the_loss_on_one_batch():
    torch.manual_seed(0)
    model = build_model("u2netp").train()
    images = torch.randn(2, 3, 64, 64)
    masks = (images[:, :1] > 0).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def loss() -> torch.Tensor:
        return sum(torch.nn.functional.binary_cross_entropy_with_logits(o, masks) for o in model(images))

    first = loss().item()
    for _ in range(5):
        optimizer.zero_grad()
        loss().backward()
        optimizer.step()
    assert loss().item() < first
    assert np.isfinite(first)
