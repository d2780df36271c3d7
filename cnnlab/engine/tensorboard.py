"""TensorBoard event files beside the run's own files, when the tensorboard package is installed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from cnnlab.engine.callbacks import Callback

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer


def tensorboard_available() -> bool:
    """Return whether torch.utils.tensorboard can be used (it needs the tensorboard package)."""
    try:
        import torch.utils.tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TensorBoardWriter(Callback):
    """Writes every numeric metric of each epoch row as a scalar under RUN/tensorboard."""

    def __init__(self) -> None:
        self.writer = None

    def on_train_start(self, trainer: Trainer) -> None:
        """Open the event file (appending on resume)."""
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(trainer.run.path / "tensorboard"))

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        """Log the epoch's metrics against the epoch number."""
        for key, value in row.items():
            if key != "epoch" and isinstance(value, (int, float)):
                self.writer.add_scalar(key, value, epoch)
        # Per-layer probe readings: one chart per layer, grouped by probe (probe_dead_relu/...).
        for probe, layers in row.get("probes", {}).items():
            for layer, value in layers.items():
                self.writer.add_scalar(f"probe_{probe}/{layer}", value, epoch)
        self.writer.flush()

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Close the event file."""
        self.writer.close()
