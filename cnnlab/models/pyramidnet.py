"""PyramidNet for CIFAR (Han, Kim & Kim 2017), basic and bottleneck units, as
jhkim89/PyramidNet@27d168e addpyramidnet.lua builds them.

Widths grow additively by alpha/(3N) per unit from a 16-channel stem (N units per stage),
rounded with round() (halves to even, as hysts' np.round; the Torch code rounds halves up, and no
registered net has a half) and multiplied by 4 for bottlenecks. Basic unit:
norm-conv3x3-norm-ReLU-conv3x3-norm; bottleneck unit: norm-conv1x1-norm-ReLU-conv3x3-norm-ReLU-
conv1x1-norm (stride on the 3x3). Shortcut: 2x2 average pooling when strided, then zero channels
appended at the end. Stem conv-norm (no ReLU); head norm-ReLU-pool-FC. `stem_width` widens the
stem alone: hysts/pytorch_image_classification@da2bdcf models/pyramidnet.py:149-162 stems its
bottleneck nets at 4 x 16 = 64 channels, the widening still counted from 16.

EraseReLU (Dong et al. 2017): PyramidNet units already end linearly (a norm, no ReLU after the
addition), so there is no final ReLU to erase. The basic unit has a single ReLU; removing it
would make the unit a purely linear map, so `erase_relu` is refused for basic units. In a
bottleneck unit, cnnlab's pre-activation reading applies: the ReLU before the last conv is
removed, in ratio*N units per stage (halves up, layers.erased_modules), spread evenly, last
included.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.models.layers import (
    check_norm,
    conv1x1,
    conv3x3,
    erased_modules,
    init_weights,
    norm2d,
    residual_blocks,
)
from cnnlab.registry import register_variant


class PoolPadShortcut(nn.Module):
    """Parameter-free shortcut: 2x2 average pooling when strided, zero channels appended."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        # ceil_mode matches the strided 3x3 conv's output size on odd maps as well.
        self.pool = nn.AvgPool2d(2, ceil_mode=True) if stride > 1 else nn.Identity()
        self.extra = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pool and zero-pad the channel dimension."""
        x = self.pool(x)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra)) if self.extra else x


class PyramidUnit(nn.Module):
    """One PyramidNet unit (basic or bottleneck) plus its pool-and-pad shortcut."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        bottleneck: bool,
        norm: str,
        erase_last_relu: bool,
    ) -> None:
        super().__init__()
        if bottleneck:
            mid = out_ch // 4
            layers = [
                norm2d(norm, in_ch),
                conv1x1(in_ch, mid),
                norm2d(norm, mid),
                nn.ReLU(inplace=True),
                conv3x3(mid, mid, stride),
                norm2d(norm, mid),
                nn.Identity() if erase_last_relu else nn.ReLU(inplace=True),
                conv1x1(mid, out_ch),
            ]
        else:
            layers = [
                norm2d(norm, in_ch),
                conv3x3(in_ch, out_ch, stride),
                norm2d(norm, out_ch),
                nn.ReLU(inplace=True),
                conv3x3(out_ch, out_ch),
            ]
        self.branch = nn.Sequential(*layers, norm2d(norm, out_ch))
        self.shortcut = PoolPadShortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the branch plus the pooled, zero-padded input."""
        return self.branch(x) + self.shortcut(x)


def pyramid_widths(blocks: int, alpha: float, base_width: int, expansion: int) -> list[int]:
    """Return the stem width followed by the output width of each of the `blocks` units."""
    widths = [float(base_width)]
    for _ in range(blocks):
        widths.append(widths[-1] + alpha / blocks)
    # Python's round() and the reference's np.round both round halves to even.
    return [base_width] + [int(round(w)) * expansion for w in widths[1:]]


class PyramidNet(nn.Module):
    """PyramidNet: conv-norm stem, three stages of additively widening units, head, FC."""

    def __init__(
        self,
        depth: int = 110,
        alpha: float = 84,
        block: str = "basic",
        in_channels: int = 3,
        num_classes: int = 10,
        base_width: int = 16,
        stem_width: int | None = None,
        norm: str = "bn",
        erase_relu: bool = False,
        erase_relu_ratio: float = 1.0,
        classifier_init: str = "kaiming",
    ) -> None:
        super().__init__()
        check_norm(norm)
        bottleneck, n = residual_blocks(depth, block, "PyramidNet")
        if alpha < 0:
            raise ValueError(f"PyramidNet alpha must be >= 0, got {alpha}")
        if erase_relu and not bottleneck:
            raise ValueError(
                "erase_relu needs bottleneck units: PyramidNet basic units already end without "
                "a ReLU, and removing their only ReLU would leave them linear"
            )
        erased = erased_modules(n, erase_relu_ratio) if erase_relu else set()
        widths = pyramid_widths(3 * n, alpha, base_width, 4 if bottleneck else 1)
        # The authors' Torch code stems at base_width; hysts' code at base_width * expansion
        # (stem_width 64 for its bottleneck nets). The widening starts from base_width either way.
        widths[0] = stem_width or base_width

        self.stem = nn.Sequential(conv3x3(in_channels, widths[0]), norm2d(norm, widths[0]))
        layers: list[nn.Module] = []
        for idx in range(3 * n):
            stage, i = divmod(idx, n)
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(
                PyramidUnit(widths[idx], widths[idx + 1], stride, bottleneck, norm, i in erased)
            )
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(
            norm2d(norm, widths[-1]), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(widths[-1], num_classes)
        init_weights(self, "fan_out", classifier_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.fc(self.head(self.stages(self.stem(x))))


# Han et al. 2017, Table 4 (CIFAR), and the jhkim89/PyramidNet README list 1.7M, 3.8M, 28.3M,
# 27.0M and 26.0M for these five. Built as the authors' code builds them (addpyramidnet.lua,
# dyhan0920 PyramidNet.py: same layers, same widths) they have 1.77M, 3.90M, 28.49M, 27.22M and
# 26.21M. No width rounding closes the gap -- at alpha=270 the basic widths 16+5k are exact
# integers -- so the published figures are 0.6-4% low; tests/test_zoo_a.py records this.
for _depth, _alpha, _block in (
    (110, 48, "basic"),
    (110, 84, "basic"),
    (110, 270, "basic"),
    (164, 270, "bottleneck"),
    (272, 200, "bottleneck"),
):
    _suffix = "_bottleneck" if _block == "bottleneck" else ""
    register_variant(
        f"pyramidnet{_depth}{_suffix}_a{_alpha}",
        PyramidNet,
        f"PyramidNet-{_depth} ({_block} units), alpha={_alpha}",
        depth=_depth,
        alpha=_alpha,
        block=_block,
    )
