"""Post-activation CIFAR ResNet (He et al. 2016): basic and bottleneck, shortcut A or B.

Block options cover gcr/torch-residual-networks' block study: `relu_after_add`, `bn_after_add`;
EraseReLU (Dong et al. 2017) removes the ReLU after the addition in the chosen blocks.
"""

from __future__ import annotations

from torch import nn

from cnnlab.models.blocks import (
    PostActResNet,
    basic_branch,
    bottleneck_branch,
    post_act_stages,
)
from cnnlab.models.layers import check_norm, conv3x3, init_weights, norm2d, residual_blocks
from cnnlab.registry import register_variant


class CifarResNet(PostActResNet):
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
        classifier_init: str = "kaiming",
        conv_init: str = "fan_out",
        norm_init: str = "ones",
    ) -> None:
        super().__init__()
        check_norm(norm)
        bottleneck, n = residual_blocks(depth, block, "ResNet")
        expansion = 4 if bottleneck else 1
        make = bottleneck_branch if bottleneck else basic_branch

        def make_branch(stage: int, in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
            return make(in_ch, out_ch // expansion, stride, norm, last_norm=not bn_after_add)

        self.stem = nn.Sequential(
            conv3x3(in_channels, base_width), norm2d(norm, base_width), nn.ReLU(inplace=True)
        )
        self.stages, in_ch = post_act_stages(
            base_width,
            [(n, base_width * 2**stage * expansion) for stage in range(3)],
            make_branch,
            norm,
            shortcut_kind,
            erase_relu_ratio if erase_relu else None,
            relu_after_add=relu_after_add,
            bn_after_add=bn_after_add,
            se=se_reduction if se else 0,
        )
        self.set_head(in_ch, num_classes)
        # norm_init=uniform_mid_normal: gcr's BN inits (residual-layers.lua:57-59, 87; stem
        # train-cifar.lua:71): N(1, 0.002) inside each branch, Torch7's U(0, 1) elsewhere.
        mid_norms = [
            m
            for block in self.stages
            for m in list(block.branch)[:-1]
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm))
        ]
        init_weights(self, conv_init, classifier_init, norm_init, mid_norms)


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
