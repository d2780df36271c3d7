"""Pre-activation CIFAR ResNet (He et al. 2016b) with the block-design options of
hysts/pytorch_image_classification@72f898b models/resnet_preact.py.

Options: `remove_first_relu`, `add_last_bn`, `preact_stage` (whether the first block of each
stage pre-activates the input it shares with its shortcut), `channel_plan`, SE, and EraseReLU,
which in a pre-activation unit removes the unit's last ReLU (the one before its last conv; cnnlab's
reading of the EraseReLU rule, see docs/architecture.md).

`channel_plan` "he" (He et al. 2016b): a `base_width` stem, stage outputs
w, 2w, 4w (x4 for bottleneck units) with w = base_width * widen. "hysts"
(hysts/pytorch_image_classification models/resnet_preact.py at 72f898b/3a55012:
`n_channels = [base_channels, base_channels * 2 * expansion, base_channels * 4 * expansion]`,
stem conv to n_channels[0], stage 1 maps n_channels[0] -> n_channels[0]): the stem has
w = base_width * widen channels and stage outputs are w, 2w*e, 4w*e, so stage 1 keeps the stem
width and its shortcuts are identities. The plans agree for basic units at widen 1; they differ
for bottleneck nets (hysts' ResNet-preact-164 ends stage 1 at 16 channels, He's at 64) and for
widen > 1 (hysts' "widening factor 4" is base_channels 64: a 64-channel stem).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.models.layers import (
    SqueezeExcite,
    check_norm,
    conv1x1,
    conv3x3,
    erased_modules,
    init_weights,
    norm2d,
    relu,
    residual_blocks,
)
from cnnlab.registry import register_variant


class PreactBlock(nn.Module):
    """One pre-activation unit, basic (two 3x3) or bottleneck (1x1-3x3-1x1)."""

    def __init__(
        self,
        in_ch: int,
        planes: int,
        stride: int,
        bottleneck: bool,
        norm: str,
        preact_shortcut: bool,
        remove_first_relu: bool,
        add_last_bn: bool,
        erase_last_relu: bool,
        se: int,
    ) -> None:
        super().__init__()
        out_ch = planes * 4 if bottleneck else planes
        self.preact_shortcut = preact_shortcut
        self.norm1 = norm2d(norm, in_ch)
        # A pre-activated input feeds the shortcut too, so its ReLU is never removed. Not in
        # place: with norm='none' the ReLU would otherwise overwrite the shortcut's input.
        self.relu1 = relu(erased=remove_first_relu and not preact_shortcut, inplace=False)
        if bottleneck:
            widths = [(in_ch, planes, 1, 1), (planes, planes, 3, stride), (planes, out_ch, 1, 1)]
        else:
            widths = [(in_ch, planes, 3, stride), (planes, out_ch, 3, 1)]
        convs = []
        for cin, cout, k, s in widths:
            convs.append(conv3x3(cin, cout, s) if k == 3 else conv1x1(cin, cout, s))
        self.conv1 = convs[0]
        rest: list[nn.Module] = []
        for i, conv in enumerate(convs[1:], start=1):
            is_last = i == len(convs) - 1
            rest += [norm2d(norm, widths[i][0]), relu(erased=is_last and erase_last_relu), conv]
        if add_last_bn:
            rest.append(norm2d(norm, out_ch))
        if se:
            rest.append(SqueezeExcite(out_ch, se))
        self.rest = nn.Sequential(*rest)
        needs_proj = in_ch != out_ch or stride != 1
        self.shortcut = conv1x1(in_ch, out_ch, stride) if needs_proj else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the residual branch plus the shortcut."""
        act = self.relu1(self.norm1(x))
        branch = self.rest(self.conv1(act))
        return branch + self.shortcut(act if self.preact_shortcut else x)


class PreactResNet(nn.Module):
    """Pre-activation ResNet: 3x3 stem conv, three stages, norm-ReLU head, pool, FC."""

    def __init__(
        self,
        depth: int = 20,
        block: str = "basic",
        in_channels: int = 3,
        num_classes: int = 10,
        base_width: int = 16,
        widen: int = 1,
        norm: str = "bn",
        remove_first_relu: bool = False,
        add_last_bn: bool = False,
        preact_stage: Sequence[bool] = (True, True, True),
        channel_plan: str = "he",
        erase_relu: bool = False,
        erase_relu_ratio: float = 1.0,
        se: bool = False,
        se_reduction: int = 16,
        classifier_init: str = "kaiming",
    ) -> None:
        super().__init__()
        check_norm(norm)
        if len(preact_stage) != 3:
            raise ValueError(f"preact_stage needs 3 flags, got {list(preact_stage)}")
        bottleneck, n = residual_blocks(depth, block, "pre-activation ResNet")
        if channel_plan not in ("he", "hysts"):
            raise ValueError(f"channel_plan must be 'he' or 'hysts', got '{channel_plan}'")
        expansion = 4 if bottleneck else 1
        width = base_width * widen
        if channel_plan == "he":
            stem_width, outs = base_width, [width * 2**s * expansion for s in range(3)]
        else:
            stem_width, outs = width, [width, 2 * width * expansion, 4 * width * expansion]
        erased = erased_modules(n, erase_relu_ratio) if erase_relu else set()

        self.stem = conv3x3(in_channels, stem_width)
        layers: list[nn.Module] = []
        in_ch = stem_width
        for stage in range(3):
            planes = outs[stage] // expansion
            for i in range(n):
                unit = PreactBlock(
                    in_ch,
                    planes,
                    stride=2 if stage > 0 and i == 0 else 1,
                    bottleneck=bottleneck,
                    norm=norm,
                    preact_shortcut=i == 0 and bool(preact_stage[stage]),
                    remove_first_relu=remove_first_relu,
                    add_last_bn=add_last_bn,
                    erase_last_relu=i in erased,
                    se=se_reduction if se else 0,
                )
                layers.append(unit)
                in_ch = outs[stage]
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(
            norm2d(norm, in_ch), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten()
        )
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self, "fan_out", classifier_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.fc(self.head(self.stages(self.stem(x))))


# He et al. 2016b (Identity Mappings), Table 3/5: preact-110 1.7M, preact-164 1.7M,
# preact-1001 10.2M; preact-20/56 share the basic design of the 2016 CIFAR nets (0.27M/0.85M).
# preact-50 (8 basic units per stage) is hysts' Fashion-MNIST/MNIST model
# (hysts/pytorch_image_classification@9b987c9 README.md, FashionMNIST and MNIST tables).
for _depth, _block in ((20, "basic"), (50, "basic"), (56, "basic"), (110, "basic"),
                       (164, "bottleneck"), (1001, "bottleneck")):  # fmt: skip
    register_variant(
        f"preact_resnet{_depth}",
        PreactResNet,
        f"pre-activation ResNet-{_depth}, {_block} units",
        depth=_depth,
        block=_block,
    )
# hysts' ResNet-preact-164 bottleneck (the 5.90 row): stage outputs 16 / 128 / 256.
register_variant(
    "preact_resnet164_hysts",
    PreactResNet,
    "pre-activation ResNet-164, bottleneck units, hysts' channel plan (16/128/256 outputs)",
    depth=164,
    block="bottleneck",
    channel_plan="hysts",
)
