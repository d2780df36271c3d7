"""Console reporting: a live progress bar on a terminal, plain per-epoch lines otherwise."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from cnnlab.engine.callbacks import Callback

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer


def format_epoch_line(row: dict[str, Any], epochs: int) -> str:
    """Return the one-line summary of an epoch's metrics row."""
    parts = [
        f"epoch {row['epoch']}/{epochs}",
        f"lr {row['lr']:.4g}",
        f"train loss {row['train_loss']:.4f} err {row['train_error']:.2f}%",
    ]
    for split in ("val", "test"):
        if f"{split}_error" in row:
            parts.append(
                f"{split} loss {row[f'{split}_loss']:.4f} err {row[f'{split}_error']:.2f}% "
                f"top5 {row[f'{split}_top5_error']:.2f}%"
            )
    if "test_plain_error" in row:  # the test images as they are, beside their random view
        parts.append(f"test plain err {row['test_plain_error']:.2f}%")
    parts.append(f"{row['images_per_s']:.0f} img/s {row['seconds']:.1f}s")
    return " | ".join(parts)


def numerics_line(trainer: Trainer) -> str:
    """Return the console line naming the precision and memory format the run trains with,
    and for `auto` settings the measured speeds that chose them."""
    t, numerics = trainer.cfg.train, trainer.numerics
    line = f"numerics: {numerics.label} on {trainer.device}"
    auto = [key for key in ("precision", "channels_last") if getattr(t, key) == "auto"]
    if auto:
        speeds = ", ".join(f"{k} {v:.0f}" for k, v in numerics.measured.items())
        line += f" (chosen by train.{'/'.join(auto)}=auto"
        line += f"; measured images/s: {speeds})" if speeds else ")"
    return line


class ConsoleReporter(Callback):
    """Shows epoch, step, loss, lr, images/s and ETA; writes every epoch line to log.txt too."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.live = self.console.is_terminal
        self.progress: Progress | None = None
        self.task = None
        self.epoch_start = 0.0
        self.epoch_step0 = 0

    def on_train_start(self, trainer: Trainer) -> None:
        """Say the numerics in force (what train.precision=auto chose, and why); open the
        progress bar over all remaining steps of the run."""
        self.console.print(numerics_line(trainer), soft_wrap=True)
        if not self.live:
            return
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=self.console,
        )
        self.progress.start()
        total = trainer.cfg.train.epochs * trainer.steps_per_epoch
        self.task = self.progress.add_task("", total=total, completed=trainer.step, stats="")

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Remember when the epoch began, for images/s."""
        self.epoch_start = time.perf_counter()
        self.epoch_step0 = trainer.step
        if self.progress is not None:
            self.progress.update(self.task, description=f"epoch {epoch}/{trainer.total_epochs}")

    def on_step_end(self, trainer: Trainer, step: int, loss: float | None) -> None:
        """Advance the bar; refresh the numbers when the loss is known."""
        if self.progress is None:
            return
        if loss is None:
            self.progress.update(self.task, completed=step)
            return
        seen = (step - self.epoch_step0) * trainer.cfg.train.batch_size
        rate = seen / max(1e-9, time.perf_counter() - self.epoch_start)
        stats = f"loss {loss:.4f} lr {trainer.lr:.4g} {rate:.0f} img/s"
        self.progress.update(self.task, completed=step, stats=stats)

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        """Print (and log) the epoch's line."""
        line = format_epoch_line(row, trainer.total_epochs)
        trainer.run.log(line)
        self.console.print(line, soft_wrap=True)

    def on_train_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """Close the bar."""
        self.close()

    def close(self) -> None:
        """Stop the live display (also on errors, so the terminal is left clean)."""
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
