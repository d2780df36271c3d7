"""The probe interface: a per-epoch measurement of a model, registered by name.

A probe is registered with `cnnlab.register_probe(name, factory)`, where `factory(settings)`
gets the run's `probes` config section and returns a `Probe`. Every registered probe runs at
each epoch end while `probes.enabled` (cnnlab/methods/probes.py); a probe with nothing to
measure on a model (no binary convs, a network NR does not cover) returns no summary.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class ProbeResult:
    """One probe's reading: a value per layer and one summary value for the whole model."""

    per_layer: dict[str, float]
    summary: float | None


class Probe:
    """A per-epoch measurement; `start`/`step` are for probes that watch the steps between."""

    name = "probe"

    def start(self, model: nn.Module) -> None:
        """Called at the start of each epoch."""

    def step(self) -> None:
        """Called after each optimizer step."""

    def measure(self, model: nn.Module, batches: list[torch.Tensor]) -> ProbeResult:
        """Measure `model` (in eval mode, under no_grad) at the end of an epoch."""
        raise NotImplementedError
