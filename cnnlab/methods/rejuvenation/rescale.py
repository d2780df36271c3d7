"""Neural rescaling (Qiao et al. 2019, NR's `--nr-bn-target`, official `bn_restore`).

As the official `nr.Conv2d.bn_restore`: every conv multiplies its input channels by b / t,
where b is min(|gamma|, t) of the non-fixed unit producing that channel and 1 for the image
or a fixed unit (the official passes ones for both); a non-fixed unit then sets every
|gamma| <= t to +-t and divides its shift by b / t. For a non-fixed source this is the same
function under ReLU; for the image or a fixed source it is a uniform 1/t that the next BN
absorbs in training (batch statistics) but that its running statistics do not know until
they adapt. The classifier (official `ConvLinear.bn_restore`) multiplies by b without / t,
so it is not the same function there: the logits less the bias scale by t wherever a
non-fixed unit feeds the classifier (VGG, DenseNet), as in the official code.
"""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.methods.rejuvenation.graph import unit_graph
from cnnlab.models.nr_layers import SplitConv2d


def _in_layout(
    values: list[torch.Tensor], live: list[int], sources: tuple[int, ...]
) -> torch.Tensor:
    # A conv's input channels: its sources' outputs, survivors of all sources first (a rebuilt
    # DenseNet concatenates them so); with nothing rebuilt (live 0) simply in source order.
    survivors = [values[s][: live[s]] for s in sources]
    return torch.cat(survivors + [values[s][live[s] :] for s in sources])


@torch.no_grad()
def neural_rescale(model: nn.Module, target: float) -> None:
    """Raise every non-fixed BN scale below `target` to it, compensating as NR's code does.

    Departure: a scale exactly 0 is left alone (the official divides its shift by 0).
    """
    graph = unit_graph(model)
    passed: list[torch.Tensor] = []  # per unit: b of its output channels (1 for fixed units)
    live: list[int] = []
    for u in graph.units:
        conv, bn = model.get_submodule(u.conv), model.get_submodule(u.bn)
        live.append(conv.live_out if isinstance(conv, SplitConv2d) else 0)
        in_b = (
            _in_layout(passed, live, u.sources)
            if u.sources
            else torch.ones_like(conv.weight[0, :, 0, 0])
        )
        conv.weight.mul_((in_b / target).view(1, -1, 1, 1))
        if u.fixed:  # a fixed unit's scales are not sparsified; it keeps them and passes 1
            b = torch.ones_like(bn.weight)
        else:
            scale = bn.weight.abs()
            b = torch.full_like(scale, target)  # |gamma| > t (and gamma = 0): left as they are
            rescaled = (scale > 0) & (scale <= target)
            b[rescaled] = scale[rescaled]
            bn.bias.div_(b / target)
            bn.weight[rescaled] = torch.sign(bn.weight[rescaled]) * target
        passed.append(b)
    fc = model.get_submodule(graph.classifier)
    fc.weight.mul_(_in_layout(passed, live, graph.classifier_sources).view(1, -1))
