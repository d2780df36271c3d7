"""Counting the host synchronisations of training steps on CUDA (for tests and gpu_check).

torch's sync debug mode warns at every call that makes the host wait for the GPU (`.item()`,
a device-to-host copy, `nonzero`, a stream synchronise); this callback turns those warnings
into a count per step for one epoch. The warnings between two step ends belong to the later
step, so the first step also carries the epoch's start (its data order).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import torch

from cnnlab.engine.callbacks import Callback

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer


class SyncCounter(Callback):
    """Counts the synchronising CUDA calls of each step of epoch `epoch` into `per_step`."""

    def __init__(self, epoch: int = 2) -> None:
        self.epoch = epoch
        self.per_step: list[int] = []
        self._catcher: warnings.catch_warnings | None = None
        self._seen: list[warnings.WarningMessage] = []

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Start counting (in the watched epoch, on CUDA)."""
        if epoch == self.epoch and trainer.device.type == "cuda":
            self._catcher = warnings.catch_warnings(record=True)
            self._seen = self._catcher.__enter__()
            warnings.simplefilter("always")  # every sync, not once per call site
            torch.cuda.set_sync_debug_mode("warn")

    def on_step_end(self, trainer: Trainer, step: int, loss: float | None) -> None:
        """Close the step's count."""
        if self._catcher is not None:
            self.per_step.append(sum("synchroniz" in str(w.message) for w in self._seen))
            self._seen.clear()

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        """Stop counting."""
        if self._catcher is not None:
            torch.cuda.set_sync_debug_mode("default")
            self._catcher.__exit__(None, None, None)
            self._catcher = None
