"""U²-Net models: building them, loading weights, running them and exporting them.

The names below load on first use: importing `cutout.model.inference` for an ONNX model must not import
PyTorch, which is large and would swell a predictor's resident memory for nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cutout.model.u2net import U2Net
    from cutout.model.weights import MODEL_VARIANTS, build_model, load_model, load_weights, save_checkpoint

_HOMES = {"U2Net": "cutout.model.u2net", "MODEL_VARIANTS": "cutout.model.weights",
          "build_model": "cutout.model.weights", "load_model": "cutout.model.weights",
          "load_weights": "cutout.model.weights", "save_checkpoint": "cutout.model.weights"}  # fmt: skip

__all__ = ["MODEL_VARIANTS", "U2Net", "build_model", "load_model", "load_weights", "save_checkpoint"]


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_HOMES[name]), name)
