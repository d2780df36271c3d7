"""Training throughput, measured side by side in one process, for each model and precision.

(a) floor:        forward + backward + SGD step on one resident batch (no data work at all);
(b) cnnlab:       the real training loop (batched augmentation, schedule, metrics, probes,
                  logging, checkpoint) via cnnlab's Trainer, timed over its training steps;
(c) conventional: a typical script: torch DataLoader with per-image pad/crop/flip/normalise in
                  2 worker processes, loss.item() every step.
Also (d), the evaluation images/s of cnnlab's loop (the test pass after the epoch). Prints
images/s and the ratios b/a (how close the loop is to the floor) and b/c.

Cases: preact_resnet20 on real Fashion-MNIST (1x28x28) and resnet20 on CIFAR-10 (3x32x32).
CIFAR-10 is read from --cifar-root when given; otherwise random images are written in the
exact CIFAR-10 python format to a temporary folder (only the speed is measured, so the
pixels do not matter). Each phase runs for about --seconds, so slow precisions (bf16 on a
CPU without bf16 units) finish too.

    python benchmarks/throughput.py [--precisions fp32,bf16] [--seconds 20] [--cifar-root DIR]
"""

from __future__ import annotations

import argparse
import pickle
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cnnlab.config import load_config
from cnnlab.data.download import PICKLE_LAYOUT
from cnnlab.data.sources import dataset_info, load_split
from cnnlab.engine.numerics import Numerics
from cnnlab.engine.run_folder import RunFolder
from cnnlab.engine.trainer import resolve_device
from cnnlab.registry import build_model
from cnnlab.run.training import build_trainer

BATCH = 128


@dataclass(frozen=True)
class Case:
    """One model on one dataset."""

    model: str
    data: str
    root: str | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """Return the input's (channels, height, width)."""
        info = dataset_info(self.data)
        return (info.channels, *info.image_size)


def write_random_cifar10(root: Path, seed: int = 0) -> None:
    """Write random images as the official CIFAR-10 python batches (5 x 10,000 + 10,000)."""
    layout = PICKLE_LAYOUT["cifar10"]
    folder = root / layout.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for name in (*layout.splits["train"], *layout.splits["test"]):
        batch = {
            b"data": rng.integers(0, 256, size=(10000, 3 * 32 * 32), dtype=np.uint8),
            b"labels": rng.integers(0, 10, size=10000).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))


class Stepper:
    """The model, SGD and one training step, set up the same way for (a) and (c)."""

    def __init__(self, case: Case, numerics: Numerics) -> None:
        torch.manual_seed(0)
        self.device = resolve_device("auto")
        self.numerics = numerics
        self.model = build_model(case.model, in_channels=case.shape[0])
        self.model.to(device=self.device, memory_format=numerics.memory_format)
        self.opt = torch.optim.SGD(self.model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward, backward and SGD update on one batch; return the loss (not synchronised)."""
        with self.numerics.autocast(self.device):
            logits = self.model(self.numerics.layout(x)).float()
            loss = torch.nn.functional.cross_entropy(logits, y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss


def floor(case: Case, numerics: Numerics, seconds: float) -> float:
    """Images/s of the bare training step on one resident batch."""
    stepper = Stepper(case, numerics)
    device = stepper.device
    x = numerics.layout(torch.randn(BATCH, *case.shape, device=device))
    y = torch.randint(0, 10, (BATCH,), device=device)
    for _ in range(3):
        stepper.step(x, y)
    _sync(device)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 5:
        stepper.step(x, y)
        steps += 1
    _sync(device)
    return steps * BATCH / (time.perf_counter() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def cnnlab_loop(case: Case, numerics: Numerics, images: int) -> tuple[float, float]:
    """Train/eval images/s of cnnlab's Trainer in the second of two epochs on `images` images."""
    overrides = [
        f"model.name={case.model}",
        f"data.name={case.data}",
        f"data.train_limit={images}",
        f"data.test_limit={max(BATCH, images // 4)}",
        "train.epochs=2",
        f"train.batch_size={BATCH}",
        f"train.precision={numerics.precision}",
        f"train.channels_last={str(numerics.channels_last).lower()}",
    ]
    if case.root:
        overrides.append(f"data.root={case.root}")
    cfg = load_config(None, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, RunFolder.create(Path(tmp) / "run"))
        trainer.fit()
        row = trainer.history[-1]
        return row["images_per_s"], row["test_images_per_s"]


class PerImage(Dataset):
    """The usual map-style dataset: one image at a time, transformed in a worker process."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, data: str) -> None:
        info = dataset_info(data)
        self.images, self.labels = images, labels
        self.mean = torch.tensor(info.mean)[:, None, None]
        self.std = torch.tensor(info.std)[:, None, None]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.images[i].permute(2, 0, 1).float().div(255)
        h, w = x.shape[1:]
        x = torch.nn.functional.pad(x, (4, 4, 4, 4))
        dy, dx = torch.randint(0, 9, (2,)).tolist()
        x = x[:, dy : dy + h, dx : dx + w]
        if torch.rand(()) < 0.5:
            x = x.flip(2)
        return (x - self.mean) / self.std, self.labels[i]


def conventional(case: Case, numerics: Numerics, images: int) -> float:
    """Images/s of a DataLoader loop with 2 workers, timed after its first 5 steps."""
    data = load_split(case.data, "train", case.root)
    dataset = PerImage(data.images[:images], data.labels[:images], case.data)
    loader = DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=2, drop_last=True)
    stepper = Stepper(case, numerics)
    seen, start = 0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == 5:
            seen, start = 0, time.perf_counter()
        loss = stepper.step(x.to(stepper.device), y.to(stepper.device))
        loss.item()  # what a typical script logs every step
        seen += len(y)
    return seen / (time.perf_counter() - start)


def measure(case: Case, numerics: Numerics, seconds: float) -> dict[str, float]:
    """Measure (a) .. (d) for one case and numerics; phases sized to about `seconds` each."""
    a = floor(case, numerics, seconds)
    # Enough images for ~`seconds` of training at the floor, at least 10 steps.
    images = max(10 * BATCH, round(a * seconds / BATCH) * BATCH)
    b, d = cnnlab_loop(case, numerics, images)
    c = conventional(case, numerics, images + 5 * BATCH)
    return {"a": a, "b": b, "c": c, "d": d, "images": images}


def main() -> None:
    """Measure every case in every precision and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase (a), (b), (c)")
    parser.add_argument("--cifar-root", help="folder with real CIFAR-10 (default: random images)")
    parser.add_argument("--models", default="preact_resnet20:fashion_mnist,resnet20:cifar10",
                        help="comma-separated model:dataset pairs")  # fmt: skip
    args = parser.parse_args()
    device = resolve_device("auto")
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"batch {BATCH}, channels-first")  # fmt: skip
    print("| model | input | precision | (a) floor | (b) cnnlab loop | (c) conventional "
          "| b/a | b/c | (d) cnnlab eval |\n|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.models.split(","):
            model, data = pair.split(":")
            root = args.cifar_root if data == "cifar10" else None
            if data == "cifar10" and root is None:
                root = tmp
                if not (Path(tmp) / PICKLE_LAYOUT["cifar10"].folder).exists():
                    write_random_cifar10(Path(tmp))
            case = Case(model, data, root)
            for precision in args.precisions.split(","):
                r = measure(case, Numerics(precision, False), args.seconds)
                shape = "x".join(map(str, case.shape))
                source = "random" if data == "cifar10" and not args.cifar_root else "real"
                print(f"| {model} | {shape} {data} ({source}) | {precision} | {r['a']:.0f} "
                      f"| {r['b']:.0f} | {r['c']:.0f} | {r['b'] / r['a']:.2f} "
                      f"| {r['b'] / r['c']:.2f} | {r['d']:.0f} |", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
