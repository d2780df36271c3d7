"""DDP under torchrun: disjoint shards, one writer, learning, exact resume, eval."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cnnlab.data.loader import InMemoryLoader
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.distributed import DistInfo, convert_sync_bn
from cnnlab.errors import UserError
from cnnlab.inference.evaluate_checkpoint import evaluate_checkpoint
from tests.helpers import assert_learned, needs_fashion, read_metrics, without_timing

MEASURED_DDP = 41.75  # test error (%) measured: 2 processes x 2 epochs, fp32 on the CPU

RUN_ARGS = [
    "data.train_limit=1000",
    "data.test_limit=400",
    "model.base_width=8",
    "train.epochs=2",
    "train.batch_size=50",  # the global batch: 2 processes x 25
    "train.eval_batch_size=200",
    "optim.lr=0.05",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.device=cpu",
    "augment.crop_padding=2",
]
RUN_FILES = {"config.yaml", "metrics.jsonl", "log.txt", "last.pt", "summary.json", "curves.png"}


def _loader(world: int, rank: int, train: bool) -> InMemoryLoader:
    n = 103
    images = torch.zeros(n, 4, 4, 1, dtype=torch.uint8)
    labels = torch.arange(n)  # the label is the index, so batches show which images they hold
    return InMemoryLoader(
        images, labels, (0.5,), (0.25,), 10 if train else 7, torch.device("cpu"), train,
        seed=3, rank=rank, world=world,
    )  # fmt: skip


def test_in_memory_shards_are_disjoint_and_make_up_the_one_process_batch():
    one = list(_loader(1, 0, True).epoch(4))
    parts = [list(_loader(2, r, True).epoch(4)) for r in (0, 1)]
    assert len(one) == len(parts[0]) == len(parts[1]) == 10
    for whole, a, b in zip(one, *parts):
        assert len(a.labels) == len(b.labels) == 5
        assert not set(a.labels.tolist()) & set(b.labels.tolist())
        assert sorted(a.labels.tolist() + b.labels.tolist()) == sorted(whole.labels.tolist())
    shard = [_loader(2, r, False) for r in (0, 1)]
    seen = [int(x) for s in shard for batch in s.epoch(0) for x in batch.labels]
    assert sorted(seen) == list(range(103)) and shard[0].num_images == 103


def test_sync_bn_on_the_cpu_is_a_clear_error():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    with pytest.raises(UserError, match="SyncBatchNorm does not run on the CPU"):
        convert_sync_bn(model, DistInfo(rank=0, world=2), torch.device("cpu"))
    same, note = convert_sync_bn(model, DistInfo(), torch.device("cpu"))
    assert same is model and "one process" in note


def _torchrun(*args: str, cwd: Path) -> subprocess.Popen:
    launcher = Path(sys.executable).with_name("torchrun")
    cmd = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [*cmd, "--standalone", "--nproc_per_node=2", "-m", "cnnlab", "train", *args],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


@needs_fashion
def test_torchrun_two_processes_learn_write_one_run_folder_and_resume_exactly(tmp_path):
    whole, stopped = tmp_path / "whole", tmp_path / "stopped"
    proc = _torchrun("--out", str(whole), *RUN_ARGS, cwd=tmp_path)
    deadline = time.time() + 120
    while not (whole / "metrics.jsonl").exists() and proc.poll() is None:
        assert time.time() < deadline, "no epoch finished in time"
        time.sleep(0.02)
    # What a kill during epoch 2 leaves behind: nothing is written mid-epoch, so a copy of the
    # folder as epoch 1 left it is exactly that state. Resume it while the whole run goes on.
    stopped.mkdir()
    for name in ("config.yaml", "last.pt", "metrics.jsonl", "log.txt"):
        shutil.copy2(whole / name, stopped / name)
    assert load_checkpoint(stopped / "last.pt")["epoch"] == 1
    resumed = _torchrun("--resume", str(stopped), cwd=tmp_path)
    out, resumed_out = proc.communicate(timeout=180)[0], resumed.communicate(timeout=180)[0]
    assert proc.returncode == 0, out[-3000:]
    assert resumed.returncode == 0, resumed_out[-3000:]

    # Exactly one set of run files: rank 1 wrote nothing, nothing was written twice.
    assert {p.name for p in tmp_path.iterdir()} == {"whole", "stopped"}
    names = {p.name for p in whole.iterdir()}
    assert RUN_FILES <= names <= RUN_FILES | {"tensorboard"}
    if "tensorboard" in names:
        assert len(list((whole / "tensorboard").iterdir())) == 1
    log = (whole / "log.txt").read_text()
    assert log.count("numerics:") == 1 and log.count("epoch 2/2") == 1
    assert "distributed: 2 processes (gloo), global batch 50 = 2 x 25" in log
    assert "data shards: 2 ranks read 500, 500 images this epoch, pairwise disjoint" in log
    assert out.count("done in") == 1  # rank 1 prints nothing

    rows = read_metrics(whole)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert_learned(rows[-1]["test_error"], measured=MEASURED_DDP, chance=90.0)

    # The resumed run ends bit for bit where the uninterrupted one did.
    a, b = load_checkpoint(whole / "last.pt"), load_checkpoint(stopped / "last.pt")
    assert a["processes"] == 2 and len(a["rng_by_rank"]) == 2
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert without_timing(read_metrics(whole)) == without_timing(read_metrics(stopped))
    assert "resumed after epoch 1" in (stopped / "log.txt").read_text()

    # The checkpoint has plain keys and `cnnlab eval` loads it (on all 10,000 test images; the
    # run used the first 400, so the errors are close but not equal).
    assert not any(k.startswith("module.") for k in a["model"])
    metrics = evaluate_checkpoint(whole / "last.pt", None, None)
    assert metrics["images"] == 10000
    assert abs(metrics["error"] - rows[-1]["test_error"]) < 10
