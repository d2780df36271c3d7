"""Test helpers: a small real-data run, and ways to call the CLI in-process or as a process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.cli import main

FASHION = Path("/usr/share/datasets/fashion-mnist")

# A small but real Fashion-MNIST run: narrow preact-ResNet-20, fixed numerics (so two runs
# are comparable bit for bit), a few hundred images.
SMALL = [
    "model.base_width=8",
    "data.train_limit=768",
    "data.test_limit=400",
    "train.epochs=2",
    "train.batch_size=64",
    "train.eval_batch_size=200",
    "train.precision=fp32",
    "train.channels_last=false",
]

needs_fashion = pytest.mark.skipif(
    not (FASHION / "train-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (make data installs it)",
)


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


def without_timing(rows: list[dict]) -> list[dict]:
    """Drop the wall-clock fields of metrics rows, which differ between equal runs."""
    return [{k: v for k, v in r.items() if "seconds" not in k and "per_s" not in k} for r in rows]
