"""BatchNorm momentum policies: a fixed momentum, or gcr's dynamic 1/(1+n) reset each epoch."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from torch import nn

from cnnlab.engine.callbacks import Callback

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer


def batch_norms(model: nn.Module) -> Iterator[nn.modules.batchnorm._BatchNorm]:
    """Yield the BatchNorm layers of `model` that keep running statistics."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats:
            yield m


class BNMomentum(Callback):
    """Sets every BatchNorm's momentum: a float, or "dynamic" (METHODS §6).

    Dynamic: before the n-th batch of an epoch (n from 0) the momentum is 1/(1+n), so the
    running statistics are the plain average over the epoch so far. PyTorch does exactly this
    with momentum=None (factor 1/num_batches_tracked after its increment); zeroing
    num_batches_tracked at each epoch start gives the reset. The counters live in the model's
    state, so a run resumed at an epoch boundary continues exactly.
    """

    def __init__(self, policy: float | str) -> None:
        self.policy = policy

    @property
    def dynamic(self) -> bool:
        """Return whether this is the dynamic 1/(1+n) policy."""
        return self.policy == "dynamic"

    def on_train_start(self, trainer: Trainer) -> None:
        """Set the momentum of every BatchNorm layer."""
        for bn in batch_norms(trainer.model):
            bn.momentum = None if self.dynamic else float(self.policy)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Restart the cumulative average (dynamic policy only)."""
        if self.dynamic:
            for bn in batch_norms(trainer.model):
                bn.num_batches_tracked.zero_()
