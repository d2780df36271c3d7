"""Lookahead EMA (airbench94): every few steps the weights move toward a running average of
themselves, and that average is written back into the network; from then on the network *is*
the average, re-anchored as it trains.

Source: KellerJordan/cifar10-airbench airbench94.py @ 01a2367af6ab0586cfaedced4b63c53807d3643c,
`LookaheadState` and its use in `main()`: from epoch `start_epoch` (0-based), every `every`
steps; the first such step copies the state, later ones lerp the copy toward the weights by
1 - rho, rho = decay^every * (step / total_steps)^decay_power, and copy it back; at each epoch's
end the copy is written back once more. Every floating-point tensor of the state dict takes
part (parameters and BatchNorm running statistics), integer counters do not.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from pydantic import Field

from cnnlab.config import Section
from cnnlab.engine.callbacks import Callback
from cnnlab.registry import register_method

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer


class LookaheadSettings(Section):
    """Lookahead EMA (config section `lookahead`); the defaults are airbench94's."""

    enabled: bool = False
    start_epoch: int = Field(3, ge=0)  # completed epochs before the first update
    every: int = Field(5, ge=1)  # steps between updates
    decay: float = Field(0.95, gt=0, lt=1)  # per step: rho = decay^every * (t / T)^power
    decay_power: float = Field(3.0, ge=0)


class Lookahead(Callback):
    """Moves the weights to their running average every `every` steps (see the module doc)."""

    def __init__(self, settings: LookaheadSettings) -> None:
        self.s = settings
        self.average: list[torch.Tensor] | None = None
        self._live: list[torch.Tensor] = []
        self._started_before = False  # a resumed run whose average had started

    def on_train_start(self, trainer: Trainer) -> None:
        """Pair with the placed (possibly restored) model's floating-point tensors."""
        # state_dict tensors share storage with the modules, so this list stays live.
        self._live = [v for v in trainer.model.state_dict().values() if v.is_floating_point()]
        if self._started_before:
            # Every checkpoint is written at an epoch's end, right after the average was
            # copied into the network: the network's state is the average, bit for bit.
            self.average = [t.clone() for t in self._live]

    @torch.no_grad()
    def on_step_end(self, trainer: Trainer, step: int, loss: float | None) -> None:
        """Update the average and write it back every `every` steps; at an epoch's end too."""
        if trainer.epoch < self.s.start_epoch:
            return
        if step % self.s.every == 0:
            if self.average is None:
                self.average = [t.clone() for t in self._live]
            else:
                progress = step / trainer.schedule.total
                rho = self.s.decay**self.s.every * progress**self.s.decay_power
                torch._foreach_lerp_(self.average, self._live, 1.0 - rho)
                torch._foreach_copy_(self._live, self.average)
        if self.average is not None and step % trainer.steps_per_epoch == 0:
            torch._foreach_copy_(self._live, self.average)

    def state_dict(self) -> dict[str, Any]:
        """Return whether the average has started (its value is the checkpointed network)."""
        return {"started": self.average is not None or self._started_before}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restart the average from the network in on_train_start if it had started."""
        self._started_before = bool(state.get("started"))


register_method(
    "lookahead",
    lambda cfg: [Lookahead(cfg.lookahead)],
    active=lambda cfg: cfg.lookahead.enabled,
    section="lookahead",
    settings=LookaheadSettings,
    conflicts={"nr": "the rebuild replaces the network whose tensors the average follows"},
    doc="airbench94's lookahead EMA: the weights move to their running average every few steps",
)
