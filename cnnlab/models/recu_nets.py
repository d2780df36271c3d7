"""ReCU's CIFAR binary networks (Xu et al. 2021): resnet20_1w1a, resnet18_1w1a, vgg_small_1w1a.

Every conv but the stem is a `BinaryConv2d`; stem, BatchNorms and classifier stay full
precision. Activations are Hardtanh. Shortcuts that downsample are parameter-free: 2x2 average
pooling, then zero channels added on both sides.

cnnlab departures, so that 28x28 inputs (Fashion-MNIST) work as well as 32x32: pools use
ceil_mode (identical at even sizes), the ResNet heads pool adaptively (= avg_pool(4) on the
4x4 map of a 32x32 input), and VGG-small's three max pools use ceil_mode, so both sizes end at
the 4x4 map its 512*4*4 classifier expects.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.models.binary import BinaryConv2d
from cnnlab.models.binary_blocks import BinaryBlock, DoubleShortcutBlock
from cnnlab.models.layers import stage_blocks
from cnnlab.registry import register_variant


def _kaiming(model: nn.Module) -> None:
    # ReCU cifar/models_cifar/resnet.py and resnet2.py, `_weights_init`: Kaiming normal on
    # nn.Conv2d only (binary convs subclass it); the nn.Linear classifier keeps PyTorch's
    # default init. Convs carry no bias there.
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)


def _stages(
    block: type[nn.Module], base_width: int, counts: Sequence[int]
) -> tuple[nn.Sequential, int]:
    """Stack counts[s] blocks per stage (widths double, later stages stride first); return width."""
    layers: list[nn.Module] = []
    ch = base_width
    for stage, count in enumerate(counts):
        planes = base_width * 2**stage
        for i in range(count):
            layers.append(block(ch, planes, 2 if stage and not i else 1))
            ch = planes
    return nn.Sequential(*layers), ch


def _head(channels: int) -> nn.Sequential:
    """ReCU's ResNet head before the classifier: global average pool, flatten, BatchNorm1d."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.BatchNorm1d(channels))


class ReCUResNet20(nn.Module):
    """ReCU's CIFAR ResNet-20 1W1A: FP stem conv-BN-HT, 3 stages, pool, BatchNorm1d, FP linear."""

    binary = True

    def __init__(
        self,
        depth: int = 20,
        in_channels: int = 3,
        num_classes: int = 10,
        base_width: int = 16,
    ) -> None:
        super().__init__()
        n = stage_blocks(depth, 2, "ReCU ResNet")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(base_width),
            nn.Hardtanh(),
        )
        self.stages, ch = _stages(DoubleShortcutBlock, base_width, (n, n, n))
        self.head = _head(ch)
        self.fc = nn.Linear(ch, num_classes)
        _kaiming(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.fc(self.head(self.stages(self.stem(x))))


class _SingleShortcutBlock(BinaryBlock):
    """ReCU ResNet-18 block: HT(BN(bconv2(HT(BN(bconv1(x))))) + sc(x))."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Two binary convs, one shortcut around both."""
        h = self.act1(self.bn1(self.conv1(x)))
        return self.act2(self.bn2(self.conv2(h)) + self.shortcut(x))


class ReCUResNet18(nn.Module):
    """ReCU's CIFAR ResNet-18 1W1A: FP stem conv-BN (no activation), 4 stages, pool, BN1d, FP fc."""

    binary = True

    def __init__(
        self,
        blocks: Sequence[int] = (2, 2, 2, 2),
        in_channels: int = 3,
        num_classes: int = 10,
        base_width: int = 64,
    ) -> None:
        super().__init__()
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"blocks must be 4 positive counts, got {list(blocks)}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base_width, 3, padding=1, bias=False),
            nn.BatchNorm2d(base_width),
        )
        self.stages, ch = _stages(_SingleShortcutBlock, base_width, blocks)
        self.head = _head(ch)
        self.fc = nn.Linear(ch, num_classes)
        _kaiming(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.fc(self.head(self.stages(self.stem(x))))


class ReCUVGGSmall(nn.Module):
    """ReCU's VGG-small 1W1A: FP conv0, five binary convs (pool before BN), FP classifier."""

    binary = True

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: int = 128) -> None:
        super().__init__()
        w = width
        self.conv0 = nn.Conv2d(in_channels, w, 3, padding=1, bias=False)
        layers: list[nn.Module] = [nn.BatchNorm2d(w), nn.Hardtanh()]
        # (in, out, pool after the conv): 128-128 P, 128-256, 256-256 P, 256-512, 512-512 P.
        plan = ((w, w, True), (w, 2 * w, False), (2 * w, 2 * w, True))
        plan += ((2 * w, 4 * w, False), (4 * w, 4 * w, True))
        for cin, cout, pool in plan:
            layers.append(BinaryConv2d(cin, cout))
            if pool:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            layers += [nn.BatchNorm2d(cout), nn.Hardtanh()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(4 * w * 4 * 4, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")  # N(0, 2/(k^2 * out))
        nn.init.normal_(self.fc.weight, std=0.01)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.fc(torch.flatten(self.features(self.conv0(x)), 1))


register_variant(
    "resnet20_1w1a", ReCUResNet20, "ReCU CIFAR ResNet-20, 1-bit weights and activations", depth=20
)
register_variant(
    "resnet18_1w1a",
    ReCUResNet18,
    "ReCU CIFAR ResNet-18, 1-bit weights and activations",
    blocks=(2, 2, 2, 2),
)
register_variant("vgg_small_1w1a", ReCUVGGSmall, "ReCU VGG-small, 1-bit weights and activations")
