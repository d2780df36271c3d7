"""Freeze named parameters after some epochs (airbench94 trains its whitening conv's bias for
the first 3 epochs only: KellerJordan/cifar10-airbench airbench94.py @ 01a2367,
`model[0].bias.requires_grad = (epoch < hyp['opt']['whiten_bias_epochs'])`). A frozen
parameter gets no gradient, so the optimizer leaves it (and its momentum) alone, and the
backward pass skips its work."""

from __future__ import annotations

import fnmatch
from typing import TYPE_CHECKING

from pydantic import Field
from torch import nn

from cnnlab.config import Section
from cnnlab.engine.callbacks import Callback
from cnnlab.errors import UserError
from cnnlab.registry import register_method

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer


class FreezeSettings(Section):
    """Parameters trained for the first `after_epochs` epochs only (config section `freeze`)."""

    params: list[str] = Field(default_factory=list)  # names or shell patterns, e.g. whiten.bias
    after_epochs: int = Field(3, ge=0)


class FreezeAfter(Callback):
    """Sets requires_grad of the named parameters at each epoch's start: on for epochs
    1 .. after_epochs, off afterwards (so a resumed run freezes them again by itself)."""

    def __init__(self, settings: FreezeSettings) -> None:
        self.s = settings
        self.params: list[nn.Parameter] = []

    def on_train_start(self, trainer: Trainer) -> None:
        """Find the parameters; a pattern that names none is a UserError."""
        if trainer.dist.active:
            raise UserError("freeze.params cannot run under torchrun: DDP expects a gradient "
                            "for every parameter that had one when it was wrapped")  # fmt: skip
        named = dict(trainer.model.named_parameters())
        self.params = []
        for pattern in self.s.params:
            found = [p for name, p in named.items() if fnmatch.fnmatchcase(name, pattern)]
            if not found:
                raise UserError(
                    f"freeze.params: '{pattern}' names no parameter of {trainer.model_name}"
                )
            # What the model itself keeps frozen (airbench94's whitening weights) stays so.
            self.params.extend(p for p in found if p.requires_grad)

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Train the parameters up to epoch `after_epochs`, freeze them from then on."""
        for p in self.params:
            p.requires_grad_(epoch <= self.s.after_epochs)


register_method(
    "freeze",
    lambda cfg: [FreezeAfter(cfg.freeze)],
    active=lambda cfg: bool(cfg.freeze.params),
    section="freeze",
    settings=FreezeSettings,
    doc="train some parameters for the first epochs only (airbench94's whitening bias)",
)
