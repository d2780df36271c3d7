"""Shake-Shake-26 2xKd (Gastaldi 2017) for CIFAR: a conv-norm stem of 16 channels, three stages
of K/2K/4K, a ReLU-pool-FC head. `stem_width` K with `stem_relu` and `head_relu` off build the
variant of hysts/pytorch_image_classification@da2bdcf models/shake_shake.py instead.

Two residual branches per block are mixed by a random convex weight: alpha in the forward
pass and an independent beta in the backward pass (`ShakeShakeMix`). `shake_forward`,
`shake_backward` and `shake_level` give the paper's S-S-I, S-E-I, S-S-B, E-E-B ... settings.
At evaluation both weights are 0.5, the expected value of the training mix.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.layers import check_norm, conv1x1, conv3x3, init_weights, norm2d
from cnnlab.registry import register_variant

FORWARD_MODES = ("shake", "even")
BACKWARD_MODES = ("shake", "even", "keep")
LEVELS = ("image", "batch")


class ShakeShakeMix(torch.autograd.Function):
    """y = alpha*x1 + (1-alpha)*x2 forward; gradients beta*g and (1-beta)*g backward."""

    @staticmethod
    def forward(
        ctx: Any, x1: torch.Tensor, x2: torch.Tensor, alpha: torch.Tensor, beta: torch.Tensor
    ) -> torch.Tensor:
        """Mix the branches with alpha (broadcast per image or per batch)."""
        ctx.save_for_backward(beta)
        return alpha * x1 + (1 - alpha) * x2

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        """Send beta*grad to branch 1 and (1-beta)*grad to branch 2; alpha, beta get none."""
        (beta,) = ctx.saved_tensors
        return beta * grad, (1 - beta) * grad, None, None


def shake_coefficients(
    x: torch.Tensor, forward: str, backward: str, level: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw (alpha, beta) for one block from torch's global RNG, so a seed fixes a run.

    'image' gives one coefficient per image (shape N,1,1,1), 'batch' one for the whole batch.
    Beta is drawn now rather than in backward so the RNG stream does not depend on when
    autograd runs; float32 draws keep it independent of mixed precision too.
    """
    shape = (x.size(0), 1, 1, 1) if level == "image" else (1, 1, 1, 1)

    def draw(mode: str) -> torch.Tensor:
        if mode == "shake":
            return torch.rand(shape, device=x.device)
        return torch.full(shape, 0.5, device=x.device)

    alpha = draw(forward)
    beta = alpha if backward == "keep" else draw(backward)
    return alpha, beta


def _branch(in_ch: int, out_ch: int, stride: int, norm: str) -> nn.Sequential:
    # The leading ReLU must not be in-place: its input also feeds the other branch and the
    # shortcut.
    return nn.Sequential(
        nn.ReLU(inplace=False),
        conv3x3(in_ch, out_ch, stride),
        norm2d(norm, out_ch),
        nn.ReLU(inplace=True),
        conv3x3(out_ch, out_ch),
        norm2d(norm, out_ch),
    )


class ShiftedShortcut(nn.Module):
    """ReLU, then two 1x1 convs of out/2 on the strided input and on it shifted by one pixel.

    The shifted path sees the pixels the strided one skips, so together they cover the input.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, norm: str) -> None:
        super().__init__()
        if out_ch % 2:
            raise ValueError(f"shake-shake widths must be even, got {out_ch}")
        self.stride = stride
        self.conv1 = conv1x1(in_ch, out_ch // 2)
        self.conv2 = conv1x1(in_ch, out_ch // 2)
        self.norm = norm2d(norm, out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return norm(concat(conv1(x[::s]), conv2(shift(x)[::s])))."""
        x = F.relu(x)
        s = self.stride
        shifted = F.pad(x[:, :, 1:, 1:], (0, 1, 0, 1))
        y1 = self.conv1(x[:, :, ::s, ::s])
        y2 = self.conv2(shifted[:, :, ::s, ::s])
        return self.norm(torch.cat([y1, y2], dim=1))


class ShakeBlock(nn.Module):
    """Two residual branches mixed by shake-shake, plus an identity or shifted shortcut."""

    def __init__(
        self, in_ch: int, out_ch: int, stride: int, norm: str, shake: tuple[str, str, str]
    ) -> None:
        super().__init__()
        self.branch1 = _branch(in_ch, out_ch, stride, norm)
        self.branch2 = _branch(in_ch, out_ch, stride, norm)
        same = in_ch == out_ch and stride == 1
        self.shortcut = nn.Identity() if same else ShiftedShortcut(in_ch, out_ch, stride, norm)
        self.shake = shake

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return shortcut(x) + mix(branch1(x), branch2(x))."""
        x1, x2 = self.branch1(x), self.branch2(x)
        if self.training:
            alpha, beta = shake_coefficients(x, *self.shake)
            mixed = ShakeShakeMix.apply(x1, x2, alpha.to(x1.dtype), beta.to(x1.dtype))
        else:
            mixed = 0.5 * (x1 + x2)
        return self.shortcut(x) + mixed


class ShakeShakeNet(nn.Module):
    """Shake-Shake ResNet: stem conv-norm (no ReLU), 3 stages of K/2K/4K, ReLU-pool-FC head."""

    def __init__(
        self,
        depth: int = 26,
        base_width: int = 32,
        stem_width: int = 16,
        in_channels: int = 3,
        num_classes: int = 10,
        norm: str = "bn",
        shake_forward: str = "shake",
        shake_backward: str = "shake",
        shake_level: str = "image",
        stem_relu: bool = False,
        head_relu: bool = True,
        classifier_init: str = "kaiming",
    ) -> None:
        super().__init__()
        check_norm(norm)
        for name, value, allowed in (
            ("shake_forward", shake_forward, FORWARD_MODES),
            ("shake_backward", shake_backward, BACKWARD_MODES),
            ("shake_level", shake_level, LEVELS),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got '{value}'")
        n, rem = divmod(depth - 2, 6)
        if rem or n < 1:
            raise ValueError(f"shake-shake depth must be 6n+2 (e.g. 26), got {depth}")
        shake = (shake_forward, shake_backward, shake_level)

        # Gastaldi's stem is conv-norm and his head ReLU-pool; hysts' code ReLUs the stem
        # (stem_relu) and pools the last block's sum as it is (head_relu off).
        stem = [conv3x3(in_channels, stem_width), norm2d(norm, stem_width)]
        self.stem = nn.Sequential(*stem, *([nn.ReLU(inplace=True)] if stem_relu else []))
        blocks: list[nn.Module] = []
        in_ch = stem_width
        for stage in range(3):
            out_ch = base_width * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(ShakeBlock(in_ch, out_ch, stride, norm, shake))
                in_ch = out_ch
        self.stages = nn.Sequential(*blocks)
        head_act = [nn.ReLU(inplace=True)] if head_relu else []
        self.head = nn.Sequential(*head_act, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self, "fan_out", classifier_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.fc(self.head(self.stages(self.stem(x))))


# Gastaldi 2017: 26 2x32d 2.9M, 2x64d 11.7M, 2x96d 26.2M; 2x32d is exactly osmr/imgclsmob's
# Shake-Shake-ResNet-26-2x32d (2,923,162).
for _width in (32, 64, 96):
    register_variant(
        f"shake_shake26_2x{_width}d",
        ShakeShakeNet,
        f"Shake-Shake-26 2x{_width}d (S-S-I by default)",
        depth=26,
        base_width=_width,
    )
