"""Building blocks shared by the model families: norm factory, shortcuts, SE, init, erasing."""

from __future__ import annotations

import math
from collections.abc import Collection
from fractions import Fraction

import torch
import torch.nn.functional as F
from torch import nn

NORMS = ("bn", "gn", "none")
MAX_GN_GROUPS = 32


def gn_groups(channels: int) -> int:
    """Return the GroupNorm group count: 32, or the largest divisor of `channels` below it."""
    for groups in range(min(MAX_GN_GROUPS, channels), 0, -1):
        if channels % groups == 0:
            return groups
    return 1


def check_norm(norm: str) -> str:
    """Validate a `norm` option and return it."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got '{norm}'")
    return norm


def norm2d(norm: str, channels: int) -> nn.Module:
    """Return the 2-d normalisation layer named by `norm` (bn | gn | none) for `channels`."""
    check_norm(norm)
    if norm == "bn":
        return nn.BatchNorm2d(channels)
    if norm == "gn":
        return nn.GroupNorm(gn_groups(channels), channels)
    return nn.Identity()


def relu(erased: bool = False, inplace: bool = True) -> nn.Module:
    """Return a ReLU, or an identity where EraseReLU removed it."""
    return nn.Identity() if erased else nn.ReLU(inplace=inplace)


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """Return a bias-free 3x3 convolution with padding 1."""
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, groups=groups, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    """Return a bias-free 1x1 convolution."""
    return nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False)


def erased_modules(count: int, ratio: float) -> set[int]:
    """Return which of `count` modules of a stage lose their last ReLU under EraseReLU.

    cnnlab's rule (the EraseReLU paper's own rule is unconfirmed): ratio * count
    rounded to the nearest whole number with halves rounded up (not Python's round(), which
    rounds halves to even: 4.5 -> 4 but 1.5 -> 2), so ratio 0.5 erases 5 of 9 modules and 2
    of 3; spread evenly, the last module always included. The ratio is read from its decimal
    text so that 0.35 * 10 counts as 3.5, not 3.4999...
    """
    if not 0.0 <= ratio <= 1.0:
        raise ValueError(f"erase_relu_ratio must lie in [0, 1], got {ratio}")
    k = math.floor(Fraction(str(ratio)) * count + Fraction(1, 2))
    return {count - 1 - (i * count) // k for i in range(k)} if k else set()


class ShortcutA(nn.Module):
    """Parameter-free shortcut: take every `stride`-th pixel, append zero channels at the end."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        if out_ch < in_ch:
            raise ValueError("shortcut A cannot reduce channels")
        self.stride = stride
        self.extra = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Subsample and zero-pad the channel dimension."""
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


def shortcut(kind: str, in_ch: int, out_ch: int, stride: int, norm: str) -> nn.Module:
    """Return the residual shortcut: identity when shapes match, else option A or B (conv+norm)."""
    if in_ch == out_ch and stride == 1:
        return nn.Identity()
    if kind == "A":
        return ShortcutA(in_ch, out_ch, stride)
    if kind == "B":
        return nn.Sequential(conv1x1(in_ch, out_ch, stride), norm2d(norm, out_ch))
    raise ValueError(f"shortcut must be 'A' or 'B', got '{kind}'")


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: pool, FC down by `reduction`, ReLU, FC up, sigmoid, rescale."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.down = nn.Linear(channels, hidden)
        self.up = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale each channel of `x` by its learned gate."""
        gate = x.mean(dim=(2, 3))
        gate = torch.sigmoid(self.up(F.relu(self.down(gate), inplace=True)))
        return x * gate[:, :, None, None]


CLASSIFIER_INITS = ("kaiming", "default", "default_zero_bias", "kaiming_default_bias")
CONV_INITS = ("fan_in", "fan_out")
NORM_INITS = ("ones", "uniform", "uniform_mid_normal", "normal")
# gcr/torch-residual-networks: N(1, 0.002) for every BN before b738d66 (train-cifar.lua@fec67c0:
# 84-94), for the BN inside each residual branch after it (residual-layers.lua@f0d0a17:57-59).
NEAR_ONE_STD = 0.002


def check_init(key: str, value: str, choices: tuple[str, ...]) -> str:
    """Validate an init-policy option `key` (e.g. norm_init) against `choices`; return it."""
    if value not in choices:
        raise ValueError(f"{key} must be one of {', '.join(choices)}, got '{value}'")
    return value


def init_weights(
    model: nn.Module,
    mode: str = "fan_out",
    classifier_init: str = "kaiming",
    norm_init: str = "ones",
    mid_norms: Collection[nn.Module] = (),
) -> None:
    """Kaiming-normal convs (relu gain, `mode` fan_in | fan_out, zero bias); norm layers as
    `norm_init` says; linear layers (the classifier, and SE's) as `classifier_init` says.

    classifier_init: "kaiming" (Kaiming-normal weight, zero bias); "default" (nn.Linear's own
    init, weight and bias U(+-1/sqrt(fan_in)), which is also Torch7's); "default_zero_bias"
    (nn.Linear's weight, zero bias: hysts/pytorch_image_classification's initialize_weights);
    "kaiming_default_bias" (Kaiming-normal weight, nn.Linear's bias, as NR's ResNet leaves its
    1x1-conv classifier's bias).
    norm_init: "ones" (scale 1, shift 0); "uniform" (scale U(0, 1), shift 0: Torch7's
    BatchNormalization:reset, torch/nn@93ec794 BatchNormalization.lua:59-61); "uniform_mid_normal"
    ("uniform", but the `mid_norms` N(1, 0.002), as gcr's residual branches); "normal" (every
    scale N(1, 0.002), as gcr's code before it moved to nninit).
    """
    check_init("classifier_init", classifier_init, CLASSIFIER_INITS)
    check_init("conv_init", mode, CONV_INITS)
    check_init("norm_init", norm_init, NORM_INITS)
    mids = {id(m) for m in mid_norms}
    for m in model.modules():
        if isinstance(m, nn.Linear) and classifier_init in ("default", "default_zero_bias"):
            if classifier_init == "default_zero_bias" and m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode=mode, nonlinearity="relu")
            if m.bias is not None and not (
                isinstance(m, nn.Linear) and classifier_init == "kaiming_default_bias"
            ):
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d, nn.GroupNorm)):
            if m.weight is not None:
                if norm_init == "ones":
                    nn.init.ones_(m.weight)
                elif norm_init == "normal" or (norm_init == "uniform_mid_normal" and id(m) in mids):
                    nn.init.normal_(m.weight, 1.0, NEAR_ONE_STD)
                else:
                    nn.init.uniform_(m.weight, 0.0, 1.0)
                nn.init.zeros_(m.bias)


def stage_blocks(depth: int, per_block_layers: int, name: str) -> int:
    """Return blocks per stage for a 3-stage CIFAR net of `depth` = 3*n*per_block_layers + 2."""
    n, rem = divmod(depth - 2, 3 * per_block_layers)
    if rem or n < 1:
        raise ValueError(
            f"{name} depth must be {3 * per_block_layers}n+2 (e.g. {3 * per_block_layers + 2}, "
            f"{6 * per_block_layers + 2}), got {depth}"
        )
    return n


def residual_blocks(depth: int, block: str, name: str) -> tuple[bool, int]:
    """Check `block` (basic | bottleneck); return (bottleneck?, blocks per stage) for `depth`."""
    if block not in ("basic", "bottleneck"):
        raise ValueError(f"block must be 'basic' or 'bottleneck', got '{block}'")
    bottleneck = block == "bottleneck"
    return bottleneck, stage_blocks(depth, 3 if bottleneck else 2, f"{name} ({block})")
