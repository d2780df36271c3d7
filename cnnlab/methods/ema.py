"""Exponential moving average of the weights, evaluated beside the raw weights each epoch."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field
from torch import nn

from cnnlab.config import Section
from cnnlab.engine.callbacks import Callback
from cnnlab.registry import register_method

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer


class EMASettings(Section):
    """Exponential moving average of the weights (config section `ema`); 0 = off."""

    decay: float = Field(0.0, ge=0.0, lt=1.0)


class WeightEMA(Callback):
    """Keeps ema <- decay * ema + (1 - decay) * weights after every optimizer step.

    Parameters and floating-point buffers (BatchNorm running statistics) are averaged;
    integer buffers (batch counters) are copied. The copy starts from the initial weights.
    Its metrics go into the epoch row as ema_<split>_<metric> (e.g. ema_test_error); the
    best checkpoint is still chosen on the raw weights.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.model: nn.Module | None = None
        self._saved: dict[str, torch.Tensor] | None = None
        self._floats: tuple[list[torch.Tensor], list[torch.Tensor]] = ([], [])
        self._ints: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._evaluated = False  # the raw weights were evaluated in the current epoch

    def on_train_start(self, trainer: Trainer) -> None:
        """Copy the (placed, possibly restored) model and pair its tensors with the live ones."""
        self.model = copy.deepcopy(trainer.model).eval().requires_grad_(False)
        if self._saved is not None:
            self.model.load_state_dict(self._saved)
            self._saved = None
        ema, live = self.model.state_dict(), trainer.model.state_dict()
        # state_dict tensors share storage with the modules, so these lists stay live.
        floats = [k for k, v in ema.items() if v.is_floating_point()]
        self._floats = ([ema[k] for k in floats], [live[k] for k in floats])
        self._ints = [(ema[k], live[k]) for k, v in ema.items() if not v.is_floating_point()]

    @torch.no_grad()
    def on_step_end(self, trainer: Trainer, step: int, loss: float | None) -> None:
        """Move the average toward the weights just updated."""
        ema, live = self._floats
        torch._foreach_lerp_(ema, live, 1.0 - self.decay)
        for target, source in self._ints:
            target.copy_(source)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Forget the previous epoch's evaluation."""
        self._evaluated = False

    def on_eval_end(self, trainer: Trainer, split: str, metrics: dict[str, float]) -> None:
        """Note that the raw weights were evaluated this epoch."""
        self._evaluated = True

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        """Evaluate the averaged weights whenever the raw weights were evaluated this epoch, on
        the same splits (val, test, test_plain: whichever the run has)."""
        if self._evaluated:
            row.update(trainer.evaluate_splits(self.model, prefix="ema_"))

    def state_dict(self) -> dict[str, Any]:
        """Return the averaged weights."""
        return {"weights": self.model.state_dict() if self.model is not None else self._saved}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep the saved average until on_train_start has built the copy."""
        self._saved = state["weights"]


register_method(
    "ema",
    lambda cfg: [WeightEMA(cfg.ema.decay)],
    active=lambda cfg: cfg.ema.decay > 0,
    section="ema",
    settings=EMASettings,
    doc="exponential moving average of the weights, evaluated beside them",
)
