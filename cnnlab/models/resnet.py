"""Post-activation CIFAR ResNet (He et al. 2016): basic and bottleneck, shortcut A or B.

Block options cover the gcr block-design study (METHODS §6): `relu_after_add`, `bn_after_add`;
EraseReLU (METHODS §1) removes the ReLU after the addition in the chosen blocks.
"""

from __future__ import annotations

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
    shortcut,
    stage_blocks,
)
from cnnlab.registry import register_variant


class _PostActBlock(nn.Module):
    """Residual branch + shortcut, then the block's ending: [norm after add] and [ReLU]."""

    expansion = 1

    def __init__(
        self,
        branch: nn.Sequential,
        skip: nn.Module,
        out_ch: int,
        norm: str,
        final_relu: bool,
        bn_after_add: bool,
        se: int,
    ) -> None:
        super().__init__()
        self.branch = branch
        self.se = SqueezeExcite(out_ch, se) if se else nn.Identity()
        self.skip = skip
        self.after_add = norm2d(norm, out_ch) if bn_after_add else nn.Identity()
        self.out_relu = relu(erased=not final_relu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return out_relu(after_add(se(branch(x)) + skip(x)))."""
        return self.out_relu(self.after_add(self.se(self.branch(x)) + self.skip(x)))


def _basic_branch(
    in_ch: int, planes: int, stride: int, norm: str, last_norm: bool
) -> nn.Sequential:
    return nn.Sequential(
        conv3x3(in_ch, planes, stride),
        norm2d(norm, planes),
        nn.ReLU(inplace=True),
        conv3x3(planes, planes),
        norm2d(norm, planes) if last_norm else nn.Identity(),
    )


def _bottleneck_branch(
    in_ch: int, planes: int, stride: int, norm: str, last_norm: bool
) -> nn.Sequential:
    out_ch = planes * 4
    return nn.Sequential(
        conv1x1(in_ch, planes),
        norm2d(norm, planes),
        nn.ReLU(inplace=True),
        conv3x3(planes, planes, stride),
        norm2d(norm, planes),
        nn.ReLU(inplace=True),
        conv1x1(planes, out_ch),
        norm2d(norm, out_ch) if last_norm else nn.Identity(),
    )


class CifarResNet(nn.Module):
    """CIFAR ResNet: stem conv-norm-ReLU, three stages (16/32/64 x width), pool, FC."""

    def __init__(
        self,
        depth: int = 20,
        block: str = "basic",
        shortcut_kind: str = "A",
        in_channels: int = 3,
        num_classes: int = 10,
        base_width: int = 16,
        norm: str = "bn",
        erase_relu: bool = False,
        erase_relu_ratio: float = 1.0,
        relu_after_add: bool = True,
        bn_after_add: bool = False,
        se: bool = False,
        se_reduction: int = 16,
    ) -> None:
        super().__init__()
        check_norm(norm)
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got '{block}'")
        expansion = 1 if block == "basic" else 4
        n = stage_blocks(depth, 2 if block == "basic" else 3, f"ResNet ({block})")
        make_branch = _basic_branch if block == "basic" else _bottleneck_branch
        erased = erased_modules(n, erase_relu_ratio) if erase_relu else set()

        self.stem = nn.Sequential(
            conv3x3(in_channels, base_width), norm2d(norm, base_width), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        in_ch = base_width
        for stage in range(3):
            planes = base_width * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                out_ch = planes * expansion
                layers.append(
                    _PostActBlock(
                        make_branch(in_ch, planes, stride, norm, last_norm=not bn_after_add),
                        shortcut(shortcut_kind, in_ch, out_ch, stride, norm),
                        out_ch,
                        norm,
                        final_relu=relu_after_add and i not in erased,
                        bn_after_add=bn_after_add,
                        se=se_reduction if se else 0,
                    )
                )
                in_ch = out_ch
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)
        init_weights(self, "fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))


# He et al. 2016, Table 6 (CIFAR-10, option A shortcuts): 0.27M, 0.46M, 0.66M, 0.85M, 1.7M, 19.4M.
for _depth in (20, 32, 44, 56, 110, 1202):
    register_variant(
        f"resnet{_depth}", CifarResNet, f"CIFAR ResNet-{_depth}, basic blocks", depth=_depth
    )
# Bottleneck post-activation ResNet-164 with projection shortcuts (He et al. 2016b: 1.7M).
register_variant(
    "resnet164",
    CifarResNet,
    "CIFAR ResNet-164, bottleneck blocks, post-activation",
    defaults={"shortcut_kind": "B"},
    depth=164,
    block="bottleneck",
)
