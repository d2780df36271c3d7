"""CIFAR VGG nets: conv-norm-ReLU stacks with max pooling, global pooling and one classifier.

A layout is a sequence of conv widths with "M" for a 2x2 max pool. `vgg15_bn` is hysts'
VGG-like net (hysts/pytorch_image_classification@da2bdcf configs/vgg.json: widths 64..512,
layers 2,2,3,3,3); the `_cifar` VGG-16/19 follow pytorch-classification / pytorch-cifar
(configs D/E, then one FC on the 512 features).
`vgg19_nr` is Neural Rejuvenation's CIFAR VGG-19 (Qiao et al. 2019): no FC stack, only two pools,
bias-free convs, norm scale initialised to 0.5 and a classifier initialised N(0, 0.01^2).

Max pools use ceil_mode so that five of them still leave a 1x1 map from 28x28 inputs (32x32
inputs are unaffected), and the head pools adaptively, so 28x28 and 32x32 inputs both work.

`one_relu_per_stage` keeps the ReLU of the first conv of each group only: the network
hysts/pytorch_image_classification@da2bdcf models/vgg.py:51-76 builds, whose _make_stage adds
every ReLU under the one name 'relu', so each add after the first replaces it in place.

EraseReLU (Dong 2017, cnnlab's reading): each group of convs ending at a pool (or at the head)
is a module; the ReLU of its last conv is removed in ratio*N (halves up) of the N groups, spread
evenly, the last group always included.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.models.layers import check_norm, erased_modules, init_weights, norm2d
from cnnlab.models.unit_graph import GraphBuilder, UnitGraph
from cnnlab.registry import register_variant

POOL = "M"
VGG15 = (64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL) + (512,) * 3
VGG19 = (64, 64, POOL, 128, 128, POOL) + (256,) * 4 + (POOL,) + (512,) * 4 + (POOL,) + (512,) * 4
VGG_LAYOUTS: dict[str, tuple[int | str, ...]] = {
    "vgg15": VGG15 + (POOL,),
    "vgg19": VGG19 + (POOL,),
    # NR models/cifar/vgg.py: the VGG-19 widths with pools only after the 4th and 10th convs.
    "vgg19_nr": (64, 64, 128, 128, POOL) + (256,) * 4 + (512, 512, POOL) + (512,) * 6,
}


def conv_groups(layout: Sequence[int | str]) -> list[list[int]]:
    """Split a layout at its pools into groups of conv widths (the EraseReLU modules)."""
    groups: list[list[int]] = [[]]
    for item in layout:
        if item == POOL:
            groups.append([])
        elif isinstance(item, int) and item > 0:
            groups[-1].append(item)
        else:
            raise ValueError(f"VGG layout entries must be positive ints or '{POOL}', got {item!r}")
    if not any(groups):
        raise ValueError("VGG layout needs at least one conv")
    return groups


class CifarVGG(nn.Module):
    """VGG for small images: conv-norm-ReLU groups with max pools, global pool, classifier."""

    def __init__(
        self,
        layout: Sequence[int | str] = VGG_LAYOUTS["vgg15"],
        in_channels: int = 3,
        num_classes: int = 10,
        norm: str = "bn",
        conv_bias: bool = True,
        norm_scale_init: float = 1.0,
        fc_init_std: float | None = None,
        erase_relu: bool = False,
        erase_relu_ratio: float = 1.0,
        one_relu_per_stage: bool = False,
        classifier_init: str = "kaiming",
    ) -> None:
        super().__init__()
        check_norm(norm)
        if one_relu_per_stage and erase_relu:
            raise ValueError("one_relu_per_stage and erase_relu both remove ReLUs; choose one")
        groups = conv_groups(layout)
        # Groups are empty only between back-to-back pools or after a trailing pool.
        modules = [i for i, g in enumerate(groups) if g]
        erased_idx = erased_modules(len(modules), erase_relu_ratio) if erase_relu else set()
        erased = {modules[i] for i in erased_idx}

        layers: list[nn.Module] = []
        ch = in_channels
        for g, widths in enumerate(groups):
            if g > 0:
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
            for j, width in enumerate(widths):
                last = j == len(widths) - 1
                linear = (last and g in erased) or (one_relu_per_stage and j > 0)
                layers += [
                    nn.Conv2d(ch, width, 3, padding=1, bias=conv_bias),
                    norm2d(norm, width),
                    nn.Identity() if linear else nn.ReLU(inplace=True),
                ]
                ch = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        # NR classifies with a 1x1 conv and then averages; pooling first is the same function.
        self.fc = nn.Linear(ch, num_classes)
        init_weights(self, "fan_out", classifier_init)
        if norm_scale_init != 1.0:
            for m in self.modules():
                if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                    nn.init.constant_(m.weight, norm_scale_init)
        if fc_init_std is not None:
            nn.init.normal_(self.fc.weight, std=fc_init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.fc(self.head(self.features(x)))

    def unit_graph(self) -> UnitGraph:
        """Describe the Conv+BN units to Neural Rejuvenation: a chain."""
        builder = GraphBuilder()
        return builder.graph("fc", builder.chain(self.features, "features", ()))


# hysts' vgg15 has no published parameter count; pytorch-classification's README lists its
# vgg19_bn at 20.04M (CIFAR-10). VGG-16 (config D) with one FC is the vgg15_bn network itself.
for _name, _layout, _doc in (
    ("vgg15_bn", "vgg15", "VGG-like depth 15 with BN (hysts): 13 convs, 5 pools, one FC"),
    ("vgg16_bn_cifar", "vgg15", "CIFAR VGG-16 (config D) with BN and one FC; same net as vgg15_bn"),
    ("vgg19_bn_cifar", "vgg19", "CIFAR VGG-19 (config E) with BN and one FC"),
):
    register_variant(_name, CifarVGG, _doc, layout=VGG_LAYOUTS[_layout])

# Built here it has 20.04M parameters (CIFAR-10) / 20.08M (CIFAR-100). The NR README's 9.99M /
# 10.04M count the network after rejuvenation without cross connections (about half).
register_variant(
    "vgg19_nr",
    CifarVGG,
    "Neural Rejuvenation CIFAR VGG-19: 16 bias-free conv-BN-ReLU, 2 pools, 1x1 classifier",
    defaults={"norm_scale_init": 0.5, "fc_init_std": 0.01},
    layout=VGG_LAYOUTS["vgg19_nr"],
    conv_bias=False,
)
