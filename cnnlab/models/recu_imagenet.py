"""ReCU's ImageNet binary ResNets: the one-stage ResNet-18/34 1W1A and the two-stage
(ReActNet-like) ResNet-18/34.

One-stage, as z-hXu/ReCU@9a73bed imagenet/models_imagenet/resnet.py builds them: a full-precision
7x7 stride-2 stem conv, BN, Hardtanh and 3x3 max pool; basic blocks with a shortcut around each
binary 3x3 conv (h = HT(BN(bconv1(x)) + sc(x)), out = HT(BN(bconv2(h)) + h)), where a block that
changes shape projects its shortcut with a full-precision 1x1 strided conv and BN; then a
global average pool, BatchNorm1d and a full-precision linear classifier. Init (lines 86-91):
Kaiming normal (fan-in) on every conv, BatchNorm2d scales 1e-8 and shifts 0; BatchNorm1d, the
classifier and the binary scales alpha keep PyTorch's defaults.

Two-stage (imagenet_two-stage/models_imagenet/resnet.py): one binary 3x3 conv per block, 4/4/4/4
blocks for "resnet18" (6/8/12/6 for "resnet34"), each block
out = move2(PReLU(move1(BN(bconv(move0(x))) + sc(x)))) with learnable per-channel shifts
`move*`; a shape-changing shortcut is a 2x2 average pool, a full-precision 1x1 conv and BN.
Stem conv-BN (no activation) and max pool; average pool and linear classifier, all with
PyTorch's default init (the file sets none).

Every pool adapts, so the nets also run on small images; at 224x224 the 7x7 average pool
of the source is the same operation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.models.binary import BinaryConv2d
from cnnlab.models.binary_blocks import DoubleShortcutBlock
from cnnlab.registry import register_variant


def _projection(in_ch: int, out_ch: int, stride: int, pool: bool) -> nn.Module:
    """The full-precision shortcut of a shape-changing block (identity otherwise)."""
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    if pool:  # two-stage: average pool, then a stride-1 1x1 conv
        return nn.Sequential(
            nn.AvgPool2d(stride, stride=stride),
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.BatchNorm2d(out_ch),
        )
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False),
                         nn.BatchNorm2d(out_ch))  # fmt: skip


class _ProjectedBlock(DoubleShortcutBlock):
    """ReCU's ImageNet basic block: the CIFAR ResNet-20 wiring with a 1x1-conv projection."""

    def __init__(self, in_ch: int, planes: int, stride: int) -> None:
        super().__init__(in_ch, planes, stride)
        self.shortcut = _projection(in_ch, planes, stride, pool=False)


def _stem(in_channels: int, width: int, activation: bool) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(width),
    ]
    if activation:
        layers.append(nn.Hardtanh())
    return nn.Sequential(*layers, nn.MaxPool2d(3, stride=2, padding=1))


def _stages(block: type[nn.Module], blocks: Sequence[int], width: int) -> nn.Sequential:
    """Four stages of blocks[s] blocks, width * 2^s channels, stride 2 entering stages 2-4."""
    if len(blocks) != 4 or min(blocks) < 1:
        raise ValueError(f"blocks must be 4 positive counts, got {list(blocks)}")
    if width < 1:
        raise ValueError(f"base_width must be positive, got {width}")
    layers: list[nn.Module] = []
    ch = width
    for stage, count in enumerate(blocks):
        for i in range(count):
            layers.append(block(ch, width * 2**stage, 2 if stage and not i else 1))
            ch = width * 2**stage
    return nn.Sequential(*layers)


class ReCUImageNetResNet(nn.Module):
    """ReCU's one-stage ImageNet ResNet 1W1A (imagenet/models_imagenet/resnet.py)."""

    image_size = 224  # the input side it is designed for (`cnnlab models`)
    binary = True

    def __init__(
        self,
        blocks: Sequence[int] = (2, 2, 2, 2),
        in_channels: int = 3,
        num_classes: int = 1000,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        out = base_width * 8
        self.stem = _stem(in_channels, base_width, activation=True)
        self.stages = _stages(_ProjectedBlock, blocks, base_width)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(out))
        self.fc = nn.Linear(out, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1e-8)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.fc(self.head(self.stages(self.stem(x))))


class LearnableShift(nn.Module):
    """Adds a learned per-channel constant (ReActNet's "move"), initialised to zero."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x shifted channel by channel."""
        return x + self.bias


class _ShiftedBlock(nn.Module):
    """Two-stage block: move0, binary conv, BN, + shortcut, move1, PReLU, move2."""

    def __init__(self, in_ch: int, planes: int, stride: int) -> None:
        super().__init__()
        self.move0 = LearnableShift(in_ch)
        self.conv = BinaryConv2d(in_ch, planes, stride=stride)
        self.bn = nn.BatchNorm2d(planes)
        self.move1 = LearnableShift(planes)
        self.act = nn.PReLU(planes)
        self.move2 = LearnableShift(planes)
        self.shortcut = _projection(in_ch, planes, stride, pool=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """One binary conv with its shortcut, then shift, PReLU, shift."""
        out = self.bn(self.conv(self.move0(x))) + self.shortcut(x)
        return self.move2(self.act(self.move1(out)))


class ReCUTwoStageResNet(nn.Module):
    """ReCU's two-stage (ReActNet-like) ImageNet ResNet (imagenet_two-stage/models_imagenet)."""

    image_size = 224  # the input side it is designed for (`cnnlab models`)
    binary = True

    def __init__(
        self,
        blocks: Sequence[int] = (4, 4, 4, 4),
        in_channels: int = 3,
        num_classes: int = 1000,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        self.stem = _stem(in_channels, base_width, activation=False)
        self.stages = _stages(_ShiftedBlock, blocks, base_width)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(base_width * 8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.fc(self.head(self.stages(self.stem(x))))


register_variant(
    "resnet18_1w1a_imagenet",
    ReCUImageNetResNet,
    "ReCU ImageNet ResNet-18, 1-bit weights and activations",
    blocks=(2, 2, 2, 2),
)
register_variant(
    "resnet34_1w1a_imagenet",
    ReCUImageNetResNet,
    "ReCU ImageNet ResNet-34, 1-bit weights and activations",
    blocks=(3, 4, 6, 3),
)
register_variant(
    "resnet18_1w1a_two_stage",
    ReCUTwoStageResNet,
    "ReCU two-stage (ReActNet-like) ImageNet ResNet-18, 1 binary conv per block",
    blocks=(4, 4, 4, 4),
)
register_variant(
    "resnet34_1w1a_two_stage",
    ReCUTwoStageResNet,
    "ReCU two-stage (ReActNet-like) ImageNet ResNet-34, 1 binary conv per block",
    blocks=(6, 8, 12, 6),
)
