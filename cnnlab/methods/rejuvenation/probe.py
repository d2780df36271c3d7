"""NR's parameter utilisation as a dead-unit probe (`nr_utilisation`, docs/methods.md).

`nr_utilisation_probe(cfg)` builds it from the probes' config section, for the probe registry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.methods.probe import Probe, ProbeResult
from cnnlab.methods.rejuvenation.utilisation import inspect_utilisation
from cnnlab.models.nr_layers import SplitConv2d
from cnnlab.models.unit_graph import DescribesUnits

if TYPE_CHECKING:
    from cnnlab.methods.probes import ProbesSettings


class NRUtilisation(Probe):
    """Neural Rejuvenation's parameter utilisation (Qiao et al. 2019), where it is defined.

    Per layer: the share of each Conv+BN unit's output channels that are live; summary: the
    share of conv weights whose input and output channels are both live. Only the networks
    that describe their units (models/unit_graph.py) and can be rebuilt are measured.
    """

    name = "nr_utilisation"

    def __init__(self, live_threshold: float) -> None:
        self.live_threshold = live_threshold

    def measure(self, model: nn.Module, batches: list[torch.Tensor]) -> ProbeResult:
        """Read the BN scales of every unit; no reading for networks NR does not cover."""
        # A rebuilt network's split convs hold blocks that separate mode never uses, so NR's
        # ratio is defined only before the rebuild (NR itself stops measuring there too).
        if not isinstance(model, DescribesUnits) or any(
            isinstance(m, SplitConv2d) for m in model.modules()
        ):
            return ProbeResult({}, None)
        try:
            graph = model.unit_graph()
        except UserError:
            return ProbeResult({}, None)  # a configuration NR does not cover
        report = inspect_utilisation(model, self.live_threshold)
        live = report.live_channels(graph)
        return ProbeResult({k: n / total for k, (n, total) in live.items()}, report.ratio)


def nr_utilisation_probe(cfg: ProbesSettings) -> Probe:
    """Return the probe with the live-channel threshold of the `probes` config section."""
    return NRUtilisation(cfg.nr_live_threshold)
