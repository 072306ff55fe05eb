"""Export to ONNX (fp32, or int8 with static calibration) for ONNX Runtime, rembg and Triton.

The file takes one input named `input` (N×3×H×W, normalised as in `inference.preprocess`) and gives seven
probability maps, the fused one first: rembg's `u2net_custom` session reads only the first output, the
quality score can use the side outputs.
"""

from __future__ import annotations

import itertools
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from PIL import Image
from torch import nn

from cutout.model.inference import INPUT_SIZE, INPUT_SIZE_KEY, preprocess
from cutout.model.u2net import U2Net
from cutout.platform import storage

OUTPUT_NAMES = ["fused", "side1", "side2", "side3", "side4", "side5", "side6"]
CALIBRATION_LIMIT = 64  # photos int8 calibration reads: enough for stable activation ranges


class ProbabilityHead(nn.Module):
    """The network with sigmoids on its outputs: exported files hold probabilities, as the original's did."""

    def __init__(self, model: U2Net):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(torch.sigmoid(logits) for logits in self.model(x))


def export_onnx(model: U2Net, out: str | Path, input_size: int = INPUT_SIZE, opset: int = 17) -> None:
    """Write an fp32 ONNX file with a dynamic batch, height and width; `input_size` goes in its metadata."""
    dummy = torch.zeros(1, 3, input_size, input_size)
    spatial = {0: "batch", 2: "height", 3: "width"}
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "model.onnx"
        # The TorchScript exporter (deprecated since torch 2.9): much faster than the dynamo exporter,
        # which gives the same graph; switch when it is removed.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(
                ProbabilityHead(model.eval()), (dummy,), str(local), dynamo=False, opset_version=opset,
                input_names=["input"], output_names=OUTPUT_NAMES,
                dynamic_axes={"input": spatial, **{name: spatial for name in OUTPUT_NAMES}},
            )  # fmt: skip
        _set_input_size(local, input_size)
        storage.write_bytes(str(out), local.read_bytes())


def _set_input_size(path: Path, input_size: int) -> None:
    exported = onnx.load(str(path))
    onnx.helper.set_model_props(exported, {INPUT_SIZE_KEY: str(input_size)})
    onnx.save(exported, str(path))


def calibration_batches(
    photos: Iterable[Image.Image], input_size: int, limit: int = CALIBRATION_LIMIT
) -> Iterator[np.ndarray]:
    """Pre-processed 1×3×S×S batches of the first `limit` photos."""
    count = 0
    for photo in itertools.islice(photos, limit):
        yield preprocess(photo, input_size)[np.newaxis]
        count += 1
    if count == 0:
        raise ValueError("no photos to calibrate int8 quantisation with")


def quantize_int8(
    fp32_path: str | Path, out: str | Path, photos: Iterable[Image.Image], input_size: int = INPUT_SIZE
) -> None:
    """Static int8 quantisation (QDQ, per-channel weights) calibrated on `photos` like those it will see.

    Static rather than dynamic: ONNX Runtime's dynamic quantisation leaves convolutions slow on the CPU.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = calibration_batches(photos, input_size)

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        with storage.local_copy(str(fp32_path)) as fp32_local:
            quant_pre_process(str(fp32_local), str(prepared))
        quantize_static(
            str(prepared), str(quantized), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        )  # fmt: skip
        storage.write_bytes(str(out), quantized.read_bytes())


def export_model(
    model_uri: str,
    out: str | Path,
    calibration: Iterable[Image.Image] | None = None,
    input_size: int | None = None,
) -> None:
    """Export the model at `model_uri` to ONNX; int8 calibrated on `calibration` photos when given.

    `input_size` overrides the size the model was trained at (kept in the checkpoint; 320 otherwise).
    """
    from cutout.model.weights import load_model

    model, metadata = load_model(model_uri)
    input_size = input_size or metadata.get("input_size", INPUT_SIZE)
    if calibration is None:
        export_onnx(model, out, input_size)
        return
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, fp32, input_size)
        quantize_int8(fp32, out, calibration, input_size)
