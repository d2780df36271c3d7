"""Curves across seeds as one picture: per configuration a median line with a min–max band."""

from __future__ import annotations

import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never needs a display
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

PANELS = (
    ("test_error", "top-1 test error (%)", "test error"),
    ("train_loss", "train loss (cross-entropy)", "train loss"),
)


def _band(histories: list[list[dict[str, Any]]], key: str) -> tuple[list, list, list, list]:
    by_epoch: dict[int, list[float]] = defaultdict(list)
    for history in histories:
        for row in history:
            value = row.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                by_epoch[row["epoch"]].append(value)
    epochs = sorted(by_epoch)
    return (
        epochs,
        [statistics.median(by_epoch[e]) for e in epochs],
        [min(by_epoch[e]) for e in epochs],
        [max(by_epoch[e]) for e in epochs],
    )


def plot_groups(
    curves: list[tuple[str, list[list[dict[str, Any]]]]], path: Path, title: str
) -> None:
    """Draw test error and train loss vs epoch for each (label, metrics histories) into `path`."""
    path = Path(path)
    fig, axes = plt.subplots(1, len(PANELS), figsize=(12, 4.5))
    for i, (label, histories) in enumerate(curves):
        color = f"C{i % 10}"
        for ax, (key, _, _) in zip(axes, PANELS):
            epochs, median, low, high = _band(histories, key)
            if not epochs:
                continue
            marker = "o" if len(epochs) <= 30 else None
            ax.plot(epochs, median, color=color, marker=marker, markersize=3,
                    label=f"{label} (n={len(histories)})")  # fmt: skip
            if len(histories) > 1:
                ax.fill_between(epochs, low, high, color=color, alpha=0.2, linewidth=0)
    for ax, (_, ylabel, name) in zip(axes, PANELS):
        ax.set(xlabel="epoch", ylabel=ylabel, title=f"{name}: median over seeds, band min–max")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # epochs are whole numbers
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fig.savefig(tmp, dpi=100, format=path.suffix.lstrip(".").lower() or "png")
    plt.close(fig)
    tmp.replace(path)
