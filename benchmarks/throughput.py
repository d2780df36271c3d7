"""Training throughput, measured side by side in one process, for each model and precision.

(a) floor:        forward + backward + SGD step on one resident batch (no data work at all);
(g) graph floor:  the same step captured once as a CUDA graph and replayed (CUDA only: no
                  Python or kernel-launch cost at all, the lowest a step can cost; "n/a" on
                  the CPU, under --compile, and for fp16, whose GradScaler is not capture-safe);
(b) cnnlab steps: cnnlab's Trainer (batched augmentation, schedule, loss checks, callbacks'
                  step hooks), timed over the training steps of its second epoch only;
(e) cnnlab epoch: the same epoch's training images over its whole wall time: the steps plus
                  the test pass, probes, metrics, checkpoint and plot that follow it;
(c) conventional: a typical script: torch DataLoader with per-image pad/crop/flip/normalise,
                  loss.item() every step; pin_memory on CUDA. Each worker count of 0, 1, 2,
                  4, ... up to the usable CPUs is timed and the fastest is reported (its
                  count in brackets), so the loop is compared with its best setting.
Also (d), the evaluation images/s of cnnlab's loop (the test pass after the epoch). Prints
images/s and the ratios b/a (how close the steps are to the floor) and b/c. The floor and
cnnlab's loop run the same step (cnnlab/engine/step.py: autocast, GradScaler for fp16); the
graph floor runs that step's forward, loss, backward and SGD update inside the capture.
--compile puts torch.compile on the floor's model and train.compile=true on the loop.

Cases: preact_resnet20 on real Fashion-MNIST (1x28x28) and resnet20 on CIFAR-10 (3x32x32).
CIFAR-10 is read from --cifar-root when given; otherwise random images are written in the
exact CIFAR-10 python format to a temporary folder (only the speed is measured, so the
pixels do not matter). Each phase runs for about --seconds, so slow precisions (bf16 on a
CPU without bf16 units) finish too.

    python benchmarks/throughput.py [--precisions fp32,bf16,fp16] [--seconds 20] [--batch 128]
        [--compile] [--cifar-root DIR] [--models preact_resnet20:fashion_mnist] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from cnnlab.config import OptimConfig, TrainConfig, load_config
from cnnlab.data.download import PICKLE_LAYOUT
from cnnlab.data.sources import dataset_info, load_split
from cnnlab.engine.backends import apply_backend_policy
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.losses import multi_head_loss
from cnnlab.engine.numerics import Numerics
from cnnlab.engine.optim import build_optimizer
from cnnlab.engine.run_folder import RunFolder
from cnnlab.engine.step import make_scaler, train_step
from cnnlab.engine.trainer import resolve_device
from cnnlab.registry import build_model
from cnnlab.run.training import build_trainer


@dataclass(frozen=True)
class Case:
    """One model on one dataset, at a batch size, compiled or not, on a device ('auto': CUDA
    where available)."""

    model: str
    data: str
    root: str | None = None
    batch: int = 128
    compile: bool = False
    device: str = "auto"

    @property
    def shape(self) -> tuple[int, int, int]:
        """Return the input's (channels, height, width)."""
        info = dataset_info(self.data)
        return (info.channels, *info.image_size)


CIFAR10_CLASSES = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                   b"horse", b"ship", b"truck"]  # fmt: skip


def write_cifar10(
    root: Path, seed: int = 0, learnable: bool = False, per_batch: int = 10000
) -> None:
    """Write synthetic images as the official CIFAR-10 python batches (5 x 10,000 + 10,000,
    the same keys and batches.meta; `per_batch` images per file for a smaller set). Random
    pixels and labels by default (for speed only); `learnable`: each image is its class's
    fixed smooth pattern plus noise, so a net learns it."""
    layout = PICKLE_LAYOUT["cifar10"]
    folder = root / layout.folder
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    # Per class a pattern of 4x4 random colour blocks, upsampled to 32x32.
    patterns = np.repeat(np.repeat(rng.uniform(0, 255, (10, 3, 4, 4)), 8, axis=2), 8, axis=3)
    for name in (*layout.splits["train"], *layout.splits["test"]):
        labels = rng.integers(0, 10, size=per_batch)
        if learnable:
            noise = rng.uniform(-80, 80, size=(per_batch, 3, 32, 32))
            pixels = np.clip(patterns[labels] * 0.6 + 50 + noise, 0, 255).astype(np.uint8)
            data = pixels.reshape(per_batch, 3 * 32 * 32)
        else:
            data = rng.integers(0, 256, size=(per_batch, 3 * 32 * 32), dtype=np.uint8)
        batch = {
            b"batch_label": f"synthetic {name}".encode(),
            b"labels": labels.tolist(),
            b"data": data,
            b"filenames": [f"synthetic_{name}_{i}.png".encode() for i in range(per_batch)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": CIFAR10_CLASSES, b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))


class Stepper:
    """The model, SGD and one training step, set up the same way for (a), (g) and (c), under
    the backend policy of a cnnlab run with the default train.* keys (cudnn.benchmark on)."""

    def __init__(self, case: Case, numerics: Numerics) -> None:
        torch.manual_seed(0)
        self.device = resolve_device(case.device)
        defaults = TrainConfig()
        apply_backend_policy(self.device, defaults.cudnn_benchmark, defaults.tf32,
                             defaults.deterministic)  # fmt: skip
        self.numerics = numerics
        self.model = build_model(case.model, in_channels=case.shape[0])
        self.model.to(device=self.device, memory_format=numerics.memory_format)
        self.train_model = torch.compile(self.model) if case.compile else self.model
        sgd = OptimConfig(name="sgd", lr=0.01, momentum=0.9, nesterov=True, weight_decay=0.0)
        self.opt = build_optimizer(self.model, sgd, fused=self.device.type == "cuda")
        self.scaler = make_scaler(numerics.precision, self.device)

    def step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Forward, backward and SGD update on one batch; return the loss (not synchronised)."""
        out = train_step(self.train_model, self.opt, self.numerics, self.scaler, x, y, 0.0,
                         lambda: None)  # fmt: skip
        return out.loss


def floor(case: Case, numerics: Numerics, seconds: float) -> float:
    """Images/s of the bare training step on one resident batch."""
    stepper = Stepper(case, numerics)
    device = stepper.device
    x = numerics.layout(torch.randn(case.batch, *case.shape, device=device))
    y = torch.randint(0, 10, (case.batch,), device=device)
    for _ in range(3):
        stepper.step(x, y)
    _sync(device)
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 5:
        stepper.step(x, y)
        steps += 1
    _sync(device)
    return steps * case.batch / (time.perf_counter() - start)


def graph_floor(case: Case, numerics: Numerics, seconds: float) -> tuple[float | None, str]:
    """Images/s of the floor's step captured as one CUDA graph and replayed, and a note; None
    where no graph can be captured (CPU, compiled model, fp16's GradScaler) or capture failed."""
    device = resolve_device(case.device)
    if device.type != "cuda":
        return None, "n/a on CPU"
    if case.compile:
        return None, "n/a with --compile"
    if numerics.precision == "fp16":
        return None, "n/a for fp16 (GradScaler's step reads found_inf on the host)"
    # CUDA only from here on (never run in this project yet: no GPU has been lent).
    stepper = Stepper(case, numerics)
    x = numerics.layout(torch.randn(case.batch, *case.shape, device=device))
    y = torch.randint(0, 10, (case.batch,), device=device)

    def step() -> None:
        # Autocast's weight-cast cache must be off while capturing (torch.cuda.graph docs).
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=numerics.precision == "bf16",
                            cache_enabled=False):  # fmt: skip
            logits = stepper.train_model(x)
        multi_head_loss(logits, y).backward()
        stepper.opt.step()

    try:
        # Warm up on a side stream (lazy init, cuDNN autotuning), as torch's recipe says.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                stepper.opt.zero_grad(set_to_none=True)
                step()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        stepper.opt.zero_grad(set_to_none=True)  # grads are then allocated inside the graph
        with torch.cuda.graph(graph):
            step()
    except RuntimeError as exc:  # report it and keep the other measurements
        return None, f"capture failed: {str(exc).splitlines()[0][:200]}"
    torch.cuda.synchronize()
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or steps < 5:
        graph.replay()
        steps += 1
    torch.cuda.synchronize()
    return steps * case.batch / (time.perf_counter() - start), "whole step in one CUDA graph"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


class EpochWall(Callback):
    """Wall time from the start of the last epoch to the end of the run (its eval, probes,
    checkpoint and plot included)."""

    def __init__(self) -> None:
        self.start = self.seconds = 0.0

    def on_epoch_start(self, trainer: object, epoch: int) -> None:
        """Note the epoch's start."""
        _sync(trainer.device)
        self.start = time.perf_counter()

    def on_train_end(self, trainer: object, summary: dict) -> None:
        """Note the run's end."""
        _sync(trainer.device)
        self.seconds = time.perf_counter() - self.start


def cnnlab_loop(case: Case, numerics: Numerics, images: int) -> tuple[float, float, float]:
    """Step, whole-epoch and eval images/s of cnnlab's Trainer in the second of two epochs on
    `images` images."""
    overrides = [
        f"model.name={case.model}",
        f"data.name={case.data}",
        f"data.train_limit={images}",
        f"data.test_limit={max(case.batch, images // 4)}",
        "train.epochs=2",
        "train.eval_every=1",
        f"train.batch_size={case.batch}",
        f"train.precision={numerics.precision}",
        f"train.channels_last={str(numerics.channels_last).lower()}",
        f"train.compile={str(case.compile).lower()}",
        f"train.device={case.device}",
    ]
    if case.root:
        overrides.append(f"data.root={case.root}")
    cfg = load_config(None, overrides)
    wall = EpochWall()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(
            cfg, RunFolder.create(Path(tmp) / "run"), callbacks=[wall], progress=False
        )
        trainer.fit()
        row = trainer.history[-1]
        trained = trainer.steps_per_epoch * case.batch
        return row["images_per_s"], trained / wall.seconds, row["test_images_per_s"]


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


def worker_counts() -> list[int]:
    """Return the DataLoader worker counts tried: 0, 1, 2, 4, ... up to the usable CPUs."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    counts, n = [0], 1
    while n <= (cpus or 1):
        counts.append(n)
        n *= 2
    return counts


def conventional(case: Case, numerics: Numerics, images: int) -> tuple[float, int, dict]:
    """Images/s of a DataLoader loop at its fastest worker count, that count, and the
    images/s of every count tried."""
    data = load_split(case.data, "train", case.root)
    dataset = PerImage(data.images[:images], data.labels[:images], case.data)
    rates = {w: _conventional_rate(case, numerics, dataset, w) for w in worker_counts()}
    best = max(rates, key=rates.get)
    return rates[best], best, rates


def _conventional_rate(case: Case, numerics: Numerics, dataset: PerImage, workers: int) -> float:
    """Images/s of one pass of the DataLoader loop with `workers`, timed after its first 5
    steps."""
    stepper = Stepper(case, numerics)
    loader = DataLoader(dataset, batch_size=case.batch, shuffle=True, num_workers=workers,
                        drop_last=True, pin_memory=stepper.device.type == "cuda")  # fmt: skip
    seen, start = 0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == 5:
            seen, start = 0, time.perf_counter()
        loss = stepper.step(x.to(stepper.device, non_blocking=True),
                            y.to(stepper.device, non_blocking=True))  # fmt: skip
        loss.item()  # what a typical script logs every step
        seen += len(y)
    return seen / (time.perf_counter() - start)


def measure(
    case: Case, numerics: Numerics, seconds: float, conventional_too: bool = True
) -> dict[str, Any]:
    """Measure (a) .. (g) for one case and numerics; phases sized to about `seconds` each
    ((c) that long per worker count)."""
    a = floor(case, numerics, seconds)
    g, g_note = graph_floor(case, numerics, seconds)
    # Enough images for ~`seconds` of training at the floor, at least 10 steps.
    images = max(10 * case.batch, round(a * seconds / case.batch) * case.batch)
    b, e, d = cnnlab_loop(case, numerics, images)
    c, workers, by_workers = (
        conventional(case, numerics, images + 5 * case.batch) if conventional_too
        else (None, None, {})
    )  # fmt: skip
    return {"a": a, "g": g, "g_note": g_note, "b": b, "e": e, "c": c, "c_workers": workers,
            "c_by_workers": by_workers, "d": d, "images": images}  # fmt: skip


def main() -> None:
    """Measure every case in every precision and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precisions", default="fp32,bf16", help="comma-separated")
    parser.add_argument("--batch", type=int, default=128, help="training batch size")
    parser.add_argument("--compile", action="store_true", help="torch.compile floor and loop")
    parser.add_argument("--no-conventional", action="store_true", help="skip (c)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--seconds", type=float, default=20.0, help="per phase (a), (b), (c)")
    parser.add_argument("--cifar-root", help="folder with real CIFAR-10 (default: random images)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N (default: auto)")
    parser.add_argument("--models", default="preact_resnet20:fashion_mnist,resnet20:cifar10",
                        help="comma-separated model:dataset pairs")  # fmt: skip
    args = parser.parse_args()
    device = resolve_device(args.device)
    print(f"torch {torch.__version__}, device {device}, {torch.get_num_threads()} threads, "
          f"batch {args.batch}, channels-first, compile {args.compile}")  # fmt: skip
    print("| model | input | precision | (a) floor | (g) graph floor | (b) cnnlab steps "
          "| (e) cnnlab epoch | (c) conventional [workers] | b/a | b/c | (d) cnnlab eval |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|")  # fmt: skip
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for pair in args.models.split(","):
            model, data = pair.split(":")
            root = args.cifar_root if data == "cifar10" else None
            if data == "cifar10" and root is None:
                root = tmp
                if not (Path(tmp) / PICKLE_LAYOUT["cifar10"].folder).exists():
                    write_cifar10(Path(tmp))
            case = Case(model, data, root, args.batch, args.compile, args.device)
            for precision in args.precisions.split(","):
                numerics = Numerics(precision, False)
                r = measure(case, numerics, args.seconds, not args.no_conventional)
                shape = "x".join(map(str, case.shape))
                source = "random" if data == "cifar10" and not args.cifar_root else "real"
                c, b_c = (
                    (f"{r['c']:.0f} [{r['c_workers']}]", f"{r['b'] / r['c']:.2f}") if r["c"]
                    else ("-", "-")
                )  # fmt: skip
                g = f"{r['g']:.0f}" if r["g"] else r["g_note"]
                print(f"| {model} | {shape} {data} ({source}) | {precision} | {r['a']:.0f} "
                      f"| {g} | {r['b']:.0f} | {r['e']:.0f} | {c} | {r['b'] / r['a']:.2f} "
                      f"| {b_c} | {r['d']:.0f} |", flush=True)  # fmt: skip
                results.append({"model": model, "data": data, "source": source,
                                "precision": precision, "batch": args.batch,
                                "compile": args.compile, **r})  # fmt: skip
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
