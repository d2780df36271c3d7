"""Building blocks of ReCU's binary ResNets, shared by its CIFAR and ImageNet families.

Shortcuts that downsample are parameter-free: 2x2 average pooling (ceil_mode, identical at
even sizes), then zero channels added on both sides.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.binary import BinaryConv2d


class PoolPadShortcut(nn.Module):
    """Parameter-free shortcut: 2x2 average pool when striding, zero channels on both sides."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch or (out_ch - in_ch) % 2:
            raise ValueError(f"pool-pad shortcut cannot map {in_ch} to {out_ch} channels")
        self.stride = stride
        self.side = (out_ch - in_ch) // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Average-pool (when striding) and zero-pad the channels."""
        if self.stride > 1:
            x = F.avg_pool2d(x, self.stride, ceil_mode=True)
        return F.pad(x, (0, 0, 0, 0, self.side, self.side)) if self.side else x


def binary_shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Return the identity where shapes match, else the pool-pad shortcut."""
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    return PoolPadShortcut(in_ch, out_ch, stride)


class BinaryBlock(nn.Module):
    """The layers both ReCU ResNet blocks share; the subclasses wire them differently."""

    def __init__(self, in_ch: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = BinaryConv2d(in_ch, planes, stride=stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.Hardtanh()
        self.conv2 = BinaryConv2d(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.Hardtanh()
        self.shortcut = binary_shortcut(in_ch, planes, stride)


class DoubleShortcutBlock(BinaryBlock):
    """ReCU ResNet-20 block (Bi-Real style, a shortcut around each binary conv):
    h = HT(BN(bconv1(x)) + sc(x)); out = HT(BN(bconv2(h)) + h)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two binary convs, each with its own shortcut."""
        h = self.act1(self.bn1(self.conv1(x)) + self.shortcut(x))
        return self.act2(self.bn2(self.conv2(h)) + h)
