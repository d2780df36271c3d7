"""Training curves of one run as a PNG: loss and error against epoch."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402


def plot_run_curves(history: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Draw train/val/test loss and error per epoch from metrics.jsonl rows into `path`."""
    fig, (ax_loss, ax_err) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("val", "-."), ("test", "--")):
        rows = [r for r in history if f"{split}_loss" in r]
        if not rows:
            continue
        epochs = [r["epoch"] for r in rows]
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in rows], style, marker="o", label=split)
        ax_err.plot(epochs, [r[f"{split}_error"] for r in rows], style, marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax_err.set(xlabel="epoch", ylabel="top-1 error (%)", title="error")
    for ax in (ax_loss, ax_err):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    tmp.replace(path)
