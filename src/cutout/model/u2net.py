"""U²-Net and U²-NetP (Qin et al., 2020), with the published module and parameter names.

The names are those of `model/u2net.py` in the original repository, so the official `u2net.pth` and
`u2netp.pth` load with `strict=True`. Unlike the original, `forward` returns logits: training uses
BCE-with-logits (numerically safer than BCE on sigmoids), and inference applies the sigmoid itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


class REBNCONV(nn.Module):
    """3×3 convolution, batch norm, ReLU; `dirate` is both the padding and the dilation."""

    def __init__(self, in_ch: int, out_ch: int, dirate: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


def upsample_like(src: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Bilinear resize of `src` to the spatial size of `target` (the original's `_upsample_like`)."""
    return F.interpolate(src, size=target.shape[2:], mode="bilinear", align_corners=False)


def _pool() -> nn.MaxPool2d:
    # ceil_mode keeps odd sizes from losing a row: decoder tensors are resized back to the skip's size.
    return nn.MaxPool2d(2, stride=2, ceil_mode=True)


class RSU(nn.Module):
    """Residual U-block of height L (RSU7, RSU6, RSU5, RSU4 in the paper).

    Encoder: `rebnconvin`, then `rebnconv1…L-1` with `pool1…L-2` between them, then `rebnconvL` with
    dilation 2 instead of a pool. Decoder: `rebnconv(L-1)d…1d`, each on (deeper, skip) concatenated.
    The attribute names are built from L so that they match the original's RSU7…RSU4 classes.
    """

    def __init__(self, height: int, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.height = height
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        for i in range(2, height):
            setattr(self, f"pool{i - 1}", _pool())
            setattr(self, f"rebnconv{i}", REBNCONV(mid_ch, mid_ch))
        setattr(self, f"rebnconv{height}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for i in range(height - 1, 1, -1):
            setattr(self, f"rebnconv{i}d", REBNCONV(mid_ch * 2, mid_ch))
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        skips = [self.rebnconv1(hxin)]
        for i in range(2, self.height):
            pooled = getattr(self, f"pool{i - 1}")(skips[-1])
            skips.append(getattr(self, f"rebnconv{i}")(pooled))
        hx = getattr(self, f"rebnconv{self.height}")(skips[-1])
        for i in range(self.height - 1, 0, -1):
            hx = getattr(self, f"rebnconv{i}d")(torch.cat((hx, skips[i - 1]), 1))
            if i > 1:
                hx = upsample_like(hx, skips[i - 2])
        return hx + hxin


class RSU4F(nn.Module):
    """RSU4 without pooling: dilations 1, 2, 4, 8 then 4, 2, 1 keep the (already small) resolution."""

    def __init__(self, in_ch: int, mid_ch: int, out_ch: int):
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(mid_ch * 2, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(mid_ch * 2, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(mid_ch * 2, out_ch, dirate=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hxin = self.rebnconvin(x)
        hx1 = self.rebnconv1(hxin)
        hx2 = self.rebnconv2(hx1)
        hx3 = self.rebnconv3(hx2)
        hx4 = self.rebnconv4(hx3)
        hx3d = self.rebnconv3d(torch.cat((hx4, hx3), 1))
        hx2d = self.rebnconv2d(torch.cat((hx3d, hx2), 1))
        return self.rebnconv1d(torch.cat((hx2d, hx1), 1)) + hxin


# A stage is (height, in_ch, mid_ch, out_ch); height 0 means RSU4F.
Stage = tuple[int, int, int, int]


@dataclass(frozen=True)
class U2NetConfig:
    """The stage table: six encoder stages, five decoder stages (5d…1d), six side heads (1…6)."""

    encoder: tuple[Stage, ...]
    decoder: tuple[Stage, ...]  # stage5d, stage4d, stage3d, stage2d, stage1d
    side_in: tuple[int, ...]  # side1…side6 input channels


U2NET_CONFIG = U2NetConfig(
    encoder=((7, 3, 32, 64), (6, 64, 32, 128), (5, 128, 64, 256), (4, 256, 128, 512), (0, 512, 256, 512),
             (0, 512, 256, 512)),
    decoder=((0, 1024, 256, 512), (4, 1024, 128, 256), (5, 512, 64, 128), (6, 256, 32, 64), (7, 128, 16, 64)),
    side_in=(64, 64, 128, 256, 512, 512),
)  # fmt: skip
U2NETP_CONFIG = U2NetConfig(
    encoder=((7, 3, 16, 64), (6, 64, 16, 64), (5, 64, 16, 64), (4, 64, 16, 64), (0, 64, 16, 64),
             (0, 64, 16, 64)),
    decoder=((0, 128, 16, 64), (4, 128, 16, 64), (5, 128, 16, 64), (6, 128, 16, 64), (7, 128, 16, 64)),
    side_in=(64,) * 6,
)  # fmt: skip


def _block(stage: Stage) -> nn.Module:
    height, in_ch, mid_ch, out_ch = stage
    return RSU4F(in_ch, mid_ch, out_ch) if height == 0 else RSU(height, in_ch, mid_ch, out_ch)


class U2Net(nn.Module):
    """U²-Net: a U-Net of residual U-blocks with deep supervision from six side outputs.

    `forward` returns seven logit maps at the input's size: the fused map first, then side1…side6.
    """

    def __init__(self, config: U2NetConfig = U2NET_CONFIG, out_ch: int = 1):
        super().__init__()
        self.config = config
        for i, stage in enumerate(config.encoder, start=1):
            setattr(self, f"stage{i}", _block(stage))
            if i < len(config.encoder):
                setattr(self, f"pool{i}{i + 1}", _pool())
        for i, stage in zip(range(5, 0, -1), config.decoder, strict=True):
            setattr(self, f"stage{i}d", _block(stage))
        for i, in_ch in enumerate(config.side_in, start=1):
            setattr(self, f"side{i}", nn.Conv2d(in_ch, out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoded = [self.stage1(x)]
        for i in range(2, 7):
            pooled = getattr(self, f"pool{i - 1}{i}")(encoded[-1])
            encoded.append(getattr(self, f"stage{i}")(pooled))
        decoded = [encoded[5]]  # the deepest stage feeds side6 and the first decoder stage
        for i in range(5, 0, -1):
            deeper = upsample_like(decoded[-1], encoded[i - 1])
            decoded.append(getattr(self, f"stage{i}d")(torch.cat((deeper, encoded[i - 1]), 1)))
        # decoded = [hx6, hx5d, hx4d, hx3d, hx2d, hx1d]; side k reads decoded[6 - k]
        sides = [getattr(self, f"side{k}")(decoded[6 - k]) for k in range(1, 7)]
        sides = [sides[0]] + [upsample_like(side, sides[0]) for side in sides[1:]]
        fused = self.outconv(torch.cat(sides, 1))
        return (fused, *sides)


def u2net() -> U2Net:
    """The full U²-Net (44,009,869 parameters)."""
    return U2Net(U2NET_CONFIG)


def u2netp() -> U2Net:
    """The small U²-NetP (1,131,181 parameters)."""
    return U2Net(U2NETP_CONFIG)
