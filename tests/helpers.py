"""Test helpers: a small real-data run, and ways to call the CLI in-process or as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import cnnlab
from cnnlab.cli import main
from cnnlab.data.datasets import Splits
from cnnlab.data.download import locate
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.registry import model_entry

# Where cnnlab itself finds Fashion-MNIST ($CNNLAB_DATA, its cache, the Debian folder), looked up
# at import, before conftest.py isolates the cache and the environment of each test.
FASHION = locate("fashion_mnist")

# A small but real Fashion-MNIST run: narrow preact-ResNet-20, fixed numerics (so two runs
# are comparable bit for bit), a few hundred images.
SMALL = [
    "model.base_width=8",
    "data.train_limit=768",
    "data.test_limit=400",
    "train.epochs=2",
    "train.eval_every=1",  # the default recipe tests once at the end; these runs test per epoch
    "train.batch_size=64",
    "train.eval_batch_size=200",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.device=cpu",  # bit-for-bit comparisons need the same kernels on every machine
]

# The smallest real run: 2 epochs of 4 steps on 256 images, on the CPU (runs compared bit for bit
# across processes need the same kernels), every epoch evaluated and probed.
TINY_CPU = [
    "model.base_width=4",
    "data.train_limit=256",
    "data.test_limit=128",
    "train.epochs=2",
    "train.eval_every=1",
    "train.batch_size=64",
    "train.eval_batch_size=128",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.device=cpu",
    "probes.batch_size=64",
    "eval.tta=none",
]

# A missing dataset fails these tests with a message (conftest.py's fixture), never skips them.
needs_fashion = pytest.mark.usefixtures("fashion_mnist_data")


def assert_learned(error: float, measured: float, chance: float) -> None:
    """Assert a learning test's error stays near the error it measured: at most a quarter of the
    way from `measured` to `chance`, so a model that learns half as well (halfway) fails."""
    bound = measured + (chance - measured) / 4
    assert error <= bound, f"error {error:.2f}% > {bound:.2f}% (measured {measured}%)"


def cli(*args: str) -> int:
    """Run `cnnlab ARGS` in this process and return its exit status."""
    return main(list(args))


def cli_process(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `python -m cnnlab ARGS` in a subprocess (one torch thread) and capture its output."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


def read_metrics(run: Path) -> list[dict]:
    """Return the rows of a run's metrics.jsonl."""
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def files_below(folder: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple[int, bytes]]:
    """Return {relative path: (mtime_ns, bytes)} of every file below `folder` but `skip` names.

    Recursive because a run folder has sub-folders (TensorBoard's event files).
    """
    return {
        str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip
    }


def without_timing(rows: list[dict]) -> list[dict]:
    """Drop the wall-clock fields of metrics rows, which differ between equal runs."""
    return [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k} for r in rows]


def temp_files(folder: Path) -> list[str]:
    """Return the names of the temp files (unfinished atomic writes) anywhere below `folder`."""
    return [p.name for p in folder.rglob("*") if ".tmp" in p.name]


def assert_same_tree(a: object, b: object, where: str = "") -> None:
    """Assert two checkpoint values (nested dicts, lists, tensors, numbers) are bitwise equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), f"{where}: keys differ"
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def assert_same_run(whole: Path, resumed: Path) -> None:
    """Assert the resumed run ended exactly where the uninterrupted one did: weights, optimizer,
    callbacks, RNG states (every rank's under DDP) and metrics.jsonl, with no temp file left."""
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(resumed / "last.pt")
    for key in ("model", "optimizer", "callbacks", "architecture", "epoch", "step", "best"):
        assert_same_tree(a[key], b[key], key)
    assert_same_tree(a["rng"], b["rng"], "rng")
    assert_same_tree(a.get("rng_by_rank"), b.get("rng_by_rank"), "rng_by_rank")
    assert without_timing(read_metrics(whole)) == without_timing(read_metrics(resumed))
    assert (resumed / "summary.json").exists()
    assert temp_files(resumed) == []


# Per family, overrides that shrink a variant to its family's narrowest, shallowest valid form
# with the same block type and options, so the whole registry runs in seconds. Depth and width
# are what make the big variants slow; their full-size parameter counts are checked in the
# family tests (test_models_resnet.py, test_zoo_a.py, test_zoo_b.py).
def _shallow(kw: dict, basic: int, bottleneck: int) -> int:
    return bottleneck if kw.get("block") == "bottleneck" else basic


def _narrow_layout(kw: dict) -> dict:
    return {"layout": [v if v == "M" else max(4, v // 16) for v in kw["layout"]]}


SHRINK = {
    "CifarResNet": lambda kw: {"base_width": 4, "depth": _shallow(kw, 8, 11)},
    "PreactResNet": lambda kw: {"base_width": 4, "depth": _shallow(kw, 8, 11)},
    "WideResNet": lambda kw: {"widen": 1, "base_width": 4, "depth": 10},
    "DenseNet": lambda kw: {"growth": 4, "depth": 10 if kw.get("bottleneck") else 7},
    "PyramidNet": lambda kw: {"alpha": 8, "base_width": 4, "depth": _shallow(kw, 8, 11)},
    "CifarResNeXt": lambda kw: {"cardinality": 2, "base_width": 4, "stem_width": 8, "depth": 11},
    "ShakeShakeNet": lambda kw: {"base_width": 4, "stem_width": 4, "depth": 8},
    "CifarVGG": _narrow_layout,
    "ImageNetResNet": lambda kw: (
        {"depth": min(kw["depth"], 50)} | ({"base_width": 4} if kw["depth"] >= 50 else {})
    ),
    "ImageNetDenseNet": lambda kw: {
        "growth_rate": 4,
        "init_features": 8,
        "block_config": (1, 1, 1, 1),
    },
    "ImageNetVGG": lambda kw: {"hidden": 256},
    "ReCUResNet20": lambda kw: {"base_width": 4, "depth": 8},
    "ReCUResNet18": lambda kw: {"base_width": 4, "blocks": (1, 1, 1, 1)},
    "ReCUVGGSmall": lambda kw: {"width": 4},
    "NRImageNetVGG": lambda kw: {"base_width": 4},
    "ReCUImageNetResNet": lambda kw: {"base_width": 4, "blocks": (1, 1, 1, 1)},
    "ReCUTwoStageResNet": lambda kw: {"base_width": 4, "blocks": (1, 1, 1, 1)},
    "SpeedNet": lambda kw: {"widths": (4, 8, 8, 16)},
    "Airbench94": lambda kw: {"width": 4},
}
IMAGENET_FAMILIES = ("ImageNetResNet", "ImageNetDenseNet", "ImageNetVGG", "NRImageNetVGG",
                     "ReCUImageNetResNet", "ReCUTwoStageResNet")  # fmt: skip


def small_model(name: str, in_channels: int, num_classes: int) -> torch.nn.Module:
    """Build `name` shrunk by its family's SHRINK rule (same block type and options)."""
    entry = model_entry(name)
    family = entry.factory.__name__
    kwargs = {**entry.defaults, **entry.fixed}
    kwargs.update(SHRINK[family](kwargs))
    return entry.factory(**kwargs, in_channels=in_channels, num_classes=num_classes)


def tiny_rgb_data() -> Splits:
    """Return 64 training and 16 test random 8x8 RGB images with labels 0-9 (fixed seed)."""
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (64, 8, 8, 3), dtype=torch.uint8, generator=g)
    test = torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8, generator=g)
    return cnnlab.datasets.from_tensors(train, torch.arange(64) % 10, test, torch.arange(16) % 10,
                                        mean=(0.5,) * 3, std=(0.25,) * 3)  # fmt: skip
