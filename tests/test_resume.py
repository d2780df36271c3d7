"""Exact resume: a run SIGKILLed mid-epoch and resumed equals an uninterrupted run, bit for bit."""

import os
import signal
import subprocess
import sys
import time

import torch

from cnnlab.engine.checkpoint import load_checkpoint
from tests.helpers import (
    SMALL,
    cli_process,
    files_below,
    needs_fashion,
    read_metrics,
    without_timing,
)

pytestmark = needs_fashion

RUN_ARGS = [*SMALL, "train.epochs=3", "data.train_limit=1536", "augment.crop_padding=2"]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = cli_process("train", "--out", str(whole), *RUN_ARGS)
    assert done.returncode == 0, done.stderr

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", "train", "--out", str(killed), *RUN_ARGS],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    deadline = time.time() + 240
    while not (killed / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.05)
    # A third of the way into epoch 2: epoch 1 took about as long as the time already spent.
    time.sleep(0.3 * read_metrics(killed)[0]["seconds"])
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1

    resumed = cli_process("train", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr

    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(killed / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["step"] == b["step"]
    assert without_timing(read_metrics(whole)) == without_timing(read_metrics(killed))
    assert "resumed after epoch 1" in (killed / "log.txt").read_text()


def test_resuming_a_finished_run_is_refused_and_changes_nothing(tmp_path):
    run = tmp_path / "run"
    assert cli_process("train", "--out", str(run), *SMALL).returncode == 0
    before = files_below(run, skip=("log.txt",))  # the log records the refusal
    again = cli_process("train", "--resume", str(run))
    assert again.returncode == 2
    assert "already finished" in again.stderr
    assert files_below(run, skip=("log.txt",)) == before
