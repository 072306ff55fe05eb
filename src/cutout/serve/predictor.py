"""The KServe predictor: photos in (v1 or v2, see `cutout.serve.codec`), cutouts, masks and scores out.

    python -m cutout.serve.predictor --model-uri models:/cutout@champion --runtime onnx --http_port 8080

The server binds 127.0.0.1 unless ``--host`` says otherwise (``0.0.0.0`` in a container), answers
``/v2/health/ready`` only once the model is loaded, and serves KServe's REST routes through
`cutout.serve.server`. The network runs one batch at a time on all cores (PyTorch threads or ONNX
Runtime intra-op threads); decoding and PNG encoding of other requests run beside it on threads.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import threading
from pathlib import PurePosixPath
from typing import Any

import kserve
import numpy as np

from cutout.compose import alpha_at_size
from cutout.evaluate.confidence import mask_confidence
from cutout.model.builtin import BUILTIN_MODELS, is_builtin
from cutout.model.inference import MaskPredictor, minmax_normalise, preprocess
from cutout.model.loader import load_predictor
from cutout.platform import storage
from cutout.platform.names import MODEL_NAME, ModelRef, is_registry_uri  # MODEL_NAME: the service's name too
from cutout.serve import codec
from cutout.serve.photos import DecodeLimits, Photo, PhotoResult, encode_png, render_cutout
from cutout.serve.server import decode_limits, serve_from_args, server_parser

logger = logging.getLogger(__name__)

RUNTIMES = ("torch", "onnx")


class BackgroundRemover(kserve.Model):
    """U²-Net behind KServe: decode photos, predict masks, return masks, cutouts and quality scores."""

    def __init__(
        self,
        name: str,
        model_uri: str,
        runtime: str | None = None,
        limits: DecodeLimits | None = None,
    ) -> None:
        """Set up the model; `load` fetches it.

        Args:
            name: The model name in the URL paths.
            model_uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION``, a checkpoint or an ``.onnx``
                file (local or ``s3://``).
            runtime: ``torch`` or ``onnx``; by default the file's own (registered models: torch).
            limits: Per-request pixel and batch limits (default: `DecodeLimits()`).
        """
        super().__init__(name)
        if runtime is not None and runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {', '.join(RUNTIMES)}, not {runtime!r}")
        self.model_uri = model_uri
        self.runtime = runtime
        self.limits = limits or DecodeLimits()
        self.model_version = ""
        self.predictor: MaskPredictor | None = None
        # One forward pass at a time: each already uses every core, and two would only fight for them.
        self._network = threading.Lock()

    def load(self) -> bool:
        """Resolve the version, load the network in its runtime, and only then report ready."""
        runtime = self.runtime or default_runtime(self.model_uri)
        check_runtime(self.model_uri, runtime)  # before fetching anything
        uri, version = resolve_model_version(self.model_uri)
        self.predictor = load_predictor(uri, prefer="onnx" if runtime == "onnx" else "checkpoint")
        self.model_version = version
        logger.info(
            "loaded %s version %s with %s", self.model_uri, self.model_version, self.predictor.description
        )
        self.ready = True
        return self.ready

    def validate(self, payload: Any) -> Any:
        # The codec validates everything; KServe's own check would trip over our decoded request.
        return payload

    async def preprocess(self, payload: Any, headers: dict[str, str] | None = None) -> codec.DecodedRequest:
        # Decoding a large photo takes tens of milliseconds: off the event loop, so health checks answer.
        return await asyncio.to_thread(codec.decode_request, payload, self.limits)

    async def predict(
        self, payload: codec.DecodedRequest, headers: dict[str, str] | None = None, response_headers=None
    ) -> tuple[codec.DecodedRequest, list[PhotoResult]]:
        return payload, await asyncio.to_thread(self.cut_out, payload.photos)

    async def postprocess(self, result: Any, headers: dict[str, str] | None = None, response_headers=None):
        request, results = result
        return codec.encode_response(request, results, self.name, self.model_version)

    def cut_out(self, photos: list[Photo]) -> list[PhotoResult]:
        """Run one batch through the network and render each photo's outputs at its own resolution.

        The score is computed on the fused map at the network's resolution, before upscaling: that is
        what the network said, and it costs the same for every photo size.
        """
        if self.predictor is None:
            raise RuntimeError("the model is not loaded yet")
        size = self.predictor.input_size
        batch = np.stack([preprocess(photo.image, size) for photo in photos])
        with self._network:
            maps = self.predictor.predict(batch)
        return [render(photo, fused) for photo, fused in zip(photos, maps, strict=True)]


def render(photo: Photo, probabilities: np.ndarray) -> PhotoResult:
    """The PNGs a photo's options ask for and its quality score, from its fused probability map.

    The mask is min-max normalised like `cutout remove` and the registry's pyfunc model, so all three
    agree; the score reads the map as the network gave it, as `cutout calibrate-threshold` does.
    """
    image, options = photo.image, photo.options
    alpha = alpha_at_size(minmax_normalise(probabilities), image.size)
    mask_png = encode_png(alpha) if options.wants_mask else None
    cutout_png = render_cutout(photo, alpha) if options.wants_cutout else None
    score = mask_confidence(probabilities)
    return PhotoResult(mask_png, cutout_png, score, width=image.width, height=image.height)


def resolve_model_version(uri: str) -> tuple[str, str]:
    """The URI to load and the version to report for it.

    ``models:/NAME@ALIAS`` is pinned to the version the alias names now (``models:/NAME/VERSION``), so
    the version reported is the one loaded even if the alias moves meanwhile. A file reports its name
    and the start of its SHA-256 (``model.ckpt-3fa2b1c94e07``).

    Raises:
        ValueError: when no version holds the alias.
    """
    if is_builtin(uri):  # its hash is known, and checked when the file loads
        return uri, f"{uri}-{BUILTIN_MODELS[uri].sha256[:12]}"
    if is_registry_uri(uri):
        from cutout.platform.registry import pin_alias

        pinned = pin_alias(uri)
        if pinned is None:
            ref = ModelRef.parse(uri)
            raise ValueError(
                f"{uri}: no version of registered model {ref.name!r} holds the alias {ref.alias!r}"
            )
        return pinned, pinned.rsplit("/", 1)[-1]  # models:/NAME/VERSION, or a logged model's id
    digest = hashlib.sha256(storage.read_bytes(uri)).hexdigest()[:12]
    return uri, f"{PurePosixPath(uri).name}-{digest}"


def default_runtime(uri: str) -> str:
    """ONNX Runtime for an ``.onnx`` file or a built-in model, PyTorch for everything else."""
    return "onnx" if is_builtin(uri) or uri.lower().endswith(".onnx") else "torch"


def check_runtime(uri: str, runtime: str) -> None:
    """Refuse a file that the chosen runtime cannot run, with what to do instead."""
    if is_builtin(uri):
        return  # built-in models run in both: ONNX Runtime as they are, PyTorch once converted
    is_onnx = uri.lower().endswith(".onnx")
    if runtime == "torch" and is_onnx:
        raise ValueError(f"--runtime torch needs a checkpoint, but {uri} is an ONNX file: use --runtime onnx")
    if runtime == "onnx" and not is_onnx and not is_registry_uri(uri):
        raise ValueError(
            f"--runtime onnx needs an .onnx file or a registered model, not {uri}: "
            "export it with `cutout export onnx` or use --runtime torch"
        )


def build_parser() -> argparse.ArgumentParser:
    """KServe's model-server arguments, ``--host`` and the request limits (`server_parser`), plus ours."""
    parser = server_parser("cutout serve predictor", __doc__.split("\n")[0], MODEL_NAME)
    add = parser.add_argument
    add("--model-uri", required=True,
        help="a built-in model (u2netp), models:/NAME@ALIAS, a checkpoint, or an .onnx file")  # fmt: skip
    add("--runtime", choices=RUNTIMES, help="torch or onnx; unset: onnx for an .onnx file, else torch")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and serve the predictor until interrupted (SIGTERM: status 0)."""
    args = build_parser().parse_args(argv)
    model = BackgroundRemover(args.model_name, args.model_uri, args.runtime, decode_limits(args))
    serve_from_args(model, args)


if __name__ == "__main__":
    main()
