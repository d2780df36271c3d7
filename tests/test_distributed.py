"""DDP under torchrun: disjoint shards, one writer, learning, eval; one rank SIGKILLed, then
resumed exactly; bad data on one rank stops every rank at once with its message."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnlab.data.loader import InMemoryLoader
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.distributed import DistInfo, convert_sync_bn
from cnnlab.errors import UserError
from cnnlab.inference.evaluate_checkpoint import evaluate_checkpoint
from tests.folder_helpers import make_image_folder
from tests.helpers import (
    TINY_CPU,
    assert_learned,
    assert_same_run,
    needs_fashion,
    read_metrics,
    temp_files,
    without_timing,
)

# Test error (%) measured: WRN-16-4 at base width 2 with dropout, 2 processes x 2 epochs, fp32
# on the CPU.
MEASURED_DDP = 43.75

RUN_ARGS = [
    "data.train_limit=1000",
    "data.test_limit=400",
    "model.name=wrn16_4",
    "model.base_width=2",
    "model.dropout=0.1",  # draws from each rank's own global generator: resume must restore both
    "train.epochs=2",
    "train.batch_size=50",  # the global batch: 2 processes x 25
    "train.eval_batch_size=200",
    "optim.lr=0.2",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.device=cpu",
    "augment.crop_padding=2",
]
ROOT = Path(__file__).resolve().parents[1]
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


def _torchrun(
    *args: str, cwd: Path, fault: str | None = None, timeout: float = 300,
    program: tuple[str, ...] = ("-m", "cnnlab", "train"),
) -> subprocess.CompletedProcess:  # fmt: skip
    launcher = Path(sys.executable).with_name("torchrun")
    cmd = [str(launcher)] if launcher.exists() else [sys.executable, "-m", "torch.distributed.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # A script run from another folder imports this cnnlab, not an installed one.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("CNNLAB_FAULT", None)
    if fault is not None:
        env["CNNLAB_FAULT"] = fault
    return subprocess.run(
        [*cmd, "--standalone", "--nproc_per_node=2", *program, *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    """The uninterrupted 2-process run of RUN_ARGS, trained once for this module's tests."""
    base = tmp_path_factory.mktemp("ddp")
    done = _torchrun("--out", str(base / "whole"), *RUN_ARGS, cwd=base)
    assert done.returncode == 0, done.stderr[-3000:]
    assert {p.name for p in base.iterdir()} == {"whole"}  # rank 1 wrote nothing beside it
    (base / "stdout.txt").write_text(done.stdout)
    return base / "whole"


@needs_fashion
def test_torchrun_two_processes_learn_and_write_one_run_folder(whole):
    # Exactly one set of run files: rank 1 wrote nothing, nothing was written twice.
    names = {p.name for p in whole.iterdir()}
    assert RUN_FILES <= names <= RUN_FILES | {"tensorboard"}
    if "tensorboard" in names:
        assert len(list((whole / "tensorboard").iterdir())) == 1
    log = (whole / "log.txt").read_text()
    assert log.count("numerics:") == 1 and log.count("epoch 2/2") == 1
    assert "distributed: 2 processes (gloo), global batch 50 = 2 x 25" in log
    assert "data shards: 2 ranks read 500, 500 images this epoch, pairwise disjoint" in log
    assert (whole.parent / "stdout.txt").read_text().count("done in") == 1  # rank 1 prints nothing

    rows = read_metrics(whole)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert_learned(rows[-1]["test_error"], measured=MEASURED_DDP, chance=90.0)

    # Each rank has its own dropout stream, saved with the checkpoint.
    a = load_checkpoint(whole / "last.pt")
    assert a["processes"] == 2 and len(a["rng_by_rank"]) == 2
    assert not torch.equal(a["rng_by_rank"][0]["torch"], a["rng_by_rank"][1]["torch"])

    # The checkpoint has plain keys and `cnnlab eval` loads it (on all 10,000 test images; the
    # run used the first 400, so the errors are close but not equal).
    assert not any(k.startswith("module.") for k in a["model"])
    metrics = evaluate_checkpoint(whole / "last.pt", None, None)
    assert metrics["images"] == 10000
    assert abs(metrics["error"] - rows[-1]["test_error"]) < 10


def _assert_killed(done: subprocess.CompletedProcess, run: Path, temp: list[str]) -> None:
    # The job ended with the kill; the surviving rank stopped with one line, not a traceback;
    # the run folder holds epoch 1's files, whole, and only the named temp files beside them.
    assert done.returncode != 0 and "SIGKILL" in done.stderr, done.stderr[-3000:]
    assert not re.search(r'File ".*cnnlab', done.stderr), done.stderr[-3000:]
    assert temp_files(run) == temp
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(run)] == [1]


@needs_fashion
def test_one_rank_killed_then_resumed_under_torchrun_equals_the_uninterrupted_run(whole, tmp_path):
    run = tmp_path / "run"
    # 20 steps per epoch (1000 images, global batch 50): rank 1 dies in the 5th step of epoch 2.
    killed = _torchrun("--out", str(run), *RUN_ARGS, cwd=tmp_path, fault="train_step:25@1")
    _assert_killed(killed, run, temp=[])
    assert without_timing(read_metrics(run)) == without_timing(read_metrics(whole)[:1])
    # The resumed job loses rank 0 between epoch 2's complete temp checkpoint and its rename:
    # last.pt is still epoch 1's.
    again = _torchrun("--resume", str(run), cwd=tmp_path, fault="last.pt_before_rename:1@0")
    _assert_killed(again, run, temp=["last.pt.tmp"])

    resumed = _torchrun("--resume", str(run), cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (run / "log.txt").read_text()
    assert log.count("resumed after epoch 1") == 2 and "last.pt.tmp" in log
    assert_same_run(whole, run)


def _folder_args(root: Path) -> list[str]:
    # A tiny image-folder run, tested only at the end (eval_every=2), after epoch 1's checkpoint.
    return [
        "data.name=folder", f"data.root={root}", "data.image_size=16", "data.workers=0",
        "model.name=resnet20", "model.base_width=4", "train.batch_size=4",
        "train.eval_batch_size=4", "train.epochs=2", "train.eval_every=2",
        "train.precision=fp32", "train.channels_last=false", "train.device=cpu",
    ]  # fmt: skip


def _failed_job(tmp_path: Path, root: Path) -> tuple[Path, list[str]]:
    # Run the job; return its folder and the error lines on stderr. Every rank must be gone
    # well within 60 s: a hang raises TimeoutExpired here.
    run = tmp_path / "run"
    done = _torchrun("--out", str(run), *_folder_args(root), cwd=tmp_path, timeout=60)
    assert done.returncode != 0
    assert not re.search(r'File ".*cnnlab', done.stderr), done.stderr[-3000:]  # no traceback
    return run, [line for line in done.stderr.splitlines() if "cnnlab: error:" in line]


def test_bad_data_on_one_rank_stops_every_rank_at_once_with_its_one_line(tmp_path):
    # Rank r evaluates test images r, r+2, ... in sorted order, so the 2nd is rank 1's alone.
    root = make_image_folder(tmp_path / "images", per_class=4, val_per_class=2, corrupt=False)
    bad = root / "val" / "blue" / "blue_001.png"
    bad.write_bytes(b"\x89PNG not really")
    run, lines = _failed_job(tmp_path, root)
    reads = [line for line in lines if "cannot read this image" in line]
    assert len(reads) == 1 and reads[0].startswith(f"[rank 1] cnnlab: error: {bad}:"), lines
    # Rank 0, waiting for rank 1 in a collective, says in one line why it stopped (unless
    # torchrun's SIGTERM came first).
    assert all("failed first" in line for line in lines if line not in reads), lines
    # What epoch 1 wrote is whole; nothing was half written.
    assert temp_files(run) == []
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert [r["epoch"] for r in read_metrics(run)] == [1]


def test_a_bad_image_every_rank_meets_is_reported_once(tmp_path):
    # Every rank decodes the same fixed probe batch of training images, the first one included.
    root = make_image_folder(tmp_path / "images", per_class=4, val_per_class=2, corrupt=False)
    bad = root / "train" / "blue" / "blue_000.jpg"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    run, lines = _failed_job(tmp_path, root)
    assert len(lines) == 1 and lines[0].startswith(f"cnnlab: error: {bad}: cannot read"), lines
    assert {p.name for p in run.iterdir()} <= {"config.yaml", "log.txt", "tensorboard"}


# A user's script: one epoch, then the same run made two epochs long, through the Python API.
API_SCRIPT = """
import json, sys
import cnnlab

out = sys.argv[1]
first = cnnlab.train(None, overrides=sys.argv[2:], out=out)
second = cnnlab.train(resume=out, extend_epochs=2)
print(json.dumps([first["epochs"], second["epochs"]]))
"""


@needs_fashion
def test_cnnlab_train_under_torchrun_joins_the_job_and_extends_a_run(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(API_SCRIPT)
    args = [*TINY_CPU, "train.epochs=1", "probes.enabled=false"]
    done = _torchrun(str(tmp_path / "run"), *args, cwd=tmp_path, program=(str(script),))
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("[1, 2]") == 2  # each rank trained both sessions
    assert {p.name for p in tmp_path.iterdir()} == {"train.py", "run"}  # one run folder
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["epochs"] == 2
    assert (summary["processes"], summary["global_batch"], summary["batch_per_process"]) == (
        2,
        64,
        32,
    )
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "data shards: 2 ranks read 128, 128 images this epoch, pairwise disjoint" in log
    assert "extended from 1 to 2 epochs" in log
