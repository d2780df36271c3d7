"""Exact resume with every training option on: regularisers, mixing, EMA, BN policy, AdamW."""

import os
import signal
import subprocess
import sys
import time

import torch

from cnnlab.engine.checkpoint import load_checkpoint
from tests.helpers import SMALL, cli_process, needs_fashion, read_metrics, without_timing

pytestmark = needs_fashion

EVERYTHING = [
    "augment.cutout_size=8",
    "augment.erase_prob=0.5",
    "augment.mixup_alpha=1.0",
    "augment.cutmix_alpha=1.0",
    "augment.patch_shuffle_prob=0.2",
    "train.label_smoothing=0.1",
    "ema.decay=0.9",
    "bn.momentum=dynamic",
    "optim.name=adamw",
    "optim.lr=0.003",
    "optim.weight_decay=0.05",
    "optim.no_decay_bn_bias=true",
    "schedule.name=onecycle",
    "eval.tta=flip",
]
RUN_ARGS = [*SMALL, "train.epochs=3", "data.train_limit=1536", *EVERYTHING]


def test_sigkill_mid_epoch_then_resume_equals_an_uninterrupted_run_with_every_option(tmp_path):
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
    time.sleep(0.3 * read_metrics(killed)[0]["seconds"])  # a third into epoch 2
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(killed / "last.pt")["epoch"] == 1

    resumed = cli_process("train", "--resume", str(killed))
    assert resumed.returncode == 0, resumed.stderr

    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(killed / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    ema_a, ema_b = a["callbacks"]["ema"]["weights"], b["callbacks"]["ema"]["weights"]
    assert ema_a.keys() == a["model"].keys()
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    assert not all(torch.equal(ema_a[k], a["model"][k]) for k in ema_a)
    assert a["step"] == b["step"]
    rows = without_timing(read_metrics(whole))
    assert rows == without_timing(read_metrics(killed))
    assert all("ema_test_error" in r for r in rows)
