"""Wide residual networks WRN-d-k for CIFAR (Zagoruyko & Komodakis 2016).

Pre-activation basic units at widths 16k, 32k, 64k after a 16-channel stem, (d-4)/6 units per
stage. Where a unit changes width, norm-ReLU(x) feeds both the residual path and the strided 1x1
shortcut conv; elsewhere the shortcut sees raw x. Optional dropout (`dropout_position`, see
WideBlock). EraseReLU (Dong 2017) removes the unit's last ReLU, the one before its second conv,
in ratio*N units per stage (halves up, layers.erased_modules; cnnlab's reading).
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.layers import check_norm, conv1x1, conv3x3, erased_modules, init_weights, norm2d
from cnnlab.registry import register_variant

DROPOUT_POSITIONS = ("before_conv2", "after_conv1")


class WideBlock(nn.Module):
    """Pre-activation unit: norm-ReLU-conv3x3 norm-ReLU-conv3x3 with optional dropout, + shortcut.

    dropout_position "before_conv2" is the official code's (szagoruyko/wide-residual-networks
    models/wide-resnet.lua, `wide_basic`: BN, ReLU, then Dropout, then the second conv);
    "after_conv1" is hysts' (models/wrn.py: conv1, F.dropout, then bn2-ReLU-conv2).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int,
        norm: str,
        dropout: float,
        erase_last_relu: bool,
        dropout_position: str = "before_conv2",
    ) -> None:
        super().__init__()
        needs_proj = in_ch != out_ch or stride != 1
        self.preact_both = needs_proj
        self.norm1 = norm2d(norm, in_ch)
        # Not in place: with norm='none' the ReLU would overwrite x, which the shortcut reuses.
        self.relu1 = nn.ReLU()
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.norm2 = norm2d(norm, out_ch)
        self.relu2 = nn.Identity() if erase_last_relu else nn.ReLU(inplace=True)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.dropout_first = dropout_position == "after_conv1"
        self.shortcut = conv1x1(in_ch, out_ch, stride) if needs_proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the residual branch plus the shortcut."""
        act = self.relu1(self.norm1(x))
        y = self.conv1(act)
        if self.dropout_first:
            y = self.conv2(self.relu2(self.norm2(self.drop(y))))
        else:
            y = self.conv2(self.drop(self.relu2(self.norm2(y))))
        return y + self.shortcut(act if self.preact_both else x)


class WideResNet(nn.Module):
    """WRN-depth-widen: 3x3 stem, three stages of wide pre-activation units, norm-ReLU head, FC."""

    def __init__(
        self,
        depth: int = 28,
        widen: int = 10,
        in_channels: int = 3,
        num_classes: int = 10,
        base_width: int = 16,
        dropout: float = 0.0,
        dropout_position: str = "before_conv2",
        norm: str = "bn",
        erase_relu: bool = False,
        erase_relu_ratio: float = 1.0,
        classifier_init: str = "kaiming",
        norm_init: str = "ones",
    ) -> None:
        super().__init__()
        check_norm(norm)
        n, rem = divmod(depth - 4, 6)
        if rem or n < 1:
            raise ValueError(f"WRN depth must be 6n+4 (e.g. 10, 16, 28, 40), got {depth}")
        if widen < 1:
            raise ValueError(f"WRN widen must be >= 1, got {widen}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        if dropout_position not in DROPOUT_POSITIONS:
            raise ValueError(
                f"dropout_position must be one of {', '.join(DROPOUT_POSITIONS)}, "
                f"got '{dropout_position}'"
            )
        erased = erased_modules(n, erase_relu_ratio) if erase_relu else set()

        self.stem = conv3x3(in_channels, base_width)
        layers: list[nn.Module] = []
        in_ch = base_width
        for stage in range(3):
            out_ch = base_width * widen * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                unit = WideBlock(
                    in_ch, out_ch, stride, norm, dropout, i in erased, dropout_position
                )
                layers.append(unit)
                in_ch = out_ch
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(
            norm2d(norm, in_ch), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(in_ch, num_classes)
        # Kaiming fan_in, as the official MSRinit (szagoruyko/wide-residual-networks@ae6d0d0
        # models/utils.lua:3-9: std sqrt(2 / (kW*kH*nInputPlane))). Its BN scales start at
        # Torch7's U(0, 1) and its classifier at Torch7's Linear with the bias zeroed (utils.lua:
        # 11-15, 30 model:reset()): norm_init=uniform, classifier_init=default_zero_bias.
        # uniform_mid_normal: the norm between each unit's two convs is the one inside the branch.
        mid_norms = [unit.norm2 for unit in self.stages]
        init_weights(self, "fan_in", classifier_init, norm_init, mid_norms)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.fc(self.head(self.stages(self.stem(x))))


# Zagoruyko & Komodakis 2016 (arXiv 1605.07146v4), "#params" column of the CIFAR tables:
# WRN-16-4 2.7M, WRN-16-8 11.0M, WRN-22-8 17.2M, WRN-28-10 36.5M, WRN-40-4 8.9M.
for _depth, _widen in ((16, 4), (16, 8), (22, 8), (28, 10), (40, 4)):
    register_variant(
        f"wrn{_depth}_{_widen}",
        WideResNet,
        f"wide ResNet WRN-{_depth}-{_widen}, pre-activation basic units",
        depth=_depth,
        widen=_widen,
    )
# The paper's best CIFAR setting: WRN-28-10 with dropout 0.3 between the convs (Table 6),
# placed as the official code places it (after the second BN-ReLU, before the second conv).
register_variant(
    "wrn28_10_dropout",
    WideResNet,
    "WRN-28-10 with dropout 0.3 after the second BN-ReLU of each unit (official placement)",
    defaults={"dropout": 0.3},
    depth=28,
    widen=10,
)
