"""The fault hook kills exactly at the N-th visit of its point; RNG states round-trip through a
checkpoint file, per rank, and give the same draws afterwards."""

import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

from cnnlab.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from cnnlab.engine.distributed import rank_seed
from cnnlab.inference.evaluate_checkpoint import evaluate_checkpoint
from tests.helpers import TINY_CPU, cli, needs_fashion, read_metrics

VISITS = (
    "from cnnlab.engine.faults import fault_point\n"
    "for i in range(5):\n"
    "    fault_point('other')\n"
    "    fault_point('here')\n"
    "    print(i, flush=True)\n"
)


def _visits(fault: str | None, rank: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("CNNLAB_FAULT", "RANK")}
    if fault is not None:
        env["CNNLAB_FAULT"] = fault
    if rank is not None:
        env["RANK"] = rank  # as torchrun sets it
    return subprocess.run(
        [sys.executable, "-c", VISITS], capture_output=True, text=True, env=env, timeout=60
    )


def test_the_fault_hook_kills_at_the_nth_visit_of_its_point_only():
    killed = _visits("here:3")
    assert killed.returncode == -signal.SIGKILL
    assert killed.stdout.split() == ["0", "1"]  # the third visit never printed
    untouched = _visits(None)
    assert untouched.returncode == 0 and untouched.stdout.split() == ["0", "1", "2", "3", "4"]
    assert _visits("elsewhere:1").returncode == 0


def test_a_fault_aimed_at_one_rank_kills_that_rank_only():
    killed = _visits("here:2@1", rank="1")
    assert killed.returncode == -signal.SIGKILL and killed.stdout.split() == ["0"]
    assert _visits("here:2@1", rank="0").returncode == 0
    assert _visits("here:2@1").returncode == 0  # no torchrun: the one process is rank 0
    assert _visits("here:2@0").returncode == -signal.SIGKILL


@pytest.mark.parametrize("bad", ["here", "here:0", "here:x", ":2", "here:2@", "here:2@x"])
def test_a_malformed_fault_setting_fails_loudly_instead_of_never_killing(bad):
    done = _visits(bad)
    assert done.returncode == 1 and "expected POINT:N or POINT:N@RANK with N >= 1" in done.stderr


def _draws() -> tuple:
    return (torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)])


def test_rng_states_of_every_rank_round_trip_through_a_checkpoint(tmp_path):
    states, expected = [], []
    for rank in range(2):
        seed_everything(rank_seed(7, rank))
        _draws()  # some way into the streams, as at an epoch end
        states.append(rng_state())
        expected.append(_draws())
    assert expected[0] != expected[1]  # the ranks' streams differ
    save_checkpoint(tmp_path / "last.pt", {"model": {}, "rng_by_rank": states})
    loaded = load_checkpoint(tmp_path / "last.pt")["rng_by_rank"]
    for rank in (1, 0):
        seed_everything(12345)  # anything else in between
        set_rng_state(loaded[rank])
        assert _draws() == expected[rank]


@pytest.mark.needs_cuda
@needs_fashion
def test_a_cuda_run_saves_a_checkpoint_that_loads_on_the_cpu_and_evaluates_the_same(tmp_path):
    run = tmp_path / "run"
    args = [a for a in TINY_CPU if a != "train.device=cpu"] + ["train.device=cuda"]
    assert cli("train", "--out", str(run), *args) == 0
    state = load_checkpoint(run / "last.pt")
    assert all(v.device.type == "cpu" for v in state["model"].values())  # loadable anywhere
    metrics = evaluate_checkpoint(run / "last.pt", None, None)
    assert metrics["error"] == pytest.approx(read_metrics(run)[-1]["test_error"])
