"""The rebuild (Qiao et al. 2019): drop dead channels, widen every unit, copy survivors.

`rejuvenate` turns a utilisation report into a *plan* (plain data: widths and splits per unit)
and applies it; `apply_architecture` replays a plan on a freshly built network, which is how
a checkpoint taken after the rebuild is resumed or evaluated. Sizes follow the official
`nr.Conv2d.rejuvenate`: a unit gets int(live_out * r) channels, its input the widths of its
sources; a fixed unit keeps all its C channels (int(C * r)), like every other unit feeding
the same sum, even when its branch died wholly (a departure: the official marks it wholly
dead and deletes it, and then cannot size what follows; docs/nr_fidelity.md).
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.methods.rejuvenation.graph import unit_graph
from cnnlab.methods.rejuvenation.utilisation import Utilisation
from cnnlab.models.nr_layers import SplitConv2d, TwoHeadLinear
from cnnlab.models.unit_graph import SplitsConcat, UnitGraph

NEW_SCALE = 0.5  # BN scale of rejuvenated channels (official: new_bn.weight.fill_(0.5))
NEW_FC_STD = 0.01  # std of the classifier columns that read new channels (official: 0.01)


def _set_submodule(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, module)


def apply_architecture(model: nn.Module, plan: dict[str, Any]) -> nn.Module:
    """Give `model` the shapes of a rejuvenation plan, freshly initialised; return it.

    New convs are He fan-out normal, new BN has scale 0.5 and shift 0, the classifier is
    N(0, 0.01^2) with zero bias. `rejuvenate` then copies the survivors over this.
    """
    if plan.get("method") != "rejuvenation":
        raise UserError(f"unknown architecture change {plan.get('method')!r} in the checkpoint")
    for u in plan["units"]:
        old_conv = model.get_submodule(u["conv"])
        old_bn = model.get_submodule(u["bn"])
        conv = SplitConv2d(
            u["in"], u["out"], old_conv.kernel_size, old_conv.stride, old_conv.padding,
            u["live_in"], u["live_out"], plan["mode"],
        )  # fmt: skip
        fan_out = conv.kernel_size[0] * conv.kernel_size[1] * u["out"]
        nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
        bn = nn.BatchNorm2d(u["out"], eps=old_bn.eps, momentum=old_bn.momentum)
        nn.init.constant_(bn.weight, NEW_SCALE)
        device = old_conv.weight.device
        _set_submodule(model, u["conv"], conv.to(device))
        _set_submodule(model, u["bn"], bn.to(device))
    c = plan["classifier"]
    old_fc = model.get_submodule(c["name"])
    fc = TwoHeadLinear(c["in"], old_fc.out_features, c["live_in"])
    nn.init.normal_(fc.weight, 0.0, NEW_FC_STD)
    nn.init.zeros_(fc.bias)
    _set_submodule(model, c["name"], fc.to(old_fc.weight.device))
    for join in plan.get("concats", []):
        module = model.get_submodule(join["module"])
        if not isinstance(module, SplitsConcat):
            raise UserError(f"{join['module']} cannot split its concatenation (set_live_split)")
        module.set_live_split(tuple(join["live"]))
    return model


def _survivors(mask: torch.Tensor, scale: torch.Tensor, fixed: bool) -> torch.Tensor:
    # A fixed unit keeps every channel, even when wholly dead: the sum it feeds has that width
    # on every side. Of any other wholly dead unit cnnlab keeps the strongest channel. The
    # official code deletes both and then cannot size what follows (its rejuvenate returns
    # None), see docs/nr_fidelity.md.
    if fixed:
        return torch.arange(len(mask))
    idx = mask.nonzero().flatten()
    return idx if len(idx) else scale.abs().argmax().reshape(1).cpu()


def _input_survivors(
    model: nn.Module, graph: UnitGraph, keep: list[torch.Tensor], sources: tuple[int, ...]
) -> torch.Tensor:
    # Index of the survivors in the old concatenation of `sources` (each offset by the widths
    # before it); in the new one they come first, in the same order.
    parts, offset = [], 0
    for s in sources:
        parts.append(keep[s] + offset)
        offset += model.get_submodule(graph.units[s].bn).num_features
    return torch.cat(parts)


def _plan(
    model: nn.Module, graph: UnitGraph, keep: list[torch.Tensor], rate: float, mode: str
) -> dict[str, Any]:
    widths = [max(int(len(k) * rate), len(k) + 1) for k in keep]
    units = []
    for i, u in enumerate(graph.units):
        in_width = (
            sum(widths[s] for s in u.sources)
            if u.sources
            else model.get_submodule(u.conv).in_channels
        )
        live_in = sum(len(keep[s]) for s in u.sources)
        units.append(
            {"conv": u.conv, "bn": u.bn, "in": in_width, "out": widths[i],
             "live_in": live_in, "live_out": len(keep[i])}
        )  # fmt: skip
    src = graph.classifier_sources
    return {
        "method": "rejuvenation",
        "mode": mode,
        "units": units,
        "classifier": {
            "name": graph.classifier,
            "in": sum(widths[s] for s in src),
            "live_in": sum(len(keep[s]) for s in src),
        },
        "concats": [
            {"module": c.module, "live": [sum(len(keep[s]) for s in c.inputs), len(keep[c.branch])]}
            for c in graph.concats
        ],
    }


@torch.no_grad()
def rejuvenate(
    model: nn.Module, report: Utilisation, mode: str = "separate"
) -> tuple[nn.Module, dict[str, Any]]:
    """Return (the rebuilt copy of `model`, its plan) from a utilisation report of `model`.

    Expansion r = sqrt(all / live) (DenseNet on CIFAR: int of it); at least one new channel
    per unit.
    """
    graph = unit_graph(model)
    rate = math.sqrt(report.all_weights / max(report.live_weights, 1.0))
    if graph.integer_rate:
        rate = float(int(rate))
    keep = [
        _survivors(m, model.get_submodule(u.bn).weight, u.fixed)
        for u, m in zip(graph.units, report.masks, strict=True)
    ]
    plan = _plan(model, graph, keep, rate, mode)
    new = apply_architecture(copy.deepcopy(model), plan)
    for i, u in enumerate(graph.units):
        old_w = model.get_submodule(u.conv).weight
        out_idx = keep[i].to(old_w.device)
        lo = len(out_idx)
        w = new.get_submodule(u.conv).weight
        if not u.sources:
            w[:lo] = old_w[out_idx]
        else:
            in_idx = _input_survivors(model, graph, keep, u.sources).to(old_w.device)
            li = len(in_idx)
            w[:lo, :li] = old_w[out_idx][:, in_idx]
            w[:lo, li:] = 0  # the cross blocks start at zero
            w[lo:, :li] = 0
        old_bn, bn = model.get_submodule(u.bn), new.get_submodule(u.bn)
        for name in ("weight", "bias", "running_mean", "running_var"):
            getattr(bn, name)[:lo] = getattr(old_bn, name)[out_idx]
        bn.num_batches_tracked.copy_(old_bn.num_batches_tracked)
    old_fc, fc = model.get_submodule(graph.classifier), new.get_submodule(graph.classifier)
    in_idx = _input_survivors(model, graph, keep, graph.classifier_sources)
    fc.weight[:, : len(in_idx)] = old_fc.weight[:, in_idx.to(old_fc.weight.device)]
    fc.bias.copy_(old_fc.bias)
    return new, plan


def separate_mode_params(model: nn.Module, plan: dict[str, Any]) -> int:
    """Return the parameters a rebuilt net uses without cross connections (cross blocks unused).

    This is how the NR README counts its networks (VGG-19 9.99M, ResNet-164 0.88M).
    """
    unused = 0
    for u in plan["units"]:
        if u["live_in"]:
            taps = model.get_submodule(u["conv"]).weight[0, 0].numel()
            new_out, new_in = u["out"] - u["live_out"], u["in"] - u["live_in"]
            unused += (u["live_out"] * new_in + new_out * u["live_in"]) * taps
    return sum(p.numel() for p in model.parameters()) - unused
