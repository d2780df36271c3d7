"""Dead-unit probe readings of a run as layer x epoch matrices and PNG heat maps."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


@dataclass
class ProbeMap:
    """One probe over a run: `values[i, j]` is layer i at epoch j (NaN where not measured)."""

    probe: str
    layers: list[str]
    epochs: list[int]
    values: np.ndarray


def probe_maps(history: list[dict[str, Any]]) -> list[ProbeMap]:
    """Return one ProbeMap per probe found in the rows' `probes` field, in first-seen order."""
    rows = [r for r in history if isinstance(r.get("probes"), dict)]
    names: dict[str, dict[str, None]] = {}  # probe -> layers, both in first-seen order
    for row in rows:
        for probe, layers in row["probes"].items():
            names.setdefault(probe, {}).update(dict.fromkeys(layers))
    maps = []
    epochs = [r["epoch"] for r in rows]
    for probe, layer_set in names.items():
        layers = list(layer_set)
        values = np.full((len(layers), len(rows)), np.nan)
        for j, row in enumerate(rows):
            for i, layer in enumerate(layers):
                value = row["probes"].get(probe, {}).get(layer)
                if value is not None:
                    values[i, j] = value
        maps.append(ProbeMap(probe, layers, epochs, values))
    return maps


def plot_probe_map(pm: ProbeMap, path: Path, title: str) -> Path:
    """Write a layer x epoch heat map of the dead fraction (0 white .. 1 dark) to `path`."""
    height = min(30.0, 1.5 + 0.18 * len(pm.layers))
    width = min(20.0, 4.0 + 0.25 * len(pm.epochs))
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(pm.values, aspect="auto", cmap="Reds", vmin=0.0, vmax=1.0,
                      interpolation="nearest")  # fmt: skip
    ax.set_yticks(range(len(pm.layers)), pm.layers, fontsize=6)
    step = max(1, len(pm.epochs) // 20)
    ax.set_xticks(range(0, len(pm.epochs), step), pm.epochs[::step])
    ax.set_xlabel("epoch")
    ax.set_title(f"{title}: {pm.probe} (fraction per layer)")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
