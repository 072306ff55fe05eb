"""Model URIs → a ready back end: a built-in name (`u2netp`), a cutout checkpoint or official `.pth`
(PyTorch), an `.onnx` file, or a registered model (`models:/NAME@ALIAS`, `models:/NAME/VERSION`) whose
checkpoint or ONNX file is fetched."""

from __future__ import annotations

import tempfile

from cutout.model.builtin import BUILTIN_MODELS, builtin_model_path, is_builtin
from cutout.model.inference import INPUT_SIZE, MaskPredictor, OnnxPredictor, TorchPredictor
from cutout.platform import storage
from cutout.platform.names import REGISTRY_SCHEME, is_registry_uri

TORCH_SUFFIXES = (".pth", ".pt", ".ckpt")


def load_predictor(
    uri: str, device: str = "cpu", threads: int | None = None, prefer: str | None = None
) -> MaskPredictor:
    """Load the model a URI names, in the runtime its file format needs.

    Args:
        uri: a built-in model name (`u2netp`, see `cutout.model.builtin`); a local path or `s3://` URI
            of a `.pth`/`.pt`/`.ckpt` (official weights or a cutout checkpoint) or an `.onnx` file; or a
            registered model, `models:/cutout@champion`.
        device: `cpu` or `cuda` for PyTorch models.
        threads: CPU threads for inference; all available cores by default.
        prefer: `checkpoint` (PyTorch) or `onnx`: which runtime runs a registered or built-in model. By
            default ONNX Runtime on a CPU (faster there), for a registered version its ONNX export where
            it was logged with one; its checkpoint on a GPU.
    """
    if is_builtin(uri):
        if prefer == "checkpoint":
            return _torch_predictor(uri, device, threads)
        return OnnxPredictor(builtin_model_path(uri), threads=threads)
    if is_registry_uri(uri):
        from cutout.platform.registry import resolve_model_uri

        if prefer is None and device == "cpu":
            try:
                return load_predictor(uri, device, threads, prefer="onnx")
            except ValueError:  # logged without its ONNX export: its checkpoint, below
                pass
        # Both back ends read the whole file at load time, so the download can go once loaded.
        with tempfile.TemporaryDirectory(prefix="cutout-model-") as folder:
            path = resolve_model_uri(uri, prefer or "checkpoint", folder)
            return load_predictor(str(path), device, threads)
    lowered = uri.lower()
    if lowered.endswith(".onnx"):
        with storage.local_copy(uri) as local:
            return OnnxPredictor(local, threads=threads)
    if lowered.endswith(TORCH_SUFFIXES):
        return _torch_predictor(uri, device, threads)
    raise ValueError(
        f"cannot load a model from {uri!r}: expected a built-in name ({', '.join(BUILTIN_MODELS)}), "
        f"a {', '.join(TORCH_SUFFIXES)} or .onnx file, or {REGISTRY_SCHEME}NAME@ALIAS"
    )


def _torch_predictor(uri: str, device: str, threads: int | None) -> TorchPredictor:
    from cutout.model.weights import load_model  # PyTorch loads only for PyTorch models

    model, metadata = load_model(uri)
    input_size = metadata.get("input_size", INPUT_SIZE)
    return TorchPredictor(model, device=device, threads=threads, input_size=input_size)
