"""Shared by the sweep and report tests: a tiny real Fashion-MNIST sweep, trained once."""

from __future__ import annotations

from pathlib import Path

from cnnlab.config import DEFAULT_RECIPE
from tests.helpers import cli_process

# Smaller than helpers.SMALL: a sweep trains several of these (about a second each).
TINY = [
    "model.base_width=8",
    "data.train_limit=256",
    "data.test_limit=200",
    "train.epochs=2",
    "train.batch_size=64",
    "train.eval_batch_size=200",
    "train.precision=fp32",
    "train.channels_last=false",
]
LR_GRID = ["--grid", "optim.lr=0.05,0.1", "--seeds", "2"]

_cache: dict[str, Path] = {}


def sweep_args(out: Path, *extra: str) -> list[str]:
    """Return the `cnnlab sweep` arguments of the 2 lr x 2 seed sweep into `out`."""
    return ["sweep", str(DEFAULT_RECIPE), *TINY, *LR_GRID, "--out", str(out), *extra]


def shared_sweep(tmp_path_factory) -> Path:
    """Return a finished 2 x 2 sweep, run once per session with 2 worker processes."""
    if "sweep" not in _cache:
        out = tmp_path_factory.mktemp("shared") / "sweep"
        # A separate process with one thread per run, so that tables compare bit for bit
        # with the other sweeps of these tests, whatever the machine's core count.
        done = cli_process(*sweep_args(out, "--workers", "2"))
        assert done.returncode == 0, done.stdout + done.stderr
        _cache["sweep"] = out
    return _cache["sweep"]
