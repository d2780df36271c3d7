"""`cnnlab sweep`: run folders per (grid point x seed), kill and re-run, shards, failures."""

import os
import signal
import subprocess
import sys
import time

import pytest

from cnnlab.config import DEFAULT_RECIPE
from cnnlab.experiments.plan import SweepSpec, parse_grid, plan, shard, split_values
from cnnlab.experiments.report import build_report
from tests.helpers import cli, cli_process, files_below, needs_fashion
from tests.sweep_helpers import TINY, shared_sweep, sweep_args

RUN_NAMES = [f"optim.lr={lr}/seed{seed}" for lr in ("0.05", "0.1") for seed in (0, 1)]
ONE_EPOCH = [*TINY, "train.epochs=1", "data.train_limit=128"]


def _table(out):
    # The statistics of a report, without the wall-clock columns that differ between equal runs.
    timing = ("wall_seconds_median", "train_images_per_s_median")
    return [{k: v for k, v in row.items() if k not in timing} for row in build_report([out]).rows]


def _sweep_log(out):
    # Lines read: date time host:pid shard i/n STATUS run-name detail...
    return [line.split() for line in (out / "sweep.log").read_text().splitlines()]


def test_grid_values_split_outside_brackets_and_the_plan_is_point_by_seed():
    assert split_values("0.1, [80,120],x") == ["0.1", "[80,120]", "x"]
    spec = SweepSpec("r.yaml", (), parse_grid(["optim.lr=0.05,0.1", "model.name=a,b"]), (0, 1))
    runs = plan(spec)
    assert [r.name for r in runs[:3]] == [
        "optim.lr=0.05,model.name=a/seed0", "optim.lr=0.05,model.name=a/seed1",
        "optim.lr=0.05,model.name=b/seed0",
    ]  # fmt: skip
    assert [r.index for r in runs] == list(range(8))
    assert plan(SweepSpec("r.yaml"))[0].name == "base/seed0"


@pytest.mark.parametrize("count", [1, 2, 3, 5, 9])
def test_shards_cover_every_run_exactly_once(count):
    runs = plan(SweepSpec("r.yaml", (), parse_grid(["a=1,2,3", "b=x,y"]), (0, 1, 2)))
    taken = [r.index for i in range(count) for r in shard(runs, i, count)]
    assert sorted(taken) == list(range(len(runs)))


@needs_fashion
def test_a_sweep_makes_one_named_run_folder_per_point_and_seed(tmp_path_factory):
    out = shared_sweep(tmp_path_factory)
    for name in RUN_NAMES:
        assert '"finished": true' in (out / name / "summary.json").read_text(), name
    cfg = (out / "optim.lr=0.1/seed1/config.yaml").read_text()
    assert "lr: 0.1\n" in cfg and "seed: 1\n" in cfg
    recorded = (out / "sweep.yaml").read_text()
    assert "optim.lr:" in recorded and "- 0\n  - 1\n" in recorded
    assert sum(line[5] == "trained" for line in _sweep_log(out)) == 4


@needs_fashion
def test_a_killed_sweep_rerun_keeps_finished_runs_and_gives_the_same_table(
    tmp_path, tmp_path_factory
):
    out = tmp_path / "sweep"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cnnlab", *sweep_args(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    first, second = out / RUN_NAMES[0], out / RUN_NAMES[1]
    # Kill -9 once the first run is done and the second has saved its first epoch.
    deadline = time.time() + 240
    while not ((first / "summary.json").exists() and (second / "last.pt").exists()):
        assert proc.poll() is None and time.time() < deadline, "the sweep ended before the kill"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (second / "summary.json").exists(), "the second run finished before the kill"
    before = files_below(first)

    again = cli_process(*sweep_args(out))
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{RUN_NAMES[0]}: skipped" in again.stdout
    assert f"{RUN_NAMES[1]}: resumed" in again.stdout
    assert "resumed after epoch 1" in (second / "log.txt").read_text()
    after = files_below(first)
    assert after == before  # the finished run was not touched, let alone retrained
    assert _table(out) == _table(shared_sweep(tmp_path_factory))


@needs_fashion
def test_two_shards_share_a_folder_and_run_each_run_once(tmp_path, capsys):
    out = tmp_path / "sweep"
    args = ["sweep", str(DEFAULT_RECIPE), *ONE_EPOCH, "--grid", "optim.lr=0.05,0.1,0.2"]
    args += ["--out", str(out)]
    assert cli(*args, "--shard", "0/2") == 0
    assert cli(*args, "--shard", "1/2") == 0
    trained = sorted((line[4], line[6]) for line in _sweep_log(out) if line[5] == "trained")
    assert trained == [("0/2", "optim.lr=0.05/seed0"), ("0/2", "optim.lr=0.2/seed0"),
                       ("1/2", "optim.lr=0.1/seed0")]  # fmt: skip
    for name in ("optim.lr=0.05", "optim.lr=0.1", "optim.lr=0.2"):
        log = (out / name / "seed0" / "log.txt").read_text()
        assert log.count("cnnlab run") == 1 and "resumed" not in log

    capsys.readouterr()
    assert cli(*args, "--shard", "1/2") == 0  # again: nothing left to do
    assert "optim.lr=0.1/seed0: skipped" in capsys.readouterr().out
    assert cli(*args, "--seeds", "2") == 2  # a different sweep in the same folder is refused
    err = capsys.readouterr().err
    assert "holds a different sweep" in err and "seeds: [0] there, [0, 1] asked" in err


@needs_fashion
def test_failing_runs_are_recorded_and_the_others_finish(tmp_path, capsys):
    out = tmp_path / "sweep"
    grid = ["--grid", "optim.lr=0.05,-1", "--grid", "model.name=preact_resnet20,no_such_net"]
    args = ["sweep", str(DEFAULT_RECIPE), *ONE_EPOCH, *grid, "--out", str(out)]
    assert cli(*args) == 1
    good = out / "optim.lr=0.05,model.name=preact_resnet20" / "seed0"
    assert '"finished": true' in (good / "summary.json").read_text()
    bad_lr = (out / "optim.lr=-1,model.name=preact_resnet20/seed0/error.txt").read_text()
    assert "config key 'optim.lr'" in bad_lr
    bad_model = (out / "optim.lr=0.05,model.name=no_such_net/seed0/error.txt").read_text()
    assert "unknown model 'no_such_net'" in bad_model
    log = (out / "sweep.log").read_text()
    assert log.count(" failed ") == 3 and "1 ok, 3 failed" in log
    assert "3 failed" in capsys.readouterr().out

    summary_bytes = (good / "summary.json").read_bytes()
    assert cli(*args) == 1  # a re-run retries the failures and keeps the finished run
    assert (good / "summary.json").read_bytes() == summary_bytes
    assert "optim.lr=0.05,model.name=preact_resnet20/seed0: skipped" in capsys.readouterr().out

    report = build_report([out])
    assert [r["n"] for r in report.rows] == [1]
    assert sorted(r.status for r in report.left_out) == ["failed"] * 3
