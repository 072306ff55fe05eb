"""Model URIs → a ready back end: a cutout checkpoint or official `.pth` (PyTorch), an `.onnx` file, or a
registered model (`models:/NAME@ALIAS`, `models:/NAME/VERSION`) whose checkpoint or ONNX file is fetched."""

from __future__ import annotations

import tempfile

from cutout.model.inference import INPUT_SIZE, MaskPredictor, OnnxPredictor, TorchPredictor
from cutout.platform import storage

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt")
REGISTRY_SCHEME = "models:/"


def load_predictor(
    uri: str, device: str = "cpu", threads: int | None = None, prefer: str = "checkpoint"
) -> MaskPredictor:
    """Load the model a URI names, in the runtime its file format needs.

    Args:
        uri: a local path or `s3://` URI of a `.pth`/`.pt`/`.ckpt` (official weights or a cutout
            checkpoint) or an `.onnx` file; or a registered model, `models:/cutout@champion`.
        device: `cpu` or `cuda` for PyTorch models.
        threads: CPU threads for inference; all available cores by default.
        prefer: for a registered model, its `checkpoint` (PyTorch) or its `onnx` export.
    """
    if uri.startswith(REGISTRY_SCHEME):
        from cutout.platform.registry import resolve_model_uri

        # Both back ends read the whole file at load time, so the download can go once loaded.
        with tempfile.TemporaryDirectory(prefix="cutout-model-") as folder:
            return load_predictor(str(resolve_model_uri(uri, prefer, folder)), device, threads)
    lowered = uri.lower()
    if lowered.endswith(".onnx"):
        with storage.local_copy(uri) as local:
            return OnnxPredictor(local, threads=threads)
    if lowered.endswith(TORCH_SUFFIXES):
        from cutout.model.weights import load_model  # PyTorch loads only for PyTorch models

        model, metadata = load_model(uri)
        input_size = metadata.get("input_size", INPUT_SIZE)
        return TorchPredictor(model, device=device, threads=threads, input_size=input_size)
    raise ValueError(
        f"cannot load a model from {uri!r}: expected a {', '.join(TORCH_SUFFIXES)} or .onnx file"
    )
