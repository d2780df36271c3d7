"""Residual blocks shared by the post-activation ResNet families (CIFAR, ImageNet, ResNeXt).

`PostActBlock` is a branch plus a shortcut, then the block's ending; the branch builders
return the conv-norm stacks the families put in it; `post_act_stages` stacks the blocks of
all stages (stride 2 at the start of every stage but the first, EraseReLU per stage); and
`PostActResNet` is stem, stages, pool and classifier, and describes itself to Neural
Rejuvenation (models/unit_graph.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.models.layers import (
    ShortcutA,
    SqueezeExcite,
    conv1x1,
    conv3x3,
    erased_modules,
    norm2d,
    relu,
    shortcut,
)
from cnnlab.models.unit_graph import GraphBuilder, UnitGraph

# (stage, in channels, out channels, stride) -> the residual branch of one block
BranchMaker = Callable[[int, int, int, int], nn.Sequential]


class PostActBlock(nn.Module):
    """Residual branch + shortcut, then the block's ending: [norm after add] and [ReLU]."""

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

    def add_units(self, builder: GraphBuilder, path: str, block_input: int) -> int:
        """Add the branch's units and the projection's; return the unit standing for the sum.

        The branch's last unit and the projection are fixed: they feed the addition.
        """
        if isinstance(self.skip, ShortcutA):
            raise UserError(
                "rejuvenation needs projection shortcuts in a ResNet (model.shortcut_kind=B): "
                "zero-padded ones would mix survivors and new channels in the additions"
            )
        if not isinstance(self.se, nn.Identity) or not isinstance(self.after_add, nn.Identity):
            raise UserError("rejuvenation does not support se or bn_after_add in a ResNet")
        (last,) = builder.chain(self.branch, f"{path}.branch", (block_input,), fixed_last=True)
        if isinstance(self.skip, nn.Sequential):
            builder.chain(self.skip, f"{path}.skip", (block_input,), fixed_last=True)
        return last


def conv_stack(
    in_ch: int, convs: Sequence[tuple[int, int, int, int]], norm: str, last_norm: bool = True
) -> nn.Sequential:
    """Return conv-norm-ReLU per (out channels, kernel 1|3, stride, groups), no ReLU at the end.

    The last conv's norm is an Identity unless `last_norm`.
    """
    layers: list[nn.Module] = []
    for i, (out_ch, kernel, stride, groups) in enumerate(convs):
        last = i == len(convs) - 1
        layers.append(
            conv3x3(in_ch, out_ch, stride, groups)
            if kernel == 3
            else conv1x1(in_ch, out_ch, stride)
        )
        layers.append(norm2d(norm, out_ch) if last_norm or not last else nn.Identity())
        if not last:
            layers.append(nn.ReLU(inplace=True))
        in_ch = out_ch
    return nn.Sequential(*layers)


def basic_branch(in_ch: int, planes: int, stride: int, norm: str, last_norm: bool) -> nn.Sequential:
    """Return conv3x3 (stride)-norm-ReLU-conv3x3-[norm]."""
    return conv_stack(in_ch, [(planes, 3, stride, 1), (planes, 3, 1, 1)], norm, last_norm)


def bottleneck_branch(
    in_ch: int, planes: int, stride: int, norm: str, last_norm: bool
) -> nn.Sequential:
    """Return conv1x1-norm-ReLU, conv3x3 (stride)-norm-ReLU, conv1x1 to 4*planes, [norm]."""
    convs = [(planes, 1, 1, 1), (planes, 3, stride, 1), (4 * planes, 1, 1, 1)]
    return conv_stack(in_ch, convs, norm, last_norm)


def grouped_bottleneck(
    in_ch: int, inner: int, out_ch: int, stride: int, groups: int, norm: str
) -> nn.Sequential:
    """Return conv1x1-norm-ReLU, grouped conv3x3 (stride)-norm-ReLU, conv1x1-norm (no ReLU)."""
    return conv_stack(
        in_ch, [(inner, 1, 1, 1), (inner, 3, stride, groups), (out_ch, 1, 1, 1)], norm
    )


def post_act_stages(
    in_ch: int,
    stages: Sequence[tuple[int, int]],
    make_branch: BranchMaker,
    norm: str,
    shortcut_kind: str = "B",
    erase_relu_ratio: float | None = None,
    relu_after_add: bool = True,
    bn_after_add: bool = False,
    se: int = 0,
) -> tuple[nn.Sequential, int]:
    """Return the blocks of all `stages` ((blocks, out channels) each) and the output width.

    The first block of every stage but the first has stride 2; EraseReLU (when
    `erase_relu_ratio` is given) removes the ReLU after the addition in each stage's chosen
    blocks (layers.erased_modules).
    """
    blocks: list[nn.Module] = []
    for stage, (count, out_ch) in enumerate(stages):
        erased = erased_modules(count, erase_relu_ratio) if erase_relu_ratio is not None else set()
        for i in range(count):
            stride = 2 if stage > 0 and i == 0 else 1
            branch = make_branch(stage, in_ch, out_ch, stride)
            blocks.append(
                PostActBlock(
                    branch,
                    shortcut(shortcut_kind, in_ch, out_ch, stride, norm),
                    out_ch,
                    norm,
                    final_relu=relu_after_add and i not in erased,
                    bn_after_add=bn_after_add,
                    se=se,
                )
            )
            in_ch = out_ch
    return nn.Sequential(*blocks), in_ch


class PostActResNet(nn.Module):
    """stem -> stages of PostActBlocks -> global average pool -> fc; subclasses build them."""

    stem: nn.Sequential
    stages: nn.Sequential

    def set_head(self, in_ch: int, num_classes: int) -> None:
        """Add the global average pool and the linear classifier."""
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_ch, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.fc(torch.flatten(self.pool(self.stages(self.stem(x))), 1))

    def unit_graph(self) -> UnitGraph:
        """Describe the Conv+BN units to Neural Rejuvenation; the stem is fixed."""
        builder = GraphBuilder()
        (block_input,) = builder.chain(self.stem, "stem", (), fixed_last=True)
        for b, block in enumerate(self.stages):
            block_input = block.add_units(builder, f"stages.{b}", block_input)
        return builder.graph("fc", (block_input,))
