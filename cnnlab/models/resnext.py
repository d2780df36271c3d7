"""CIFAR ResNeXt-29 (Xie et al. 2017) as hysts/pytorch_image_classification@da2bdcf
models/resnext.py builds it: grouped bottlenecks, post-activation.

Options: SE on the residual output before the add, and EraseReLU (Dong et al. 2017), which removes
the ReLU after the addition in the chosen blocks, as in the post-activation ResNet.
"""

from __future__ import annotations

from torch import nn

from cnnlab.models.blocks import PostActResNet, grouped_bottleneck, post_act_stages
from cnnlab.models.layers import check_norm, conv3x3, init_weights, norm2d
from cnnlab.registry import register_variant

EXPANSION = 4


class CifarResNeXt(PostActResNet):
    """ResNeXt-29 for 32x32 inputs: stem conv-norm-ReLU, three stages of bottlenecks, pool, FC."""

    def __init__(
        self,
        depth: int = 29,
        cardinality: int = 8,
        base_width: int = 64,
        stem_width: int = 64,
        in_channels: int = 3,
        num_classes: int = 10,
        norm: str = "bn",
        erase_relu: bool = False,
        erase_relu_ratio: float = 1.0,
        se: bool = False,
        se_reduction: int = 16,
        classifier_init: str = "kaiming",
    ) -> None:
        super().__init__()
        check_norm(norm)
        n, rem = divmod(depth - 2, 9)
        if rem or n < 1:
            raise ValueError(f"ResNeXt depth must be 9n+2 (e.g. 29), got {depth}")
        if cardinality < 1 or base_width < 1:
            raise ValueError("cardinality and base_width must be positive")

        def make_branch(stage: int, in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
            inner = cardinality * base_width * 2**stage  # 512/1024/2048 for 8x64d
            return grouped_bottleneck(in_ch, inner, out_ch, stride, cardinality, norm)

        self.stem = nn.Sequential(
            conv3x3(in_channels, stem_width), norm2d(norm, stem_width), nn.ReLU(inplace=True)
        )
        self.stages, in_ch = post_act_stages(
            stem_width,
            [(n, stem_width * EXPANSION * 2**stage) for stage in range(3)],  # 256/512/1024
            make_branch,
            norm,
            erase_relu_ratio=erase_relu_ratio if erase_relu else None,
            se=se_reduction if se else 0,
        )
        self.set_head(in_ch, num_classes)
        init_weights(self, "fan_out", classifier_init)


# Xie et al. 2017, Table 7 (CIFAR): 8x64d 34.4M, 16x64d 68.1M. The paper gives no count for
# 4x64d (hysts' reference run); it is registered for hysts' 3.89% row
# (hysts/pytorch_image_classification@da2bdcf README.md, CIFAR-10 table).
for _card in (4, 8, 16):
    register_variant(
        f"resnext29_{_card}x64d",
        CifarResNeXt,
        f"CIFAR ResNeXt-29, cardinality {_card}, 64-d groups",
        cardinality=_card,
        base_width=64,
    )
