"""Dead-unit measurements on a model: dead ReLU channels, dead BN channels, dead binary weights.

Each measurement returns, per layer (qualified module name), a pair (dead, total) of counts,
so a summary can pool layers by unit count. Definitions:
- dead ReLU channel: its output is zero at every position of every image of a probe batch;
  only `nn.ReLU` modules are seen (forward hooks), so a functional `F.relu` is not measured.
- dead BN channel: |gamma_c| < rel * max_c |gamma_c| in that layer (Neural Rejuvenation's
  live_thres, Qiao et al. 2019; rel = 0.01); any BatchNorm or GroupNorm with a scale.
- clamped binary weight: its standardised latent value lies outside ReCU's +-Q(tau).
- frozen binary weight (see `SignFlips`): its binary sign did not change over an interval.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from cnnlab.models.binary import binary_convs, recu_threshold

Counts = dict[str, tuple[int, int]]


def fractions(counts: Counts) -> dict[str, float]:
    """Return dead / total per layer."""
    return {name: dead / total for name, (dead, total) in counts.items() if total}


def pooled_fraction(counts: Counts) -> float | None:
    """Return the dead fraction over all units of all layers (None when there are none)."""
    total = sum(t for _, t in counts.values())
    return sum(d for d, _ in counts.values()) / total if total else None


def alive_channels(act: torch.Tensor) -> torch.Tensor:
    """Return, per channel (dim 1), whether any value of `act` is positive."""
    return (act > 0).transpose(0, 1).reshape(act.shape[1], -1).any(dim=1)


def dead_relu_counts(model: nn.Module, batches: Iterable[torch.Tensor]) -> Counts:
    """Count, per nn.ReLU call site, the channels that are zero on every image of `batches`.

    Runs `model` as it is (call it in eval mode under no_grad to leave training untouched). A
    ReLU module applied several times per forward gets one entry per call ('name#2', ...).
    """
    alive: dict[str, torch.Tensor] = {}
    calls: dict[str, int] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            calls[name] = calls.get(name, 0) + 1
            key = name if calls[name] == 1 else f"{name}#{calls[name]}"
            seen = alive_channels(output)
            alive[key] = alive[key] | seen if key in alive else seen

        return record

    handles = [
        m.register_forward_hook(hook(name))
        for name, m in model.named_modules()
        if isinstance(m, nn.ReLU)
    ]
    try:
        for x in batches:
            calls.clear()
            model(x)
    finally:
        for h in handles:
            h.remove()
    return {k: (int((~a).sum()), a.numel()) for k, a in alive.items()}


def dead_scale_mask(
    gamma: torch.Tensor, rel: float = 0.01, wholly_dead_below: float = 0.0
) -> torch.Tensor:
    """Return which channels of one norm layer are dead by their scales (Qiao et al. 2019).

    Channel c is dead if |gamma_c| < rel * max|gamma|; every channel is dead if max|gamma| is 0
    or below `wholly_dead_below` (NR's all_dead_thres, 1e-3 in its code; 0 for the probes).
    Neural Rejuvenation and the dead_bn probe both use this rule.
    """
    g = gamma.detach().abs()
    top = g.max()
    if top <= 0 or top < wholly_dead_below:
        return torch.ones_like(g, dtype=torch.bool)
    return g < rel * top


def dead_bn_counts(model: nn.Module, rel: float = 0.01) -> Counts:
    """Count, per BatchNorm/GroupNorm layer with a scale, the channels with a tiny |gamma|."""
    out: Counts = {}
    for name, m in model.named_modules():
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.GroupNorm)) and m.weight is not None:
            out[name] = (int(dead_scale_mask(m.weight, rel).sum()), m.weight.numel())
    return out


def clamped_weight_counts(model: nn.Module) -> Counts:
    """Count, per binary conv with a ReCU tau, the latent weights outside +-Q(tau)."""
    out: Counts = {}
    with torch.no_grad():
        for name, conv in binary_convs(model):
            if conv.tau is None:
                continue
            w1 = conv.standardized_weight()
            out[name] = (int((w1.abs() > recu_threshold(w1, conv.tau)).sum()), w1.numel())
    return out


class SignFlips:
    """Tracks which binary weights changed sign since `reset`; the rest are frozen ('dead')."""

    def __init__(self) -> None:
        self.convs: list[tuple[str, nn.Module]] = []
        self.previous: dict[str, torch.Tensor] = {}
        self.flipped: dict[str, torch.Tensor] = {}

    def reset(self, model: nn.Module) -> None:
        """Start a new interval from the model's current signs."""
        # The layer list is kept so that per-step updates skip the module walk.
        self.convs = list(binary_convs(model))
        self.previous = self._signs()
        self.flipped = {k: torch.zeros_like(s, dtype=torch.bool) for k, s in self.previous.items()}

    def _signs(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {name: torch.sign(conv.standardized_weight()) for name, conv in self.convs}

    def update(self) -> None:
        """Note the sign changes since the last update (call after each optimizer step)."""
        for name, sign in self._signs().items():
            self.flipped[name] |= sign != self.previous[name]
            self.previous[name] = sign

    def frozen_counts(self) -> Counts:
        """Count, per binary conv, the weights whose sign never changed in the interval."""
        return {k: (int((~f).sum()), f.numel()) for k, f in self.flipped.items()}
