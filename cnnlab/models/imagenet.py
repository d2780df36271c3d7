"""ImageNet-size ResNet / ResNeXt, VGG and DenseNet built from cnnlab's own layers.

Structures and initialisation follow torchvision (ResNet v1.5: stride on the 3x3; projection
shortcuts), so parameter counts match its documented `num_params`. Every head pools
adaptively, so the same networks run at 224x224 (ImageNet) and 64x64 (Tiny ImageNet).
EraseReLU (Dong et al. 2017; cnnlab's reading) removes, per module: the ReLU after
the addition (ResNet), the last conv's ReLU before each pooling (VGG), the ReLU before the 3x3
conv of a dense unit (DenseNet).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cnnlab.models.blocks import (
    PostActResNet,
    basic_branch,
    grouped_bottleneck,
    post_act_stages,
)
from cnnlab.models.dense_blocks import DenseUnit, Transition, dense_unit_graph
from cnnlab.models.layers import check_norm, erased_modules, init_weights, norm2d, relu
from cnnlab.models.unit_graph import GraphBuilder, UnitGraph
from cnnlab.registry import register_variant

RESNET_LAYOUTS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
VGG_LAYOUTS = {11: (1, 1, 2, 2, 2), 13: (2, 2, 2, 2, 2), 16: (2, 2, 3, 3, 3), 19: (2, 2, 4, 4, 4)}
VGG_WIDTHS = (64, 128, 256, 512, 512)


def _imagenet_stem(in_channels: int, width: int, norm: str) -> nn.Sequential:
    """7x7 stride-2 conv, norm, ReLU, 3x3 stride-2 max-pool: input size / 4."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
        norm2d(norm, width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


class ImageNetResNet(PostActResNet):
    """ResNet-18/34/50/101/152 and ResNeXt (cardinality x base_width), post-activation."""

    image_size = 224  # the input side it is designed for (`cnnlab models`)

    def __init__(
        self,
        depth: int = 50,
        in_channels: int = 3,
        num_classes: int = 1000,
        cardinality: int = 1,
        base_width: int = 64,
        norm: str = "bn",
        erase_relu: bool = False,
        erase_relu_ratio: float = 1.0,
        se: bool = False,
        se_reduction: int = 16,
        zero_init_residual: bool = False,
        fc_init_std: float | None = None,
    ) -> None:
        super().__init__()
        check_norm(norm)
        if fc_init_std is not None and fc_init_std <= 0:
            raise ValueError(f"fc_init_std must be positive, got {fc_init_std}")
        if depth not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {depth}")
        block, layout = RESNET_LAYOUTS[depth]
        if block == "basic" and (cardinality != 1 or base_width != 64):
            raise ValueError("basic-block ResNets (18/34) need cardinality=1 and base_width=64")
        if cardinality < 1 or base_width < 1:
            raise ValueError("cardinality and base_width must be positive")
        if zero_init_residual and norm == "none":
            raise ValueError("zero_init_residual needs a norm layer to zero (norm='bn' or 'gn')")
        expansion = 1 if block == "basic" else 4

        def make_branch(stage: int, in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
            planes = out_ch // expansion
            if block == "basic":
                return basic_branch(in_ch, planes, stride, norm, last_norm=True)
            # torchvision's width rule: int(planes * base_width / 64) * groups.
            inner = int(planes * base_width / 64) * cardinality
            return grouped_bottleneck(in_ch, inner, out_ch, stride, cardinality, norm)

        self.stem = _imagenet_stem(in_channels, 64, norm)
        self.stages, in_ch = post_act_stages(
            64,
            [(count, 64 * 2**stage * expansion) for stage, count in enumerate(layout)],
            make_branch,
            norm,
            erase_relu_ratio=erase_relu_ratio if erase_relu else None,
            se=se_reduction if se else 0,
        )
        self.set_head(in_ch, num_classes)

        init_weights(self, "fan_out")
        if fc_init_std is None:
            self.fc.reset_parameters()  # torchvision keeps nn.Linear's default init for the head
        else:  # NR's ResNet: N(0, std^2) weight, zero bias (models/imagenet/resnet.py:153-155)
            nn.init.normal_(self.fc.weight, 0.0, fc_init_std)
        if zero_init_residual:
            # Goyal et al. 2017: each block starts as the identity, which eases early training.
            for unit in self.stages:
                nn.init.zeros_(unit.branch[-1].weight)


class ImageNetVGG(nn.Module):
    """VGG-11/13/16/19: conv stacks, max-pools, adaptive 7x7 pool, FC classifier (4096 wide).

    `hidden` narrows the classifier, e.g. for Tiny ImageNet where 4096 units overfit.
    """

    image_size = 224  # the input side it is designed for (`cnnlab models`)

    def __init__(
        self,
        depth: int = 16,
        in_channels: int = 3,
        num_classes: int = 1000,
        norm: str = "none",
        erase_relu: bool = False,
        erase_relu_ratio: float = 1.0,
        dropout: float = 0.5,
        hidden: int = 4096,
    ) -> None:
        super().__init__()
        check_norm(norm)
        if hidden < 1:
            raise ValueError(f"hidden (classifier width) must be positive, got {hidden}")
        if depth not in VGG_LAYOUTS:
            raise ValueError(f"VGG depth must be one of {sorted(VGG_LAYOUTS)}, got {depth}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        layout = VGG_LAYOUTS[depth]
        # The five conv groups between poolings are VGG's "modules" for EraseReLU.
        erased = erased_modules(len(layout), erase_relu_ratio) if erase_relu else set()

        layers: list[nn.Module] = []
        in_ch = in_channels
        for stage, (count, width) in enumerate(zip(layout, VGG_WIDTHS)):
            for i in range(count):
                # torchvision keeps the conv bias even with BN; the counts depend on it.
                layers += [
                    nn.Conv2d(in_ch, width, 3, padding=1),
                    norm2d(norm, width),
                    relu(erased=stage in erased and i == count - 1),
                ]
                in_ch = width
            layers.append(nn.MaxPool2d(2, stride=2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(7)
        self.classifier = nn.Sequential(
            nn.Linear(in_ch * 7 * 7, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )
        init_weights(self.features, "fan_out")
        for m in self.classifier:
            if isinstance(m, nn.Linear):  # torchvision: N(0, 0.01) weights, zero bias
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


# NR models/imagenet/vgg.py: a 7x7 stride-2 conv, one more conv of the first width, a 3x3
# stride-2 max-pool ("IM"), then 128 x2, 256 x4, 512 x4, 512 x4 with 2x2 max-pools between:
# 16 convs, which the NR README calls VGG-16. No FC layers: a classifier on pooled features.
# Entries are multiples of base_width.
NR_VGG16_LAYOUT = (1, "IM", 2, 2, "M", 4, 4, 4, 4, "M", 8, 8, 8, 8, "M", 8, 8, 8, 8)


class NRImageNetVGG(nn.Module):
    """Neural Rejuvenation's ImageNet "VGG-16": bias-free conv-BN-ReLU, global pool, one FC.

    Widths are multiples of `base_width` (64 in NR): 64, 64, 128, 128, 256 x4, 512 x8. BN
    scales start at 0.5, the classifier is N(0, 0.01^2) (Qiao et al. 2019).
    """

    image_size = 224  # the input side it is designed for (`cnnlab models`)

    def __init__(self, in_channels: int = 3, num_classes: int = 1000, base_width: int = 64) -> None:
        super().__init__()
        if base_width < 1:
            raise ValueError(f"base_width must be positive, got {base_width}")
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, base_width, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(base_width),
            nn.ReLU(inplace=True),
        ]
        ch = base_width
        for item in NR_VGG16_LAYOUT:
            if item == "IM":
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            elif item == "M":
                layers.append(nn.MaxPool2d(2, stride=2))
            else:
                width = base_width * item
                layers += [
                    nn.Conv2d(ch, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width),
                    nn.ReLU(inplace=True),
                ]
                ch = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(ch, num_classes)
        init_weights(self, "fan_out")
        for m in self.modules():
            if isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 0.5)
        nn.init.normal_(self.fc.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.fc(self.head(self.features(x)))

    def unit_graph(self) -> UnitGraph:
        """Describe the Conv+BN units to Neural Rejuvenation: a chain."""
        builder = GraphBuilder()
        return builder.graph("fc", builder.chain(self.features, "features", ()))


class ImageNetDenseNet(nn.Module):
    """DenseNet-BC for ImageNet: 7x7 stem, the CIFAR family's bottleneck units and transitions.

    `post_activation=True` is Neural Rejuvenation's DenseNet (Qiao et al. 2019, NR
    models/imagenet/densenet.py): conv-BN-ReLU units and transitions, no norm before the
    classifier, He fan-out convs and a classifier drawn from N(0, 0.01^2).
    """

    image_size = 224  # the input side it is designed for (`cnnlab models`)

    def __init__(
        self,
        block_config: Sequence[int] = (6, 12, 24, 16),
        growth_rate: int = 32,
        init_features: int = 64,
        compression: float = 0.5,
        in_channels: int = 3,
        num_classes: int = 1000,
        norm: str = "bn",
        erase_relu: bool = False,
        erase_relu_ratio: float = 1.0,
        post_activation: bool = False,
    ) -> None:
        super().__init__()
        check_norm(norm)
        if not block_config or min(block_config) < 1:
            raise ValueError(f"block_config needs positive unit counts, got {list(block_config)}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"compression must lie in (0, 1], got {compression}")

        layers: list[nn.Module] = [_imagenet_stem(in_channels, init_features, norm)]
        ch = init_features
        for b, count in enumerate(block_config):
            erased = erased_modules(count, erase_relu_ratio) if erase_relu else set()
            for i in range(count):
                layers.append(
                    DenseUnit(
                        ch,
                        growth_rate,
                        bottleneck=True,
                        norm=norm,
                        post_activation=post_activation,
                        erase_last_relu=i in erased,
                        dropout=0.0,
                    )
                )
                ch += growth_rate
            if b < len(block_config) - 1:
                out = int(ch * compression)
                layers.append(Transition(ch, out, norm, post_activation=post_activation))
                ch = out
        self.features = nn.Sequential(*layers)
        # Post-activation units already end in norm-ReLU, so NR's classifier follows directly.
        pre_head = [] if post_activation else [norm2d(norm, ch), nn.ReLU(inplace=True)]
        self.head = nn.Sequential(*pre_head, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(ch, num_classes)
        # torchvision's DenseNet: kaiming_normal_ with its default fan_in mode, default
        # nn.Linear weights with a zero bias. NR's: fan_out, classifier N(0, 0.01^2).
        init_weights(self, "fan_out" if post_activation else "fan_in")
        if post_activation:
            nn.init.normal_(self.fc.weight, 0.0, 0.01)
        else:
            self.fc.reset_parameters()
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.fc(self.head(self.features(x)))

    def unit_graph(self) -> UnitGraph:
        """Describe the Conv+BN units to NR; NR's ImageNet DenseNet widens by sqrt(all/live)."""
        body = [(f"features.{i}", m) for i, m in enumerate(self.features) if i > 0]
        stem = ("features.0", self.features[0])
        return dense_unit_graph(stem, body, self.head, integer_rate=False)


# Parameter counts (1000 classes) equal torchvision's documented num_params exactly: resnet18
# 11.7M, 34 21.8M, 50 25.6M, 101 44.5M, 152 60.2M, resnext50_32x4d 25.0M, vgg16_bn 138.4M,
# densenet121 8.0M (all values pinned in tests/test_zoo_b.py). GN twins equal their BN ones.
for _depth in RESNET_LAYOUTS:
    register_variant(
        f"resnet{_depth}", ImageNetResNet, f"ImageNet ResNet-{_depth} (v1.5)", depth=_depth
    )
    # Neural Rejuvenation's ImageNet ResNets (joe-siyuan-qiao/NeuralRejuvenation-CVPR19@8f1f2aa
    # models/imagenet/resnet.py): torchvision's layout and conv init, classifier N(0, 0.01^2).
    register_variant(
        f"resnet{_depth}_nr",
        ImageNetResNet,
        f"Neural Rejuvenation ImageNet ResNet-{_depth}: classifier drawn from N(0, 0.01^2)",
        depth=_depth,
        fc_init_std=0.01,
    )
# The plain names keep `norm` as an option; the *_bn / *_gn names fix it.
register_variant(
    "resnext50_32x4d",
    ImageNetResNet,
    "ImageNet ResNeXt-50 32x4d",
    depth=50,
    cardinality=32,
    base_width=4,
)
register_variant(
    "resnext50_32x4d_gn",
    ImageNetResNet,
    "ImageNet ResNeXt-50 32x4d with GroupNorm (EraseReLU's GN row resnext50_32_4_gn)",
    depth=50,
    cardinality=32,
    base_width=4,
    norm="gn",
)
for _depth in VGG_LAYOUTS:
    register_variant(f"vgg{_depth}", ImageNetVGG, f"ImageNet VGG-{_depth}", depth=_depth)
    for _norm in ("bn", "gn"):
        register_variant(
            f"vgg{_depth}_{_norm}",
            ImageNetVGG,
            f"ImageNet VGG-{_depth} with {_norm.upper()}",
            depth=_depth,
            norm=_norm,
        )
register_variant(
    "densenet121",
    ImageNetDenseNet,
    "ImageNet DenseNet-121 (k=32)",
    block_config=(6, 12, 24, 16),
    growth_rate=32,
    init_features=64,
)
register_variant(
    "densenet121_nr",
    ImageNetDenseNet,
    "Neural Rejuvenation ImageNet DenseNet-121 (k=32), conv-BN-ReLU units",
    block_config=(6, 12, 24, 16),
    growth_rate=32,
    init_features=64,
    post_activation=True,
)
register_variant(
    "vgg16_nr",
    NRImageNetVGG,
    "Neural Rejuvenation ImageNet VGG-16: 16 bias-free conv-BN-ReLU, global pool, one FC",
)
