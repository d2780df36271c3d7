"""NR's utilisation (Qiao et al. 2019): live channels per unit, share of live conv weights.

Follows the official `nr.Conv2d.inspect` (models/nr_modules/nrlayers.py): a unit's channel is
dead by `analysis.dead.dead_scale_mask`; the unit is wholly dead when none of its inputs is live
or its largest scale is below `all_dead_threshold`; a fixed unit that is not wholly dead is all
live; and whatever reads a fixed unit reads the residual sum it feeds, which is all live
(`CAddList.inspect` returns ones), so a dead branch does not cascade into later blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.analysis.dead import dead_scale_mask
from cnnlab.methods.rejuvenation.graph import conv_output_pixels, unit_graph
from cnnlab.models.unit_graph import UnitGraph


@dataclass(frozen=True)
class Utilisation:
    """What `inspect_utilisation` measured: the ratio, its counts, and per-unit live masks."""

    ratio: float
    live_weights: float
    all_weights: float
    masks: tuple[torch.Tensor, ...]  # bool, one per unit, True = live output channel
    all_dead: tuple[bool, ...]

    def live_channels(self, graph: UnitGraph) -> dict[str, tuple[int, int]]:
        """Return {conv path: (live channels, channels)} per unit."""
        return {
            u.conv: (int(m.sum()), len(m)) for u, m in zip(graph.units, self.masks, strict=True)
        }


def input_mask(
    graph: UnitGraph, masks: list[torch.Tensor], sources: tuple[int, ...]
) -> torch.Tensor:
    """Return the live mask of the concatenated `sources` (a fixed source: its sum, all live)."""
    return torch.cat(
        [torch.ones_like(masks[s]) if graph.units[s].fixed else masks[s] for s in sources]
    )


@torch.no_grad()
def inspect_utilisation(
    model: nn.Module,
    live_threshold: float = 0.01,
    all_dead_threshold: float = 1e-3,
    input_shape: tuple[int, ...] | None = None,
) -> Utilisation:
    """Measure live channels and utilisation (by FLOPs when `input_shape` is given).

    The classifier is not counted (as NR's ConvLinear.inspect).
    """
    graph = unit_graph(model)
    pixels = conv_output_pixels(model, input_shape) if input_shape is not None else {}
    masks: list[torch.Tensor] = []
    all_dead: list[bool] = []
    live_w = all_w = 0.0
    for u in graph.units:
        conv = model.get_submodule(u.conv)
        scale = model.get_submodule(u.bn).weight.detach().float().cpu()
        in_mask = (
            input_mask(graph, masks, u.sources)
            if u.sources
            else torch.ones(conv.in_channels, dtype=torch.bool)
        )
        dead_channels = dead_scale_mask(scale, live_threshold, all_dead_threshold)
        # With rel < 1 the largest scale is live unless the whole layer is below the floor.
        dead = not bool(in_mask.any()) or bool(dead_channels.all())
        if dead:
            out_mask = torch.zeros_like(scale, dtype=torch.bool)
        elif u.fixed:
            out_mask = torch.ones_like(scale, dtype=torch.bool)
        else:
            out_mask = ~dead_channels
        per_pair = conv.weight[0, 0].numel() * pixels.get(u.conv, 1)
        live_w += int(out_mask.sum()) * int(in_mask.sum()) * per_pair
        all_w += conv.weight.shape[0] * conv.weight.shape[1] * per_pair
        masks.append(out_mask)
        all_dead.append(dead)
    ratio = live_w / all_w if all_w else 1.0
    return Utilisation(ratio, live_w, all_w, tuple(masks), tuple(all_dead))


def parameter_utilisation(model: nn.Module, live_threshold: float = 0.01) -> float:
    """Return the share of conv weights whose input and output channels are both live."""
    return inspect_utilisation(model, live_threshold).ratio


def live_channels(model: nn.Module, live_threshold: float = 0.01) -> dict[str, tuple[int, int]]:
    """Return {conv path: (live channels, channels)} of every Conv+BN unit."""
    return inspect_utilisation(model, live_threshold).live_channels(unit_graph(model))
