"""SpeedNet: a small residual net for short-time-budget training on small images.

The layout follows the fast CIFAR-10 speedrun nets (the ResNet-9 of the DAWNBench entries and
its descendants): a conv stem, then per stage a conv that widens with a 2x2 max pool, BN and
ReLU, optionally followed by one residual pair of conv-BN-ReLU layers; global max pooling and
one linear classifier. On a CPU a training step costs about the same per FLOP whatever the
width, so the net is sized by FLOPs: pooling *before* each widening conv (the default) makes
that conv 4x cheaper, and the one residual pair sits at the middle resolution. The default
(24/48/96/192) costs 30 MFLOPs per 28x28 image, half of pre-activation ResNet-20's 62.
cnnlab uses it for the Fashion-MNIST speedrun (recipes/fashion_mnist/speedrun.yaml); it is not
from a seed paper.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.models.layers import check_norm, conv3x3, init_weights, norm2d
from cnnlab.registry import register_variant


def _conv_norm_relu(in_ch: int, out_ch: int, norm: str, pool: str = "none") -> nn.Sequential:
    # pool: "none", "before" the conv (4x cheaper) or "after" it (before the norm, which then
    # sees the pooled statistics it feeds on).
    layers: list[nn.Module] = [conv3x3(in_ch, out_ch)]
    if pool == "before":
        layers.insert(0, nn.MaxPool2d(2, ceil_mode=True))
    elif pool == "after":
        layers.append(nn.MaxPool2d(2, ceil_mode=True))
    return nn.Sequential(*layers, norm2d(norm, out_ch), nn.ReLU(inplace=True))


class ResidualPair(nn.Module):
    """x + f(x), f = two conv-norm-ReLU layers of the same width."""

    def __init__(self, width: int, norm: str) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv_norm_relu(width, width, norm), _conv_norm_relu(width, width, norm)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return x plus the residual branch."""
        return x + self.body(x)


class SpeedNet(nn.Module):
    """Stem conv at full resolution, then per stage conv -> pool -> norm -> ReLU (+ residual)."""

    def __init__(
        self,
        widths: Sequence[int] = (24, 48, 96, 192),
        residual: Sequence[bool] = (False, True, False),
        in_channels: int = 3,
        num_classes: int = 10,
        norm: str = "bn",
        pool: str = "before",
    ) -> None:
        super().__init__()
        check_norm(norm)
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise ValueError(f"widths needs a stem width and at least one stage, got {widths}")
        if len(residual) != len(widths) - 1:
            raise ValueError(
                f"residual needs one flag per stage ({len(widths) - 1}), got {len(residual)}"
            )
        if pool not in ("before", "after"):
            raise ValueError(f"pool must be 'before' or 'after' the widening conv, got '{pool}'")
        layers: list[nn.Module] = [_conv_norm_relu(in_channels, widths[0], norm)]
        for in_ch, out_ch, res in zip(widths[:-1], widths[1:], residual, strict=True):
            layers.append(_conv_norm_relu(in_ch, out_ch, norm, pool=pool))
            if res:
                layers.append(ResidualPair(out_ch, norm))
        self.features = nn.Sequential(*layers)
        self.pool = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.fc = nn.Linear(widths[-1], num_classes, bias=False)
        init_weights(self, "fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.fc(self.pool(self.features(x)))


register_variant(
    "speednet",
    SpeedNet,
    "small residual net for short runs: stem 24, stages 48/96/192, one residual pair at 96",
)
