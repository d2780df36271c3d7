"""Dead-unit probes as a trainer callback: per layer, per epoch, into metrics and TensorBoard.

At the end of every epoch (every `probes.every` epochs, and the last) each probe measures the
model; the row gets `probe_<name>` (the pooled fraction over all layers' units) and
`probes: {<name>: {<layer>: fraction}}`, plus `probe_seconds`, the probes' own wall time that
epoch (their overhead). The ReLU probe runs a fixed batch of training images (evenly spaced
indices, no augmentation, no random draw) in eval mode under no_grad, so probing changes
neither the training nor its random streams.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field
from torch import nn

from cnnlab.analysis.dead import (
    SignFlips,
    clamped_weight_counts,
    dead_bn_counts,
    dead_relu_counts,
    fractions,
    pooled_fraction,
)
from cnnlab.config import Section
from cnnlab.engine import distributed
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.faults import fault_point
from cnnlab.methods.probe import Probe, ProbeResult
from cnnlab.registry import PROBES, register_method, register_probe

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer


class ProbesSettings(Section):
    """Per-epoch dead-unit probes (config section `probes`); cheap, so on by default."""

    enabled: bool = True
    every: int = Field(1, ge=1)  # measure every N epochs (and at the last)
    batch_size: int = Field(256, ge=1)  # training images in the fixed probe batch
    bn_threshold: float = Field(0.01, gt=0, lt=1)  # dead when |gamma| < this * layer max
    nr_live_threshold: float = Field(0.01, gt=0, lt=1)  # NR utilisation: live channel rule


def _from_counts(counts: dict[str, tuple[int, int]]) -> ProbeResult:
    return ProbeResult(fractions(counts), pooled_fraction(counts))


class DeadReLU(Probe):
    """Fraction of nn.ReLU channels that are zero on the whole probe batch."""

    name = "dead_relu"

    def measure(self, model: nn.Module, batches: list[torch.Tensor]) -> ProbeResult:
        """Run the probe batch with hooks on every ReLU."""
        return _from_counts(dead_relu_counts(model, batches))


class DeadBN(Probe):
    """Fraction of norm channels with |gamma| below `rel` times the layer's largest."""

    name = "dead_bn"

    def __init__(self, rel: float) -> None:
        self.rel = rel

    def measure(self, model: nn.Module, batches: list[torch.Tensor]) -> ProbeResult:
        """Read the norm layers' scales."""
        return _from_counts(dead_bn_counts(model, self.rel))


class ClampedWeights(Probe):
    """Fraction of binary latent weights outside ReCU's clamp at the current tau."""

    name = "clamped_weights"

    def measure(self, model: nn.Module, batches: list[torch.Tensor]) -> ProbeResult:
        """Compare each binary conv's standardised weights with +-Q(tau)."""
        return _from_counts(clamped_weight_counts(model))


class FrozenWeights(Probe):
    """Fraction of binary weights whose sign did not change during the epoch."""

    name = "frozen_weights"

    def __init__(self) -> None:
        self.flips = SignFlips()

    def start(self, model: nn.Module) -> None:
        """Remember the signs at the start of the epoch."""
        self.flips.reset(model)

    def step(self) -> None:
        """Accumulate the sign changes of this step (nothing to do without binary convs)."""
        if self.flips.convs:
            self.flips.update()

    def measure(self, model: nn.Module, batches: list[torch.Tensor]) -> ProbeResult:
        """Count the weights that never flipped."""
        return _from_counts(self.flips.frozen_counts())


def build_probes(settings: ProbesSettings) -> list[Probe]:
    """Return one instance of every registered probe, in registration order."""
    return [factory(settings) for _, factory in PROBES.items()]


def probe_indices(n: int, k: int) -> torch.Tensor:
    """Return min(k, n) evenly spaced indices into n training images (no random draw)."""
    k = min(k, n)
    return torch.arange(k) * n // k


class ProbeCallback(Callback):
    """Measures every probe at each epoch end and writes the readings into the epoch row."""

    def __init__(self, cfg: ProbesSettings) -> None:
        self.cfg = cfg
        self.probes = build_probes(cfg)
        self.images: torch.Tensor | None = None
        self.step_seconds = 0.0
        self.active = True  # this epoch is measured (probes.every)

    def on_train_start(self, trainer: Trainer) -> None:
        """Fix the probe batch: evenly spaced training images, normalised, not augmented."""
        loader = trainer.data.train
        index = probe_indices(loader.num_images, self.cfg.batch_size)
        # Every rank decodes the same batch: a bad image in it is met by all, reported once.
        self.images = distributed.agree(lambda: loader.fixed_images(index))

    def _measures(self, trainer: Trainer, epoch: int) -> bool:
        return epoch % self.cfg.every == 0 or epoch == trainer.total_epochs

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Let step-watching probes take their starting point (in measured epochs only)."""
        self.step_seconds = 0.0
        self.active = self._measures(trainer, epoch)
        if not self.active:
            return
        for probe in self.probes:
            probe.start(trainer.model)

    def on_step_end(self, trainer: Trainer, step: int, loss: float | None) -> None:
        """Let step-watching probes see the update."""
        if not self.active:
            return
        start = time.perf_counter()
        for probe in self.probes:
            probe.step()
        self.step_seconds += time.perf_counter() - start

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        """Measure and add probe_<name>, probes{...} and probe_seconds to the row."""
        if not self.active:
            return
        start = time.perf_counter()
        model, numerics = trainer.model, trainer.numerics
        was_training = model.training
        model.eval()
        chunk = trainer.cfg.train.eval_batch_size
        batches = [numerics.layout(x) for x in self.images.split(chunk)]
        details: dict[str, dict[str, float]] = {}
        with torch.no_grad(), numerics.autocast(trainer.device):
            for probe in self.probes:
                result = probe.measure(model, batches)
                fault_point("probe_measure")
                if result.summary is None:
                    continue  # the model has no layer of this kind
                row[f"probe_{probe.name}"] = result.summary
                details[probe.name] = result.per_layer
        model.train(was_training)
        row["probes"] = details
        row["probe_seconds"] = self.step_seconds + time.perf_counter() - start


register_probe("dead_relu", lambda settings: DeadReLU())
register_probe("dead_bn", lambda settings: DeadBN(settings.bn_threshold))
register_probe("clamped_weights", lambda settings: ClampedWeights())
register_probe("frozen_weights", lambda settings: FrozenWeights())
register_method(
    "probes",
    lambda cfg: [ProbeCallback(cfg.probes)],
    active=lambda cfg: cfg.probes.enabled,
    section="probes",
    settings=ProbesSettings,
    doc="per-epoch dead-unit probes (every registered probe)",
)
