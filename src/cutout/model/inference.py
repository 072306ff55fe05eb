"""Running a U²-Net on photos: the original pre-processing, PyTorch and ONNX Runtime back ends.

Pre- and post-processing follow the original `u2net_test.py`, so official weights give official results:
resize to 320×320, divide by the image's max, ImageNet mean/std; take the fused map, min-max normalise,
resize back to the photo's size. The back ends share one small interface: a normalised N×3×H×W batch
in, fused probabilities N×H×W out.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from PIL import Image

from cutout.platform.parallel import available_cores

if TYPE_CHECKING:
    import torch

INPUT_SIZE = 320
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
# ONNX metadata key for the model's input size (files from elsewhere lack it and get the default, 320).
INPUT_SIZE_KEY = "cutout.input_size"


class MaskPredictor(Protocol):
    """What every back end offers: fused-map probabilities for a normalised batch."""

    description: str
    input_size: int  # the square size the model was trained at (320 for official weights)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """N×3×H×W float32 (see `preprocess`) → N×H×W float32 probabilities of the fused map."""
        ...


def preprocess(image: Image.Image, size: int = INPUT_SIZE) -> np.ndarray:
    """An RGB photo → a 3×size×size float32 array normalised like the original."""
    resized = np.asarray(image.resize((size, size), Image.Resampling.BILINEAR), dtype=np.float32)
    resized /= max(float(resized.max()), 1e-6)  # the original divides by the image's own max
    return ((resized - IMAGENET_MEAN) / IMAGENET_STD).transpose(2, 0, 1)


def minmax_normalise(probabilities: np.ndarray) -> np.ndarray:
    """Stretch one map to [0, 1], as the original does before saving a mask."""
    low, high = float(probabilities.min()), float(probabilities.max())
    return (probabilities - low) / max(high - low, 1e-8)


def upscale_probabilities(probabilities: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an H×W probability map to `size` (width, height), staying in float.

    The full-resolution mask comes from the probabilities, so edges stay smooth: resizing a binary
    320-pixel mask instead would give staircase edges.
    """
    resized = Image.fromarray(probabilities.astype(np.float32), mode="F").resize(
        size, Image.Resampling.BILINEAR
    )
    return np.clip(np.asarray(resized, dtype=np.float32), 0.0, 1.0)


def declared_input_size(input_shape: list, metadata: dict[str, str]) -> int:
    """The square size an ONNX file's network runs at: its metadata, else a fixed height, else 320.

    Our exports are dynamic and keep the size they were trained at in their metadata; a file exported with
    fixed dimensions (rembg's official u2netp.onnx: 1×3×320×320) says it in its input's shape.
    """
    height = input_shape[2] if len(input_shape) == 4 else None
    return int(metadata.get(INPUT_SIZE_KEY, height if isinstance(height, int) else INPUT_SIZE))


class TorchPredictor:
    """A U²-Net in PyTorch, on the CPU with channels_last (faster convolutions) or on CUDA."""

    def __init__(
        self,
        model: torch.nn.Module,
        device: str = "cpu",
        threads: int | None = None,
        input_size: int = INPUT_SIZE,
    ):
        import torch  # here, not at the top: ONNX-only serving never loads PyTorch

        if device == "cpu":
            torch.set_num_threads(threads or available_cores())
        self.device = torch.device(device)
        self.model = model.eval().to(self.device, memory_format=torch.channels_last)
        self.description = f"torch ({device})"
        self.input_size = input_size

    def predict(self, batch: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            inputs = torch.from_numpy(np.ascontiguousarray(batch)).to(
                self.device, memory_format=torch.channels_last
            )
            fused = self.model(inputs)[0]
            return torch.sigmoid(fused)[:, 0].float().cpu().numpy()


class OnnxPredictor:
    """An exported model in ONNX Runtime; its first output is the fused probability map."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or available_cores()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle intra-op threads sleep instead of spinning. Spinning threads burn the cores that decoding,
        # PNG encoding and the other requests' threads need, so a busy server would serve fewer photos.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.output_name = self.session.get_outputs()[0].name
        self.description = f"onnxruntime ({Path(path).name})"
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.input_size = declared_input_size(model_input.shape, metadata)
        batch = model_input.shape[0]
        self.fixed_batch = batch if isinstance(batch, int) else None

    def predict(self, batch: np.ndarray) -> np.ndarray:
        if self.fixed_batch is None or len(batch) == self.fixed_batch:
            return self._run(batch)
        # A fixed-batch file runs its photos in groups of exactly its batch (photo by photo for batch 1)
        # instead of failing on a batch of another size.
        groups = [batch[start : start + self.fixed_batch] for start in range(0, len(batch), self.fixed_batch)]
        if len(groups[-1]) < self.fixed_batch:  # pad the last group; the padding's maps are dropped
            padding = np.repeat(groups[-1][-1:], self.fixed_batch - len(groups[-1]), axis=0)
            groups[-1] = np.concatenate([groups[-1], padding])
        return np.concatenate([self._run(group) for group in groups])[: len(batch)]

    def _run(self, batch: np.ndarray) -> np.ndarray:
        (fused,) = self.session.run([self.output_name], {self.input_name: np.ascontiguousarray(batch)})
        return fused[:, 0]


def predict_probabilities(
    predictor: MaskPredictor, images: list[Image.Image], minmax: bool = True
) -> list[np.ndarray]:
    """Fused-map probabilities at each photo's own resolution, for a batch of RGB photos.

    Args:
        predictor: the back end (its `input_size` sets the network's input size).
        images: RGB photos of any sizes.
        minmax: stretch each map to [0, 1] like the original (right for official weights; a model trained
            here is calibrated already, and stretching would amplify noise on an empty image).
    """
    batch = np.stack([preprocess(image, predictor.input_size) for image in images])
    maps = predictor.predict(batch)
    if minmax:
        maps = [minmax_normalise(m) for m in maps]
    return [upscale_probabilities(m, image.size) for m, image in zip(maps, images, strict=True)]
