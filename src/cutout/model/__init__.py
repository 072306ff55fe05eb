"""U²-Net models: building them, loading weights, running them and exporting them."""

from cutout.model.u2net import U2Net
from cutout.model.weights import MODEL_VARIANTS, build_model, load_model, load_weights, save_checkpoint

__all__ = ["MODEL_VARIANTS", "U2Net", "build_model", "load_model", "load_weights", "save_checkpoint"]
