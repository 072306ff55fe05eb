"""Built-in model names, as rembg has them: `--model u2netp` works everywhere a model is taken.

- `u2netp`: the official pretrained U²-NetP (Qin et al.), rembg's ONNX export. The set-up
  (`scripts/fetch-weights.sh`, run by `make`) puts it in the weights cache; nothing downloads at run time.
- `u2netp-fashion`: cutout's own U²-NetP, fine-tuned from `u2netp` on real street-fashion photos and the
  synthetic catalogue; it ships inside the package (see `docs/models/u2netp-fashion.md`).

Both are checked against their sha256 when loaded: a damaged file is an error, never a quiet bad mask.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

WEIGHTS_CACHE_ENV = "CUTOUT_WEIGHTS_CACHE"
PACKAGED_WEIGHTS = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class BuiltinModel:
    """A model that a name selects: where its file lives and what it must hash to."""

    name: str
    filename: str
    sha256: str
    packaged: bool  # inside the package, or in the weights cache that the set-up fills
    summary: str


BUILTIN_MODELS = {
    model.name: model
    for model in (
        BuiltinModel(
            "u2netp", "u2netp.onnx", "309c8469258dda742793dce0ebea8e6dd393174f89934733ecc8b14c76f4ddd8",
            packaged=False, summary="the official pretrained U²-NetP (rembg's export, MIT)",
        ),
        BuiltinModel(
            "u2netp-fashion", "u2netp-fashion.onnx",
            "9addcc778051d43a0a61d04ccf1558f29233ffd776d38f239be470553799e653", packaged=True,
            summary="u2netp fine-tuned on real street-fashion photos and the synthetic catalogue "
            "(docs/models/u2netp-fashion.md)",
        ),
    )
}  # fmt: skip
DEFAULT_MODEL = "u2netp"


class BuiltinModelError(ValueError):
    """A built-in model's file is missing or damaged; the message says how to get it back."""


def is_builtin(uri: str) -> bool:
    """Whether a model reference is a built-in name (`u2netp`) rather than a path or registry URI."""
    return uri in BUILTIN_MODELS


def weights_cache() -> Path:
    """Where the set-up keeps fetched weights: `$CUTOUT_WEIGHTS_CACHE`, or `~/.cache/cutout/weights`."""
    configured = os.environ.get(WEIGHTS_CACHE_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "cutout" / "weights"


def builtin_model_path(name: str) -> Path:
    """The checked file of a built-in model.

    Raises:
        BuiltinModelError: the name is unknown, or its file is missing or does not match its hash.
    """
    if name not in BUILTIN_MODELS:
        raise BuiltinModelError(f"unknown built-in model {name!r}: choose one of {', '.join(BUILTIN_MODELS)}")
    model = BUILTIN_MODELS[name]
    path = (PACKAGED_WEIGHTS if model.packaged else weights_cache()) / model.filename
    remedy = (
        "reinstall cutout"
        if model.packaged
        else f"run `make` (scripts/fetch-weights.sh fetches it, or set ${WEIGHTS_CACHE_ENV})"
    )
    if not path.is_file():
        raise BuiltinModelError(f"built-in model {name!r}: {path} is missing; {remedy}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != model.sha256:
        raise BuiltinModelError(f"built-in model {name!r}: {path} is damaged (sha256 {digest}); {remedy}")
    return path
