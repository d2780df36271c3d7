"""BatchNorm momentum policies: a fixed momentum, or gcr's dynamic 1/(1+n) reset each epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Literal

from pydantic import field_validator
from torch import nn

from cnnlab.config import Section
from cnnlab.engine.callbacks import Callback
from cnnlab.registry import register_method

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer


class BNSettings(Section):
    """BatchNorm momentum policy (config section `bn`): None keeps each layer's own momentum;
    a float sets it; "dynamic" is 1/(1+n), reset every epoch."""

    momentum: float | Literal["dynamic"] | None = None

    @field_validator("momentum", mode="before")
    @classmethod
    def _policy(cls, value: Any) -> Any:
        # Checked here so a bad value gets one clear message instead of one per union member.
        if value is None or value == "dynamic":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ValueError("use a momentum in (0, 1] or 'dynamic'")
        return float(value)


def batch_norms(model: nn.Module) -> Iterator[nn.modules.batchnorm._BatchNorm]:
    """Yield the BatchNorm layers of `model` that keep running statistics."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            yield m


class BNMomentum(Callback):
    """Sets every BatchNorm's momentum: a float, or "dynamic" (gcr/torch-residual-networks).

    Dynamic: before the n-th batch of an epoch (n from 0) the momentum is 1/(1+n), so the
    running statistics are the plain average over the epoch so far. PyTorch's momentum=None
    computes the same factor as 1/num_batches_tracked, but reads that counter on the host at
    every BatchNorm of every step (a GPU sync each); so the factor is set here from a host
    count of the epoch's steps instead, the same float. num_batches_tracked is still zeroed at
    each epoch start (on the device), so the model's state is as with momentum=None and a run
    resumed at an epoch boundary continues exactly.
    """

    def __init__(self, policy: float | str) -> None:
        self.policy = policy
        self.layers: list[nn.modules.batchnorm._BatchNorm] = []
        self.steps = 0  # steps taken in this epoch

    @property
    def dynamic(self) -> bool:
        """Return whether this is the dynamic 1/(1+n) policy."""
        return self.policy == "dynamic"

    def on_train_start(self, trainer: Trainer) -> None:
        """Set the momentum of every BatchNorm layer."""
        for bn in batch_norms(trainer.model):
            bn.momentum = 1.0 if self.dynamic else float(self.policy)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Restart the cumulative average (dynamic policy only)."""
        if self.dynamic:
            # Collected per epoch: a method may have swapped the model at the last epoch end.
            self.layers = list(batch_norms(trainer.model))
            self.steps = 0
            for bn in self.layers:
                bn.num_batches_tracked.zero_()
                bn.momentum = 1.0

    def on_step_end(self, trainer: Trainer, step: int, loss: float | None) -> None:
        """Set the next batch's factor 1/(1+n) (dynamic policy only)."""
        if self.dynamic:
            self.steps += 1
            for bn in self.layers:
                bn.momentum = 1.0 / (1 + self.steps)


register_method(
    "bn_momentum",
    lambda cfg: [BNMomentum(cfg.bn.momentum)],
    active=lambda cfg: cfg.bn.momentum is not None,
    section="bn",
    settings=BNSettings,
    doc="BatchNorm momentum: a fixed value or gcr's dynamic 1/(1+n)",
)
