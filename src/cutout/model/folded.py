"""U²-Net weights from an ONNX export whose batch norms are folded into the convolutions.

rembg's official U²-NetP (`u2netp.onnx`, PyTorch 1.9, opset 11) has 119 `Conv` nodes and no
`BatchNormalization`: each convolution already carries its batch norm's scale and shift. Most of its
initializers are numbered, not named, so the weights are matched by position: the ONNX `Conv` nodes in
graph order are our `Conv2d` modules in the order the forward pass calls them (recorded with hooks), and
every pair is checked on shape and dilation, so a different network fails loudly instead of loading
shuffled weights.

Why batch norm as identity instead of a second, BN-free model class: our U²-Net keeps one architecture,
so checkpoints, export, serving and training stay one code path, and the published module names stay
(official `.pth` files still load). In eval mode an identity batch norm (weight 1, bias 0, mean 0,
variance 1 − eps) passes values through exactly. What training does with those batch norms (keep them
frozen, or re-estimate their statistics so that they normalise again) is training's choice
(`cutout.train.batchnorm`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from cutout.model.inference import declared_input_size
from cutout.model.u2net import U2Net, u2net, u2netp

FOLDED_VARIANTS = {"u2netp": u2netp, "u2net": u2net}
_PROBE_SIZE = 64  # a forward pass this small is enough to record the order of the convolutions


class FoldedWeightsError(ValueError):
    """An ONNX file whose convolutions do not map onto U²-Net's or U²-NetP's."""


def onnx_input_size(path: str | Path) -> int:
    """The square input size an ONNX file declares (see `inference.declared_input_size`)."""
    exported = onnx.load(str(path), load_external_data=False)
    dims = exported.graph.input[0].type.tensor_type.shape.dim
    shape = [dim.dim_value if dim.HasField("dim_value") else dim.dim_param for dim in dims]
    return declared_input_size(shape, {prop.key: prop.value for prop in exported.metadata_props})


def onnx_convolutions(path: str | Path) -> list[tuple[np.ndarray, np.ndarray | None, tuple[int, ...]]]:
    """(weight, bias, dilations) of every `Conv` node, in graph order."""
    graph = onnx.load(str(path)).graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    for node in graph.node:  # older exporters keep some weights in Constant nodes instead
        if node.op_type == "Constant":
            constants[node.output[0]] = node.attribute[0].t
    convolutions = []
    for node in graph.node:
        if node.op_type != "Conv":
            continue
        missing = [name for name in node.input[1:] if name not in constants]
        if missing:
            raise FoldedWeightsError(f"{path}: Conv {node.name!r} reads {missing[0]!r}, which is not a "
                                     "constant (a quantised or otherwise transformed file?)")  # fmt: skip
        weight, *bias = (numpy_helper.to_array(constants[name]) for name in node.input[1:])
        dilations = next((tuple(a.ints) for a in node.attribute if a.name == "dilations"), (1, 1))
        convolutions.append((weight, bias[0] if bias else None, dilations))
    return convolutions


def convolutions_in_call_order(model: U2Net) -> list[nn.Conv2d]:
    """The model's `Conv2d` modules in the order its forward pass runs them."""
    order: list[nn.Conv2d] = []
    hooks = [
        module.register_forward_hook(lambda module, *_: order.append(module))
        for module in model.modules()
        if isinstance(module, nn.Conv2d)
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def _matches(modules: list[nn.Conv2d], convolutions: list) -> bool:
    return len(modules) == len(convolutions) and all(
        tuple(module.weight.shape) == weight.shape and tuple(module.dilation) == dilations
        for module, (weight, _, dilations) in zip(modules, convolutions, strict=True)
    )


def set_batch_norms_to_identity(model: nn.Module) -> None:
    """Every batch norm passes its input through unchanged in eval mode (the folded network's behaviour)."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
            module.running_mean.zero_()
            module.running_var.fill_(1.0 - module.eps)  # so that sqrt(var + eps) is exactly 1


def load_folded_onnx(path: str | Path) -> tuple[U2Net, str]:
    """Our U²-Net or U²-NetP with the weights of a BN-folded ONNX export, batch norms as identity.

    Returns:
        The model in eval mode, and its variant name.

    Raises:
        FoldedWeightsError: the file's convolutions match neither variant.
    """
    convolutions = onnx_convolutions(path)
    for variant, build in FOLDED_VARIANTS.items():
        model = build()
        modules = convolutions_in_call_order(model)
        if not _matches(modules, convolutions):
            continue
        with torch.no_grad():
            for module, (weight, bias, _) in zip(modules, convolutions, strict=True):
                module.weight.copy_(torch.from_numpy(weight.copy()))
                if bias is not None:
                    module.bias.copy_(torch.from_numpy(bias.copy()))
                else:
                    module.bias.zero_()
        set_batch_norms_to_identity(model)
        return model.eval(), variant
    raise FoldedWeightsError(
        f"{path}: its {len(convolutions)} convolutions match neither U²-NetP nor U²-Net "
        f"(in forward order, by shape and dilation)"
    )
