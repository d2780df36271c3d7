"""Dense units and transitions shared by the CIFAR and ImageNet DenseNets (models/densenet.py,
models/imagenet.py), and their description to Neural Rejuvenation (models/unit_graph.py).

A unit is pre-activation (norm-ReLU-conv) or, with `post_activation`, conv-norm-ReLU (NR's
DenseNets); EraseReLU removes its last ReLU.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnnlab.errors import UserError
from cnnlab.models.layers import conv1x1, conv3x3, norm2d
from cnnlab.models.unit_graph import Concat, GraphBuilder, UnitGraph


def _unit_layers(
    in_ch: int, growth: int, bottleneck: bool, norm: str, post: bool, erase: bool, dropout: float
) -> list[nn.Module]:
    """Return the layers of one dense unit's new-feature branch, in order."""
    widths = (
        [(in_ch, 4 * growth, 1), (4 * growth, growth, 3)] if bottleneck else [(in_ch, growth, 3)]
    )
    layers: list[nn.Module] = []
    for i, (cin, cout, k) in enumerate(widths):
        conv = conv3x3(cin, cout) if k == 3 else conv1x1(cin, cout)
        last = i == len(widths) - 1
        if post:
            # conv-norm-ReLU; the ReLU ends the unit, so it is the one EraseReLU removes.
            act = nn.Identity() if last and erase else nn.ReLU(inplace=True)
            layers += [conv, norm2d(norm, cout), act]
        else:
            # Not in place on the unit's input: with norm='none' it would overwrite the features
            # that the concatenation keeps.
            act = nn.Identity() if last and erase else nn.ReLU(inplace=i > 0)
            layers += [norm2d(norm, cin), act, conv]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
    return layers


class DenseUnit(nn.Module):
    """One dense unit: compute `growth` new channels and concatenate them to the input."""

    def __init__(
        self,
        in_ch: int,
        growth: int,
        bottleneck: bool,
        norm: str,
        post_activation: bool,
        erase_last_relu: bool,
        dropout: float,
    ) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            *_unit_layers(
                in_ch, growth, bottleneck, norm, post_activation, erase_last_relu, dropout
            )
        )
        # Set by Neural Rejuvenation (Qiao et al. 2019): (survivors in x, survivors in branch(x)).
        # Survivors and newcomers are concatenated separately, so every feature map stays
        # [all survivors, all newcomers], the layout the split convs expect.
        self.live_split: tuple[int, int] | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return [x, branch(x)] along the channel axis (survivors first after rejuvenation)."""
        y = self.branch(x)
        if self.live_split is None:
            return torch.cat([x, y], dim=1)
        lx, ly = self.live_split
        return torch.cat([x[:, :lx], y[:, :ly], x[:, lx:], y[:, ly:]], dim=1)

    def set_live_split(self, live: tuple[int, int]) -> None:
        """Concatenate survivors and newcomers separately from now on (models/unit_graph.py)."""
        self.live_split = (int(live[0]), int(live[1]))


class Transition(nn.Module):
    """Between dense blocks: norm-ReLU-conv1x1 (or conv-norm-ReLU), then 2x2 average pooling."""

    def __init__(self, in_ch: int, out_ch: int, norm: str, post_activation: bool) -> None:
        super().__init__()
        if post_activation:
            layers = [conv1x1(in_ch, out_ch), norm2d(norm, out_ch), nn.ReLU(inplace=True)]
        else:
            # The block output is a fresh concatenation, so an in-place ReLU is safe here.
            layers = [norm2d(norm, in_ch), nn.ReLU(inplace=True), conv1x1(in_ch, out_ch)]
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the compressed, spatially halved features."""
        # ceil_mode keeps odd maps (a 28x28 input reaches 7x7) from losing their last row.
        return F.avg_pool2d(self.body(x), 2, ceil_mode=True)


def dense_unit_graph(
    stem: tuple[str, nn.Sequential],
    body: list[tuple[str, nn.Module]],
    head: nn.Sequential,
    integer_rate: bool,
) -> UnitGraph:
    """Describe a conv-BN-ReLU DenseNet (stem, dense units and transitions) to NR.

    The features at any point are the concatenation of some units' outputs: a dense unit
    appends its last conv, a transition replaces them by its own conv.
    """
    if not isinstance(head[0], nn.AdaptiveAvgPool2d):
        raise UserError(
            "rejuvenation needs conv-BN-ReLU DenseNet units (densenet100_k40_nr, densenet121_nr, "
            "or model.post_activation=true): a pre-activation BN does not gate its conv's outputs"
        )
    builder = GraphBuilder()
    features = builder.chain(stem[1], stem[0], ())
    concats = []
    for path, module in body:
        if isinstance(module, DenseUnit):
            (branch,) = builder.chain(module.branch, f"{path}.branch", features)
            concats.append(Concat(path, features, branch))
            features = (*features, branch)
        else:
            features = builder.chain(module.body, f"{path}.body", features)
    return builder.graph("fc", features, tuple(concats), integer_rate)
