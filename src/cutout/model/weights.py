"""Building models by name, and loading official `.pth` weights or cutout checkpoints into them."""

from __future__ import annotations

import io
import tempfile
from collections.abc import Callable, Mapping
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from cutout.model.builtin import builtin_model_path, is_builtin
from cutout.model.folded import load_folded_onnx, onnx_input_size
from cutout.model.u2net import U2Net, u2net, u2netp
from cutout.platform import storage
from cutout.platform.names import is_registry_uri

MODEL_VARIANTS: dict[str, Callable[[], U2Net]] = {"u2net": u2net, "u2netp": u2netp}

# Our checkpoints are dicts with this marker; official weights are bare state dicts.
CHECKPOINT_FORMAT = "cutout-checkpoint/1"

# stage2's first convolution has 128 output channels in U²-Net and 64 in U²-NetP.
_VARIANT_PROBE = "stage2.rebnconvin.conv_s1.weight"
_PROBE_CHANNELS = {128: "u2net", 64: "u2netp"}


class WeightsError(ValueError):
    """A weights file that is not a U²-Net state dict or a cutout checkpoint."""


def build_model(name: str) -> U2Net:
    """Build an untrained model by variant name (`u2net` or `u2netp`)."""
    try:
        return MODEL_VARIANTS[name]()
    except KeyError:
        raise ValueError(f"unknown model {name!r}: choose one of {', '.join(MODEL_VARIANTS)}") from None


def detect_variant(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Tell U²-Net from U²-NetP by the shape of one of their weights."""
    probe = state_dict.get(_VARIANT_PROBE)
    if probe is None or probe.shape[0] not in _PROBE_CHANNELS:
        raise WeightsError(f"not a U²-Net state dict: no {_VARIANT_PROBE} of 128 or 64 channels")
    return _PROBE_CHANNELS[probe.shape[0]]


def _strip_data_parallel_prefix(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # Weights saved from nn.DataParallel carry "module." in front of every name.
    return {key.removeprefix("module."): value for key, value in state_dict.items()}


def read_state_dict(uri: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a local or `s3://` weights file; return the model's state dict and the checkpoint's metadata."""
    data = storage.read_bytes(str(uri))
    # weights_only: a weights file must not be able to run code when it is loaded.
    loaded = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(loaded, Mapping):
        raise WeightsError(
            f"{uri}: expected a state dict or a cutout checkpoint, got {type(loaded).__name__}"
        )
    if loaded.get("format") == CHECKPOINT_FORMAT:
        metadata = {key: value for key, value in loaded.items() if key != "model"}
        return _strip_data_parallel_prefix(loaded["model"]), metadata
    return _strip_data_parallel_prefix(loaded), {}


def load_model(uri: str | Path, variant: str | None = None) -> tuple[U2Net, dict[str, Any]]:
    """Build the right variant and load official weights or a cutout checkpoint into it, strictly.

    Args:
        uri: a built-in model name (`u2netp`); a registered model (`models:/cutout@champion`, its
            checkpoint); a local path or `s3://` URI of an official
            `u2net.pth`/`u2netp.pth`, a cutout checkpoint, or an fp32 `.onnx` export (rembg's or ours,
            batch norm folded: loaded as identity, see `cutout.model.folded`).
        variant: the expected variant; detected from the weights when left out.

    Returns:
        The model in eval mode on the CPU, and the checkpoint's metadata (empty for official weights).
    """
    if is_registry_uri(str(uri)):
        from cutout.platform.registry import CHECKPOINT, resolve_model_uri

        # The registered checkpoint is read whole, so its download can go once loaded.
        with tempfile.TemporaryDirectory(prefix="cutout-model-") as folder:
            return load_model(resolve_model_uri(str(uri), CHECKPOINT, folder), variant)
    if is_builtin(str(uri)) or str(uri).lower().endswith(".onnx"):
        model, detected, metadata = _load_onnx(str(uri))
    else:
        state_dict, metadata = read_state_dict(uri)
        detected = metadata.get("variant") or detect_variant(state_dict)
        model = build_model(detected)
        model.load_state_dict(state_dict, strict=True)
    if variant is not None and variant != detected:
        raise WeightsError(f"{uri}: holds {detected} weights, not {variant}")
    return model.eval(), metadata


def _load_onnx(uri: str) -> tuple[U2Net, str, dict[str, Any]]:
    """A built-in model or an exported `.onnx` file, its folded batch norms as identity (see `folded`)."""
    builtin = is_builtin(uri)
    with nullcontext(builtin_model_path(uri)) if builtin else storage.local_copy(uri) as local:
        model, variant = load_folded_onnx(local)
        metadata = {"variant": variant, "input_size": onnx_input_size(local)}
    return model, variant, metadata | ({"builtin": uri} if builtin else {})


def load_weights(uri: str | Path, variant: str | None = None) -> U2Net:
    """`load_model` without the metadata: just the network, in eval mode."""
    return load_model(uri, variant)[0]


def save_checkpoint(uri: str | Path, model: U2Net, variant: str, input_size: int = 320, **extra: Any) -> None:
    """Save a cutout checkpoint: the state dict, the variant, and any training state passed in `extra`."""
    buffer = io.BytesIO()
    # input_size travels with the weights: a model trained at 160 px must be run at 160 px.
    checkpoint = {"format": CHECKPOINT_FORMAT, "variant": variant, "input_size": input_size, **extra}
    torch.save({**checkpoint, "model": model.state_dict()}, buffer)
    storage.write_bytes(str(uri), buffer.getvalue())
