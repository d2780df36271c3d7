"""DenseNet and DenseNet-BC for CIFAR (Huang et al. 2017), plus the Neural Rejuvenation DenseNet.

Three dense blocks of n units; each unit appends `growth` channels to its input. Basic units are
norm-ReLU-conv3x3 (depth = 3n+4); bottleneck units are norm-ReLU-conv1x1(4k)-norm-ReLU-conv3x3(k)
(depth = 6n+4). Transitions (after blocks 1 and 2 only) are norm-ReLU-conv1x1-avgpool2, keeping
floor(compression * channels). Stem: conv3x3 to 16 channels (2k with bottlenecks); head:
norm-ReLU-pool-FC (Huang et al. 2017, Section 3, Implementation Details).

`post_activation=True` builds the Neural Rejuvenation variant (Qiao et al. 2019, NR
models/cifar/densenet.py): every conv is followed by its own norm and ReLU (conv-BN-ReLU, so BN's
scale gates that conv's output channels, which NR's sparsity test needs), the stem is conv-BN-ReLU,
transitions are conv-BN-ReLU-avgpool and the classifier sits right after the last block.

EraseReLU (Dong et al. 2017, as cnnlab reads it): each unit is a module and loses its last ReLU --
the one before its last conv in a pre-activation unit, the one after its last norm in a
post-activation unit -- in ratio*n units of each block (halves up, layers.erased_modules),
spread evenly, last included.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.models.dense_blocks import DenseUnit, Transition, dense_unit_graph
from cnnlab.models.layers import check_norm, conv3x3, erased_modules, init_weights, norm2d
from cnnlab.models.unit_graph import UnitGraph
from cnnlab.registry import register_variant


class DenseNet(nn.Module):
    """CIFAR DenseNet / DenseNet-BC: stem, three dense blocks with two transitions, head, FC."""

    def __init__(
        self,
        depth: int = 100,
        growth: int = 12,
        bottleneck: bool = True,
        compression: float = 0.5,
        in_channels: int = 3,
        num_classes: int = 10,
        stem_width: int | None = None,
        dropout: float = 0.0,
        norm: str = "bn",
        post_activation: bool = False,
        fc_init_std: float | None = None,
        erase_relu: bool = False,
        erase_relu_ratio: float = 1.0,
        classifier_init: str = "kaiming",
    ) -> None:
        super().__init__()
        check_norm(norm)
        per_unit = 2 if bottleneck else 1
        n, rem = divmod(depth - 4, 3 * per_unit)
        if rem or n < 1:
            kind = "bottleneck" if bottleneck else "basic"
            raise ValueError(
                f"DenseNet ({kind}) depth must be {3 * per_unit}n+4 "
                f"(e.g. {3 * per_unit + 4}, {30 * per_unit + 4}), got {depth}"
            )
        if growth < 1:
            raise ValueError(f"DenseNet growth must be >= 1, got {growth}")
        if not 0.0 < compression <= 1.0:
            raise ValueError(f"DenseNet compression must lie in (0, 1], got {compression}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout}")
        erased = erased_modules(n, erase_relu_ratio) if erase_relu else set()

        ch = stem_width or (2 * growth if bottleneck else 16)
        stem: list[nn.Module] = [conv3x3(in_channels, ch)]
        if post_activation:
            stem += [norm2d(norm, ch), nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*stem)
        layers: list[nn.Module] = []
        for block in range(3):
            for i in range(n):
                layers.append(
                    DenseUnit(ch, growth, bottleneck, norm, post_activation, i in erased, dropout)
                )
                ch += growth
            if block < 2:
                out_ch = int(compression * ch)
                layers.append(Transition(ch, out_ch, norm, post_activation))
                ch = out_ch
        self.blocks = nn.Sequential(*layers)
        # Post-activation units already end in norm-ReLU, so NR's classifier follows directly.
        pre_head = [] if post_activation else [norm2d(norm, ch), nn.ReLU(inplace=True)]
        self.head = nn.Sequential(*pre_head, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        # NR classifies with a 1x1 conv and then averages; pooling first is the same function.
        self.fc = nn.Linear(ch, num_classes)
        init_weights(self, "fan_out", classifier_init)
        if fc_init_std is not None:
            nn.init.normal_(self.fc.weight, std=fc_init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits for a batch of images."""
        return self.fc(self.head(self.blocks(self.stem(x))))

    def unit_graph(self) -> UnitGraph:
        """Describe the Conv+BN units to NR; NR's CIFAR DenseNet widens by int(sqrt(all/live))."""
        body = [(f"blocks.{i}", m) for i, m in enumerate(self.blocks)]
        return dense_unit_graph(("stem", self.stem), body, self.head, integer_rate=True)


# Huang et al. 2017, Table 2 (CIFAR): DenseNet L=40 k=12 1.0M, L=100 k=12 7.0M, L=100 k=24 27.2M;
# DenseNet-BC L=100 k=12 0.8M, L=250 k=24 15.3M, L=190 k=40 25.6M.
for _depth, _growth, _bc in (
    (40, 12, False),
    (100, 12, False),
    (100, 24, False),
    (100, 12, True),
    (250, 24, True),
    (190, 40, True),
):
    _name = f"densenet{'_bc' if _bc else ''}{_depth}_k{_growth}"
    register_variant(
        _name,
        DenseNet,
        f"DenseNet{'-BC' if _bc else ''} L={_depth} k={_growth} for CIFAR",
        depth=_depth,
        growth=_growth,
        bottleneck=_bc,
        compression=0.5 if _bc else 1.0,
    )

# Neural Rejuvenation's "DenseNet-100-40": its README runs `-a densenet --depth 100
# --growthRate 40`, i.e. bottleneck units, compression 2 and a 2k stem, all conv-BN-ReLU, with the
# classifier initialised N(0, 0.01^2). Built here it has 8.27M parameters (CIFAR-10); the README's
# 4.12M (4.31M on CIFAR-100) counts the network after rejuvenation without cross connections.
register_variant(
    "densenet100_k40_nr",
    DenseNet,
    "Neural Rejuvenation DenseNet-BC-100, k=40, conv-BN-ReLU units",
    defaults={"fc_init_std": 0.01},
    depth=100,
    growth=40,
    bottleneck=True,
    compression=0.5,
    post_activation=True,
)
