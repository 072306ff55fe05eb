"""Model URIs → a ready back end: a cutout checkpoint or official `.pth` (PyTorch), or an `.onnx` file."""

from __future__ import annotations

from cutout.model.inference import MaskPredictor, OnnxPredictor, TorchPredictor
from cutout.model.weights import load_weights
from cutout.platform import storage

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt")


def load_predictor(uri: str, device: str = "cpu", threads: int | None = None) -> MaskPredictor:
    """Load the model a URI names, in the runtime its file format needs.

    Args:
        uri: a local path or `s3://` URI of a `.pth`/`.pt`/`.ckpt` (official weights or a cutout
            checkpoint) or an `.onnx` file.
        device: `cpu` or `cuda` for PyTorch models.
        threads: CPU threads for inference; all available cores by default.
    """
    lowered = uri.lower()
    if lowered.endswith(".onnx"):
        with storage.local_copy(uri) as local:
            return OnnxPredictor(local, threads=threads)
    if lowered.endswith(TORCH_SUFFIXES):
        return TorchPredictor(load_weights(uri), device=device, threads=threads)
    raise ValueError(
        f"cannot load a model from {uri!r}: expected a {', '.join(TORCH_SUFFIXES)} or .onnx file"
    )
