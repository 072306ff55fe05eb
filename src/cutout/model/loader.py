"""Model URIs → a ready back end: a cutout checkpoint or official `.pth` (PyTorch), or an `.onnx` file."""

from __future__ import annotations

from cutout.model.inference import INPUT_SIZE, MaskPredictor, OnnxPredictor, TorchPredictor
from cutout.model.weights import load_model
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
        model, metadata = load_model(uri)
        input_size = metadata.get("input_size", INPUT_SIZE)
        return TorchPredictor(model, device=device, threads=threads, input_size=input_size)
    raise ValueError(
        f"cannot load a model from {uri!r}: expected a {', '.join(TORCH_SUFFIXES)} or .onnx file"
    )
