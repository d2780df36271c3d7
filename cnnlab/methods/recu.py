"""ReCU's exponential tau schedule (Xu et al. 2021) as a trainer callback.

tau(e) = A * exp(e / E) + B with A = (tau_max - tau_min) / (math.e - 1) and B = tau_min - A,
so tau(0) = tau_min and tau(E) = tau_max. As in ReCU's code, tau is set once at the start of
each epoch from the 0-based epoch index, so the last of E epochs trains at tau(E - 1).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from pydantic import Field, model_validator

from cnnlab.config import Config, Section
from cnnlab.engine.callbacks import Callback
from cnnlab.models.binary import set_tau
from cnnlab.registry import model_entry, register_method

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer


def tau_schedule(epoch: float, epochs: int, tau_min: float = 0.85, tau_max: float = 0.99) -> float:
    """Return ReCU's tau at 0-based `epoch` of `epochs` (tau_min at 0, tau_max at `epochs`)."""
    a = (tau_max - tau_min) / (math.e - 1.0)
    return a * math.exp(epoch / epochs) + (tau_min - a)


class BinarySettings(Section):
    """ReCU training of binary (`*_1w1a`) models (config section `binary`): the tau schedule,
    or the plain sign-STE baseline."""

    recu: bool = True  # false: no clamp, the plain sign straight-through baseline
    tau_min: float = Field(0.85, gt=0.5, lt=1)
    tau_max: float = Field(0.99, gt=0.5, lt=1)

    @model_validator(mode="after")
    def _tau_rises(self) -> BinarySettings:
        if self.tau_min > self.tau_max:
            raise ValueError(
                f"binary.tau_min ({self.tau_min}) must not exceed binary.tau_max ({self.tau_max})"
            )
        return self


def _binary_model(cfg: Config) -> bool:
    # Families of 1-bit models declare `binary = True` (cnnlab/models/recu_nets.py).
    return model_entry(cfg.model.name).binary


def _binary_section_fits(cfg: Config) -> str | None:
    if cfg.binary != BinarySettings() and not _binary_model(cfg):
        return (
            f"config section 'binary' applies only to binary models (e.g. resnet20_1w1a), "
            f"not {cfg.model.name}"
        )
    return None


class ReCUSchedule(Callback):
    """Sets the tau of every binary conv each epoch; `recu=False` removes the clamp (sign-STE)."""

    def __init__(self, recu: bool = True, tau_min: float = 0.85, tau_max: float = 0.99) -> None:
        self.recu = recu
        self.tau_min = tau_min
        self.tau_max = tau_max
        self.tau: float | None = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Set tau for `epoch` (1-based here, 0-based in the formula)."""
        if self.recu:
            epochs = trainer.cfg.train.epochs
            self.tau = tau_schedule(epoch - 1, epochs, self.tau_min, self.tau_max)
        set_tau(trainer.model, self.tau)

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        """Record the epoch's tau in its metrics row (absent for the plain sign-STE baseline)."""
        if self.tau is not None:
            row["recu_tau"] = self.tau

    def state_dict(self) -> dict[str, Any]:
        """Return the current tau and the schedule's settings."""
        return {
            "tau": self.tau,
            "recu": self.recu,
            "tau_min": self.tau_min,
            "tau_max": self.tau_max,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the tau of the last finished epoch (the next epoch start recomputes it)."""
        self.tau = state["tau"]


register_method(
    "recu",
    lambda cfg: [ReCUSchedule(cfg.binary.recu, cfg.binary.tau_min, cfg.binary.tau_max)],
    active=_binary_model,
    section="binary",
    settings=BinarySettings,
    check=_binary_section_fits,
    doc="ReCU's exponential tau schedule for binary (*_1w1a) models",
)
