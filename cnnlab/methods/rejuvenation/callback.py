"""The Neural Rejuvenation loop as a trainer callback: L1 on BN scales, utilisation, one rebuild.

It uses only the trainer hooks every method may use: `on_before_step` (the L1 subgradient),
`Trainer.replace_model` (the rebuilt network and a fresh optimizer), `Trainer.extra_epochs`
(the epochs before the rebuild do not consume the LR schedule, as the official script's
`args.epochs += 1`) and `Trainer.stop_requested` (`compress_only`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from cnnlab.engine.callbacks import Callback
from cnnlab.engine.checkpoint import copy_file_atomic
from cnnlab.methods.rejuvenation.graph import unit_graph
from cnnlab.methods.rejuvenation.rescale import neural_rescale
from cnnlab.methods.rejuvenation.surgery import (
    apply_architecture,
    rejuvenate,
    separate_mode_params,
)
from cnnlab.methods.rejuvenation.utilisation import Utilisation, inspect_utilisation

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer
    from cnnlab.methods.rejuvenation.settings import NRSettings


class Rejuvenation(Callback):
    """The Neural Rejuvenation loop: L1 on BN scales, utilisation per epoch, one rebuild."""

    def __init__(self, cfg: NRSettings) -> None:
        self.cfg = cfg
        self.sparsity = cfg.sparsity
        self.previous = 1.0  # last epoch's utilisation (adaptive schedule; official start 1.0)
        # "training": sparsify and watch; "rejuvenated": rebuilt; "off": target >= 0.999, or
        # the target was not reached within train.epochs extra epochs.
        self.phase = "off" if cfg.target >= 0.999 else "training"
        self.penalised: list[torch.Tensor] = []
        self.rescaled = False  # nr.bn_target applied to the rebuilt network
        self.compressed_now = False  # compress_only rebuilt in this session

    def on_train_start(self, trainer: Trainer) -> None:
        """Check the model and the options fit, and collect the penalised BN scales."""
        graph = unit_graph(trainer.model)
        model = trainer.model
        self.penalised = [model.get_submodule(u.bn).weight for u in graph.units if not u.fixed]
        if self.phase == "off" and self.cfg.target >= 0.999:
            trainer.run.log("nr: target >= 0.999, plain training")

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """With nr.bn_target, rescale the rebuilt network once before it trains.

        This is NR's `--nr-bn-target` on resuming the `compress_only` checkpoint; an
        uninterrupted run rescales at the same point, so both train the same network.
        """
        target = self.cfg.bn_target
        if self.phase == "rejuvenated" and target is not None and not self.rescaled:
            neural_rescale(trainer.model, target)
            self.rescaled = True
            trainer.run.log(f"nr: neural rescaling, BN scales below {target} raised to it")

    def on_before_step(self, trainer: Trainer) -> None:
        """Add lambda * sign(gamma) to the gradient of every non-fixed BN scale."""
        if self.phase != "training" or not self.sparsity:
            return
        for w in self.penalised:
            if w.grad is not None:
                w.grad.add_(torch.sign(w.detach()), alpha=self.sparsity)

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        """Log utilisation; extend the run by this epoch; rebuild once the target is reached."""
        if self.phase != "training":
            return
        cfg = self.cfg
        shape = trainer.input_shape if cfg.flops else None
        report = inspect_utilisation(
            trainer.model, cfg.live_threshold, cfg.all_dead_threshold, shape
        )
        graph = unit_graph(trainer.model)
        counts = report.live_channels(graph)
        row["nr_utilisation"] = report.ratio
        row["nr_sparsity"] = self.sparsity
        row["nr_live_channels"] = sum(live for live, _ in counts.values())
        layers = " ".join(f"{live}/{total}" for live, total in counts.values())
        trainer.run.log(
            f"nr epoch {epoch}: utilisation {report.ratio:.4f} (target {cfg.target}), "
            f"lambda {self.sparsity:.3g}, live channels per unit: {layers}"
        )
        if trainer.extra_epochs >= trainer.cfg.train.epochs:
            # Without a cap a run whose utilisation never reaches the target would not end.
            self.phase = "off"
            trainer.run.log(
                f"nr: utilisation did not reach {cfg.target} within {trainer.extra_epochs} "
                "extra epochs; training on without rejuvenation"
            )
            return
        trainer.extra_epochs += 1  # this epoch does not consume the LR schedule
        if report.ratio <= cfg.target:
            self._rebuild(trainer, report, row)
        elif cfg.sparsity_schedule == "adaptive":
            # Official imagenet.py: util_params_old starts at 1.0, so lambda can rise after
            # the first epoch already.
            if self.previous - report.ratio < cfg.increase_threshold:
                self.sparsity += cfg.increase_step
        self.previous = report.ratio

    def _rebuild(self, trainer: Trainer, report: Utilisation, row: dict[str, Any]) -> None:
        before = sum(p.numel() for p in trainer.model.parameters())
        new, plan = rejuvenate(trainer.model, report, self.cfg.mode)
        trainer.replace_model(new, plan)
        self.phase = "rejuvenated"
        self.penalised = []
        self.sparsity = 0.0
        row["params"] = trainer.params
        widths = " ".join(f"{u['live_out']}+{u['out'] - u['live_out']}" for u in plan["units"])
        trainer.run.log(
            f"nr: rejuvenated at utilisation {report.ratio:.4f}: params {before} -> "
            f"{trainer.params} ({separate_mode_params(new, plan)} without the cross blocks), "
            f"mode {self.cfg.mode}; widths per unit (survivors+new): {widths}; "
            f"fresh optimizer at lr {trainer.cfg.optim.lr}, the LR schedule starts now"
        )
        if self.cfg.compress_only:
            self.compressed_now = True
            trainer.stop_requested = True
            trainer.run.log("nr: compress_only, stopping after this epoch's checkpoint")

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Under compress_only, keep the rebuilt checkpoint as NR_<model>_<target>.pt."""
        # Only the session that rebuilt: resuming afterwards must not overwrite the file; and
        # under torchrun only the rank that writes the run folder.
        if self.compressed_now and trainer.run.writer:
            name = f"NR_{trainer.model_name}_{self.cfg.target}.pt"
            copy_file_atomic(trainer.run.last, trainer.run.path / name)
            trainer.run.log(f"nr: saved {name}")

    def on_checkpoint_load(self, trainer: Trainer, state: dict[str, Any]) -> None:
        """Rebuild the shapes of a checkpoint taken after the rebuild, before its weights load."""
        if state.get("architecture") is not None:
            plan = state["architecture"]
            trainer.reshape_model(apply_architecture(trainer.model, plan), plan)

    def state_dict(self) -> dict[str, Any]:
        """Return lambda, the phase, the previous utilisation and whether it rescaled."""
        return {
            "sparsity": self.sparsity,
            "phase": self.phase,
            "previous": self.previous,
            "rescaled": self.rescaled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` saved."""
        self.sparsity = state["sparsity"]
        self.phase = state["phase"]
        # Checkpoints written before the official start value stored None for "no epoch yet".
        self.previous = 1.0 if state["previous"] is None else state["previous"]
        self.rescaled = state.get("rescaled", False)  # absent in checkpoints before bn_target
