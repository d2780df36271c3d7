"""The learning-rate curve of a recipe as a PNG, drawn without training."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def plot_lr_curve(lrs: Sequence[float], steps_per_epoch: int, path: Path, title: str) -> None:
    """Draw the per-step learning rate against epoch (linear and log scale) into `path`."""
    epochs = [step / steps_per_epoch for step in range(len(lrs))]
    fig, (ax_lin, ax_log) = plt.subplots(1, 2, figsize=(10, 4))
    for ax, scale in ((ax_lin, "linear"), (ax_log, "log")):
        ax.plot(epochs, lrs, linewidth=1.2)
        ax.set(xlabel="epoch", ylabel="learning rate", yscale=scale, title=f"{scale} scale")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
