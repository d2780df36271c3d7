"""Trainer callback points; methods and reporters subclass `Callback` and keep state here."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer


class Callback:
    """No-op hooks the trainer calls; override the ones you need.

    A checkpoint keeps each callback's `state_dict` under its `state_key`, so a resume hands
    every callback its own state whatever callbacks were added, removed or reordered since.
    """

    @property
    def state_key(self) -> str:
        """Return the name this callback's state is saved under: the class's module-qualified
        name unless set (a registered method's callbacks get the method's name). Set it, or
        override it with a class attribute, to keep a callback's state across a renamed class."""
        kind = type(self)
        return self.__dict__.get("_state_key") or f"{kind.__module__}.{kind.__qualname__}"

    @state_key.setter
    def state_key(self, key: str) -> None:
        self.__dict__["_state_key"] = key

    def on_train_start(self, trainer: Trainer) -> None:
        """Called once after set-up (and after a resume has restored state)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Called before the first step of `epoch` (1-based)."""

    def on_step_end(self, trainer: Trainer, step: int, loss: float | None) -> None:
        """Called after each optimizer step; `loss` is None where reading it would sync a GPU."""

    def on_before_step(self, trainer: Trainer) -> None:
        """Called after the backward pass, right before the optimizer step (gradients are set)."""

    def on_eval_end(self, trainer: Trainer, split: str, metrics: dict[str, float]) -> None:
        """Called after evaluating `split` ('val' or 'test')."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        """Called with the epoch's metrics row, before the checkpoint is written."""

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Called once with the run summary."""

    def on_checkpoint_load(self, trainer: Trainer, state: dict[str, Any]) -> None:
        """Called on resume with the checkpoint, before the model's weights are loaded (a method
        that reshaped the network rebuilds it here: `trainer.reshape_model`)."""

    def state_dict(self) -> dict[str, Any]:
        """Return state to keep in checkpoints."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore state saved by `state_dict`."""


def state_keys(callbacks: Sequence[Callback]) -> list[str]:
    """Return the checkpoint key of each callback: its `state_key`, with '#2', '#3' ... appended
    to the second and later callbacks of the same key (in the order the trainer holds them)."""
    seen: Counter[str] = Counter()
    keys = []
    for cb in callbacks:
        key = cb.state_key
        seen[key] += 1
        keys.append(key if seen[key] == 1 else f"{key}#{seen[key]}")
    return keys
