"""How much bf16 autocast changes a trained binary (1W1A) net: conv sums and predictions.

    python benchmarks/binary_precision.py RUN_FOLDER [RUN_FOLDER ...] [--images 500]

Each RUN_FOLDER is a finished fp32 run of a `*_1w1a` model on Fashion-MNIST (its last.pt).
The script evaluates the same weights on the first test images once in fp32 and once under
bf16 autocast, and prints, per binary conv, the share of its +-1 convolution sums that differ,
the largest sum, and the share of top-1 predictions that stay the same.
"""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import numpy as np
import torch

from cnnlab.config import load_config
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.models.binary import BinaryConv2d
from cnnlab.registry import build_model

TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")
MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST training-set mean / std


def conv_sums(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> tuple[list, torch.Tensor]:
    """Return each binary conv's output divided by its scale (the +-1 sums), and the logits."""
    sums: list[torch.Tensor] = []
    hooks = [
        m.register_forward_hook(lambda mod, i, out: sums.append((out / mod.alpha).float()))
        for m in model.modules()
        if isinstance(m, BinaryConv2d)
    ]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = model(x).float()
    for hook in hooks:
        hook.remove()
    return sums, logits


def main() -> None:
    """Print the fp32-vs-bf16 comparison for each run folder."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=int, default=500)
    args = parser.parse_args()
    raw = np.frombuffer(gzip.open(TEST_IMAGES).read(), np.uint8, offset=16)
    x = torch.tensor(raw.reshape(-1, 1, 28, 28)[: args.images].astype(np.float32) / 255.0)
    x = (x - MEAN) / STD
    for run in args.runs:
        cfg = load_config(run / "config.yaml")
        model = build_model(cfg.model.name, in_channels=1, num_classes=10, **cfg.model.options())
        model.load_state_dict(load_checkpoint(run / "last.pt")["model"])
        model.eval()
        (full, logits32), (low, logits16) = conv_sums(model, x, False), conv_sums(model, x, True)
        changed = [100 * ((a - b).abs() > 1e-3).float().mean().item() for a, b in zip(full, low)]
        agree = 100 * (logits32.argmax(1) == logits16.argmax(1)).float().mean().item()
        print(
            f"{run}: sums changed per binary conv (%): {[round(c, 1) for c in changed]}; "
            f"largest |sum| {max(int(s.abs().max()) for s in full)}; "
            f"top-1 predictions unchanged {agree:.1f} % of {len(x)}"
        )


if __name__ == "__main__":
    main()
