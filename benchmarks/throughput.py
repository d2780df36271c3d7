"""Training throughput, measured side by side in one process on real Fashion-MNIST.

(a) floor:        forward + backward + SGD step on one resident batch (no data work at all);
(b) cnnlab:       the real training loop (batched augmentation, schedule, metrics, logging,
                  checkpoint) via cnnlab's Trainer, timed over its training steps;
(c) conventional: a typical script: torch DataLoader with per-image pad/crop/flip/normalise in
                  2 worker processes, loss.item() every step.
Prints images/s and the ratios b/a (how close the loop is to the floor) and b/c.

    python benchmarks/throughput.py [--model preact_resnet20] [--images 12800] [--numerics auto]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from cnnlab.config import load_config
from cnnlab.data.sources import load_split
from cnnlab.engine.numerics import Numerics
from cnnlab.engine.run_folder import RunFolder
from cnnlab.engine.trainer import Trainer
from cnnlab.registry import build_model

BATCH = 128


def floor(model_name: str, numerics: Numerics, steps: int) -> float:
    """Images/s of the bare training step on one resident batch."""
    torch.manual_seed(0)
    model = build_model(model_name, in_channels=1).to(memory_format=numerics.memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    x = numerics.layout(torch.randn(BATCH, 1, 28, 28))
    y = torch.randint(0, 10, (BATCH,))

    def step() -> None:
        with numerics.autocast(torch.device("cpu")):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * BATCH / (time.perf_counter() - start)


def cnnlab_loop(model_name: str, numerics: Numerics, images: int) -> tuple[float, Numerics]:
    """Images/s of cnnlab's Trainer over the second of two epochs on `images` training images."""
    overrides = [
        f"model.name={model_name}",
        f"data.train_limit={images}",
        "data.test_limit=500",
        "train.epochs=2",
        f"train.batch_size={BATCH}",
        f"train.precision={numerics.precision}",
        f"train.channels_last={str(numerics.channels_last).lower()}",
    ]
    if numerics.precision == "auto":
        overrides = overrides[:-2]
    cfg = load_config(None, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Trainer(cfg, RunFolder.create(Path(tmp) / "run"))
        trainer.start_fresh()
        trainer.fit()
        return trainer.history[-1]["images_per_s"], trainer.numerics


class PerImageFashion(Dataset):
    """The usual map-style dataset: one image at a time, transformed in a worker process."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].permute(2, 0, 1).float().div(255)
        x = torch.nn.functional.pad(x, (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2,)).tolist()
        x = x[:, dy : dy + 28, dx : dx + 28]
        if torch.rand(()) < 0.5:
            x = x.flip(2)
        return (x - 0.2860) / 0.3530, self.labels[i]


def conventional(model_name: str, numerics: Numerics, images: int) -> float:
    """Images/s of a DataLoader loop with 2 workers, timed after its first 5 steps."""
    data = load_split("fashion_mnist", "train")
    loader = DataLoader(
        PerImageFashion(data.images[:images], data.labels[:images]),
        batch_size=BATCH, shuffle=True, num_workers=2, drop_last=True, persistent_workers=False,
    )  # fmt: skip
    torch.manual_seed(0)
    model = build_model(model_name, in_channels=1).to(memory_format=numerics.memory_format)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    seen, start = 0, None
    for i, (x, y) in enumerate(loader):
        if i == 5:
            seen, start = 0, time.perf_counter()
        with numerics.autocast(torch.device("cpu")):
            loss = torch.nn.functional.cross_entropy(model(numerics.layout(x)).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss.item()  # what a typical script logs every step
        seen += len(y)
    return seen / (time.perf_counter() - start)


def main() -> None:
    """Measure (a), (b), (c) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="preact_resnet20")
    parser.add_argument("--images", type=int, default=12800, help="training images per epoch")
    parser.add_argument("--numerics", default="auto", help="auto, fp32 or fp32+channels_last")
    args = parser.parse_args()
    precision, _, layout = args.numerics.partition("+")
    wanted = Numerics(precision, layout == "channels_last")
    loop, chosen = cnnlab_loop(args.model, wanted, args.images)
    a = floor(args.model, chosen, steps=max(10, args.images // BATCH // 2))
    c = conventional(args.model, chosen, args.images)
    print(f"{args.model} on Fashion-MNIST 1x28x28, batch {BATCH}, numerics {chosen.label}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    print("| measurement | images/s |\n|---|---|")
    print(f"| (a) floor: step on one resident batch | {a:.0f} |")
    print(f"| (b) cnnlab training loop | {loop:.0f} |")
    print(f"| (c) conventional DataLoader loop, 2 workers | {c:.0f} |")
    print(f"\nb/a = {loop / a:.2f}   b/c = {loop / c:.2f}")


if __name__ == "__main__":
    main()
