"""Kill anywhere: a real `cnnlab train` SIGKILLed at a chosen point, then resumed, ends bit for bit
where an uninterrupted run ends: weights, optimizer state, callback state (EMA, NR, ReCU) and
metrics.jsonl (timing fields aside), with no temp file left in the run folder.

The kills are deterministic: CNNLAB_FAULT=POINT:N makes the process SIGKILL itself the N-th time
it reaches fault_point(POINT) (cnnlab/engine/faults.py), so each case kills where it says, never
"somewhere after a sleep". Every configuration draws from the global random generators (dropout,
shake-shake) or carries state beside the weights (EMA, ReCU's tau, NR's rebuilt architecture), so
a resume that lost an RNG state or a callback would differ (mixup, cutmix and random erasing
draw from streams rebuilt from the seed and the epoch).

One uninterrupted reference run per configuration is shared by all its kill points; the
references train in the background while the kill cases run.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cnnlab.engine.checkpoint import load_checkpoint
from tests.helpers import TINY_CPU, assert_same_run, needs_fashion, read_metrics

pytestmark = [needs_fashion, pytest.mark.slow]

TINY = [a for a in TINY_CPU if not a.startswith("model.")]
CONFIGS = {
    # WRN with dropout, mixup + cutmix, random erasing, EMA, the probes, and a validation split
    # (so best.pt is chosen and copied).
    "wrn": [
        *TINY,
        "data.train_limit=320",
        "data.val_size=64",
        "model.name=wrn16_4",
        "model.base_width=2",
        "model.dropout=0.3",
        "augment.erase_prob=0.5",
        "augment.mixup_alpha=1.0",
        "augment.cutmix_alpha=1.0",
        "ema.decay=0.9",
    ],
    # Shake-shake draws its branch weights from the global generator at every forward pass.
    "shake": [
        *TINY,
        "model.name=shake_shake26_2x32d",  # the smallest variant (its widths are fixed)
        "model.stem_width=8",
        "data.train_limit=64",  # 2 steps of 32 per epoch: the net is big for a CPU
        "data.test_limit=64",
        "train.batch_size=32",
        "probes.enabled=false",
    ],
    # A 1-bit net with ReCU (tau follows the schedule, saved with the callbacks).
    "recu": [*TINY, "model.name=resnet20_1w1a", "model.base_width=4"],
    # Neural Rejuvenation: a strict live threshold makes epoch 1 fall below the target, so the
    # net is rebuilt at the end of epoch 1 (a fresh optimizer, a new architecture) and trained
    # 2 more epochs.
    "nr": [
        *TINY,
        "model.name=resnet20",
        "model.shortcut_kind=B",
        "model.base_width=4",
        "nr.enabled=true",
        "nr.sparsity=1e-3",
        "nr.live_threshold=0.99",
        "nr.target=0.9",
    ],
}

# (configuration, CNNLAB_FAULT of the first session, then of each resumed session) per case.
# Counts are per process. wrn has 4 steps per epoch, 1 val + 1 test batch per evaluation and the
# EMA's evaluation after the raw weights' one (eval_batch 3-4 and 7-8), 5 probes per epoch.
# A kill before the first checkpoint leaves nothing to resume: the resumed session starts over
# and counts its points as a fresh one does. A session resumed after epoch 1 counts from epoch
# 2 on (its train_step:2 is step 6, its last.pt_before_rename:1 is epoch 2's checkpoint). So a
# case kills the sessions that follow one another at later and later points, one process per
# kill point instead of two, and every kill is resumed from.
KILLS = [
    # Step 1; the last step of epoch 1; validation, epoch 1; between epoch 1's last.pt and
    # best.pt; then (from epoch 1) mid epoch 2; killed again while resuming: test, epoch 2.
    ("wrn", "train_step:1", "train_step:4", "eval_batch:1", "best.pt_before_rename:1",
     "train_step:2", "eval_batch:2"),
    # The EMA weights' evaluation and the probes, epoch 1; epoch 1's last.pt before its rename;
    # both checkpoints of epoch 1 written, its metrics not; then epoch 2's probes and last.pt.
    ("wrn", "eval_batch:3", "probe_measure:1", "last.pt_before_rename:1",
     "metrics.jsonl_before_rename:1", "probe_measure:3", "last.pt_before_rename:1"),
    # Mid epoch 2; epoch 2's metrics after its checkpoint; all trained, the summary not written.
    ("wrn", "train_step:6", "metrics.jsonl_before_rename:1", "summary.json_before_rename:1"),
    ("wrn", "config.yaml_before_rename:1"),  # nothing but a temp config: start again
    ("shake", "train_step:3", "last.pt_before_rename:1"),  # epoch 2: a step, its checkpoint
    ("recu", "train_step:5", "eval_batch:1"),  # epoch 2: a step, its test
    # The net just rebuilt (not yet in any checkpoint); the rebuilt net's first checkpoint;
    # training the rebuilt net.
    ("nr", "model_rebuild:1", "last.pt_before_rename:1", "train_step:7"),
]  # fmt: skip


def _cnnlab(args: list[str], fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("CNNLAB_FAULT", None)
    if fault:
        env["CNNLAB_FAULT"] = fault
    return subprocess.run(
        [sys.executable, "-m", "cnnlab", *args], capture_output=True, text=True, env=env,
        timeout=300,
    )  # fmt: skip


def _killed(args: list[str], fault: str) -> None:
    done = _cnnlab(args, fault)
    assert done.returncode == -signal.SIGKILL, f"{fault} was never reached: {done.stderr[-2000:]}"


def _assert_readable(run: Path) -> None:
    # Right after the kill, every file that is not a temp file is whole.
    if (run / "last.pt").exists():
        load_checkpoint(run / "last.pt")
    if (run / "metrics.jsonl").exists():
        read_metrics(run)
    for name in ("summary.json", "config.yaml"):
        if (run / name).exists():
            assert (run / name).read_text().endswith("\n")


SWEEP = ["sweep", "recipes/default.yaml", *CONFIGS["recu"], "--seeds", "2"]


def _references_wanted(request: pytest.FixtureRequest) -> list[str]:
    # The configurations (and the sweep) that the selected tests of this module compare with.
    wanted = []
    for item in request.session.items:
        if item.module is not request.module or not hasattr(item, "callspec"):
            continue
        params = item.callspec.params
        wanted.append(params["case"][0] if "case" in params else "sweep")
    return list(dict.fromkeys(wanted))


@pytest.fixture(scope="module")
def reference(request, tmp_path_factory):
    """Return the uninterrupted run of a configuration, or the uninterrupted sweep.

    The kill cases run one process at a time with one thread, so the reference runs that the
    selected tests need are all started at once, in the background: they train on the other
    core while the first cases run, and each case waits only for its own reference.
    """
    base = tmp_path_factory.mktemp("reference")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("CNNLAB_FAULT", None)
    started = {}
    for name in _references_wanted(request):
        out = ["--out", str(base / name)]
        args = [*SWEEP, *out] if name == "sweep" else ["train", *out, *CONFIGS[name]]
        with open(base / f"{name}.err", "w") as err:
            started[name] = subprocess.Popen(
                [sys.executable, "-m", "cnnlab", *args],
                env=env, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip

    def get(name: str) -> Path:
        proc = started[name]
        assert proc.wait(timeout=600) == 0, (base / f"{name}.err").read_text()[-3000:]
        return base / name

    yield get
    for proc in started.values():  # a run still going when the tests stopped early
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("case", KILLS, ids=["-".join(k) for k in KILLS])
def test_killed_at_a_point_then_resumed_equals_the_uninterrupted_run(tmp_path, reference, case):
    name, *faults = case
    run = tmp_path / "run"
    _killed(["train", "--out", str(run), *CONFIGS[name]], faults[0])
    _assert_readable(run)
    if not (run / "config.yaml").exists():
        # Killed before the folder held its config: no run yet, so the same command starts it.
        assert "not a run folder" in _cnnlab(["train", "--resume", str(run)]).stderr
        started = _cnnlab(["train", "--out", str(run), *CONFIGS[name]])
        assert started.returncode == 0, started.stderr
        assert_same_run(reference(name), run)
        return
    for fault in faults[1:]:
        _killed(["train", "--resume", str(run)], fault)
        _assert_readable(run)
    resumed = _cnnlab(["train", "--resume", str(run)])
    assert resumed.returncode == 0, resumed.stderr
    assert_same_run(reference(name), run)


def _sweep_runs(out: Path) -> list[Path]:
    return sorted(p.parent.relative_to(out) for p in out.rglob("config.yaml"))


@pytest.mark.parametrize("fault", ["sweep_between_runs:1", "train_step:11"])
def test_a_sweep_killed_between_or_inside_runs_reruns_to_the_uninterrupted_result(
    tmp_path, reference, fault
):
    killed = tmp_path / "killed"
    _killed([*SWEEP, "--out", str(killed)], fault)  # train_step:11 is in the second run
    rerun = _cnnlab([*SWEEP, "--out", str(killed)])
    assert rerun.returncode == 0, rerun.stderr
    whole = reference("sweep")
    runs = _sweep_runs(whole)
    assert runs == _sweep_runs(killed) and len(runs) == 2
    for run in runs:
        assert_same_run(whole / run, killed / run)
