"""`cnnlab tune`: an Optuna study on the validation split that never reads the test split."""

import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from cnnlab.config import DEFAULT_RECIPE, load_config
from cnnlab.data import datasets
from cnnlab.experiments import tune as tuning
from tests.helpers import cli, needs_fashion, read_metrics

TINY = ["model.base_width=4", "data.train_limit=256", "train.epochs=2", "train.batch_size=64",
        "train.eval_batch_size=200", "train.precision=fp32", "train.channels_last=false",
        "probes.enabled=false", "eval.tta=none"]  # fmt: skip
SPACE = ["--param", "optim.lr=log:0.01:0.5", "--param", "model.base_width=cat:4,8"]


def _tune(out, *extra):
    return cli("tune", str(DEFAULT_RECIPE), *TINY, *SPACE, "--val-size", "200", "--out",
               str(out), "--study", "t", "--startup-trials", "1", *extra)  # fmt: skip


@needs_fashion
def test_a_study_tunes_on_val_only_resumes_and_shows_its_best(tmp_path, capsys, monkeypatch):
    read = []
    real = datasets.load_split

    def spy(name, split, *args, **kwargs):
        read.append(split)
        return real(name, split, *args, **kwargs)

    monkeypatch.setattr(datasets, "load_split", spy)
    out = tmp_path / "study"
    assert _tune(out, "--trials", "1") == 0
    assert read and "test" not in read  # the test split was never even loaded
    folders = sorted(p.name for p in out.glob("trial-*"))
    assert folders == ["trial-0000"]
    for folder in folders:
        cfg = yaml.safe_load((out / folder / "config.yaml").read_text())
        assert cfg["data"]["val_size"] == 200 and cfg["eval"]["test"] is False
        assert cfg["train"]["eval_every"] == 1
        rows = read_metrics(out / folder)
        assert all("val_error" in r for r in rows)
        assert not any(k.startswith("test_") for r in rows for k in r)
    first = (out / "trial-0000" / "metrics.jsonl").stat().st_mtime_ns

    # Re-running with more trials continues the study: one new trial, the old ones untouched.
    assert _tune(out, "--trials", "2") == 0
    assert sorted(p.name for p in out.glob("trial-*")) == ["trial-0000", "trial-0001"]
    assert "test" not in read
    assert (out / "trial-0000" / "metrics.jsonl").stat().st_mtime_ns == first

    capsys.readouterr()
    assert cli("tune", "--show", "--study", "t", "--out", str(out)) == 0
    shown = capsys.readouterr().out
    assert "optim.lr" in shown and "best: trial" in shown
    table = (out / "trials.md").read_text().splitlines()
    assert len(table) == 2 + 2
    best = load_config(out / "best.yaml")
    assert best.data.val_size == 0 and best.eval.test  # trains on all, tests once
    import optuna

    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    assert best.optim.lr == pytest.approx(study.best_trial.params["optim.lr"])
    assert best.model.options()["base_width"] == study.best_trial.params["model.base_width"]
    assert (out / "history.png").read_bytes()[:4] == b"\x89PNG"
    # `cnnlab report` says why the trials have no row (no test metrics by design).
    capsys.readouterr()
    cli("report", str(out))
    assert "val only" in capsys.readouterr().out

    # The same study with another search space is refused rather than mixed.
    capsys.readouterr()
    code = cli("tune", str(DEFAULT_RECIPE), *TINY, "--param", "optim.lr=log:0.1:1",
               "--val-size", "200", "--out", str(out), "--study", "t")  # fmt: skip
    assert code == 2 and "was started with another space" in capsys.readouterr().err


@needs_fashion
def test_a_killed_study_continues_with_the_interrupted_trial_re_queued(tmp_path, monkeypatch):
    out = tmp_path / "study"
    args = [str(DEFAULT_RECIPE), *TINY, *SPACE, "--val-size", "200",
            "--out", str(out), "--study", "k", "--trials", "1"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "cnnlab", "tune", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    log = out / "trial-0000" / "log.txt"
    deadline = time.time() + 120
    while not (log.exists() and "numerics" in log.read_text()) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "trial-0000" / "summary.json").exists()  # killed mid-trial
    # A short grace period, so the dead process's trial is found stale at once.
    monkeypatch.setattr(tuning, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning, "GRACE_S", 1)
    time.sleep(1.5)
    assert cli("tune", *args) == 0
    import optuna

    trials = optuna.load_study(study_name="k", storage=f"sqlite:///{out / 'study.db'}").trials
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params  # the same point, run again
    assert (out / "trial-0001" / "summary.json").exists()


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("optim.lr=log:0:1", "a log range needs LOW > 0"),
        ("optim.lr=lin:1:2", "expected key=log:LOW:HIGH"),
        ("optim.lr=float:2:1", "LOW must be below HIGH"),
        ("train.epochs=int:a:3", "'a' is not an integer"),
        ("optim.lrr=log:0.1:1", "unknown config key 'optim.lrr'"),
        ("model.depthh=int:1:4", "model 'preact_resnet20' has no option 'depthh'"),
        ("data.val_size=int:1:9", "sets data.val_size itself"),
        ("optim.weight_decay=float:-1:0", "optim.weight_decay"),
    ],
)
def test_a_bad_search_space_is_one_line_naming_it(param, message, tmp_path, capsys):
    code = cli("tune", str(DEFAULT_RECIPE), *TINY, "--param", param, "--out", str(tmp_path / "s"))
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


@pytest.mark.parametrize("url", ["sqlite:////no/such/folder/tune.db", "nosuchdb://x/y"])
def test_a_storage_that_cannot_be_opened_is_one_line(url, tmp_path, capsys):
    code = cli("tune", str(DEFAULT_RECIPE), "--param", "optim.lr=log:0.01:1", "--storage", url,
               "--out", str(tmp_path / "s"))  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--storage {url}: cannot open it" in err[0], err


def test_without_optuna_the_error_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)
    code = cli("tune", str(DEFAULT_RECIPE), "--param", "optim.lr=log:0.01:1",
               "--out", str(tmp_path / "s"))  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'cnnlab[tune]'" in err[0], err


def test_the_pruning_callback_reports_val_error_and_stops_a_bad_trial():
    import optuna

    class Trial:
        def __init__(self):
            self.reports = []

        def report(self, value, step):
            self.reports.append((step, value))

        def should_prune(self):
            return len(self.reports) >= 2

    class Run:
        lines = []

        def log(self, line):
            self.lines.append(line)

    class Trainer:
        run = Run()
        total_epochs = 3

    trial = Trial()
    callback = tuning.ValidationPruning(trial, prune=True)
    callback.on_epoch_end(Trainer(), 1, {"val_error": 40.0})
    with pytest.raises(optuna.TrialPruned):
        callback.on_epoch_end(Trainer(), 2, {"val_error": 50.0})
    assert trial.reports == [(1, 40.0), (2, 50.0)]
    assert Trainer.run.lines == ["pruned after epoch 2: val error 50.00%"]
    # The last epoch is reported but never pruned: the trial is complete by then.
    callback.on_epoch_end(Trainer(), 3, {"val_error": 60.0})
    assert trial.reports[-1] == (3, 60.0)


def test_worker_processes_get_the_same_study(tmp_path):
    from cnnlab.cli import build_parser

    argv = ["tune", str(DEFAULT_RECIPE), "train.epochs=1", *SPACE, "--trials", "7",
            "--val-size", "300", "--workers", "3", "--out", str(tmp_path), "--pruner", "none",
            "--startup-trials", "2", "--seed", "5"]  # fmt: skip
    args = build_parser().parse_args(argv)
    place = tuning.StudyPlace("s", "sqlite:///x.db", tmp_path)
    command = tuning._worker_command(args, place, 2)
    assert command[:3] == [sys.executable, "-m", "cnnlab"]
    worker = build_parser().parse_args(command[3:])
    for key in ("recipe", "overrides", "param", "trials", "val_size", "pruner",
                "startup_trials", "out"):  # fmt: skip
        assert getattr(worker, key) == getattr(args, key), key
    assert worker.seed == 5 + 2  # its own start-up draws
    assert (worker.study, worker.storage, worker.workers) == ("s", "sqlite:///x.db", 1)


def test_a_run_without_test_split_needs_a_validation_split(capsys):
    assert cli("train", "eval.test=false") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval.test=false needs a validation split" in err[0], err
