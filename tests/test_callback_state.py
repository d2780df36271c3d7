"""Callbacks' state in checkpoints is keyed by name: a resume hands each callback its own state
whatever callbacks were added, removed or reordered; old checkpoints (a positional list) still
resume; the built-in methods run in a fixed order, not the order of their imports."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.config import load_config
from cnnlab.engine.callbacks import Callback, state_keys
from cnnlab.engine.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.methods.ema import WeightEMA
from cnnlab.registry import METHOD_ORDER, METHODS, Registry
from cnnlab.run.training import config_callbacks
from tests.helpers import assert_same_run, read_metrics, tiny_rgb_data, without_timing

SETTINGS = {"epochs": 2, "batch_size": 16, "device": "cpu", "precision": "fp32",
            "channels_last": False}  # fmt: skip

# Tables whose built-in entries come from the modules the registry test writes.
THINGS: Registry[str] = Registry("thing", "shipped_things", order=("c", "a", "b"))
MORE: Registry[int] = Registry("thing", "more_things", order=("a",))


class StepCount(Callback):
    """Counts optimizer steps; its state names the callback that saved it."""

    def __init__(self) -> None:
        self.steps = 0
        self.loaded: dict | None = None

    def on_step_end(self, trainer, step, loss):
        self.steps += 1

    def state_dict(self):
        return {"owner": type(self).__name__, "steps": self.steps}

    def load_state_dict(self, state):
        self.loaded = state
        self.steps = state["steps"]


class Counter(StepCount):
    pass


class AddedOnResume(StepCount):
    pass


class StopAfterFirstEpoch(Callback):
    def on_epoch_end(self, trainer, epoch, row):
        trainer.stop_requested = True


def _ema() -> WeightEMA:
    ema = WeightEMA(0.5)
    ema.state_key = "ema"  # as the registry names the method's callback
    return ema


def _fit(run_dir: Path, callbacks: list[Callback], resume: bool = False) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(144, 10))
    cnnlab.Trainer(model, tiny_rgb_data(), callbacks=callbacks, run_dir=run_dir, resume=resume,
                   progress=False, **SETTINGS).fit()  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The uninterrupted run, and the same run stopped after its first epoch."""
    base = tmp_path_factory.mktemp("callbacks")
    _fit(base / "whole", [_ema(), Counter()])
    _fit(base / "cut", [_ema(), Counter(), StopAfterFirstEpoch()])
    assert load_checkpoint(base / "cut" / "last.pt")["epoch"] == 1
    return base


def test_a_callback_added_in_front_on_resume_leaves_every_state_with_its_owner(runs, tmp_path):
    run = Path(shutil.copytree(runs / "cut", tmp_path / "cut"))
    added, counter = AddedOnResume(), Counter()
    _fit(run, [added, _ema(), counter], resume=True)
    assert added.loaded is None  # nothing was saved for it: it starts fresh
    assert counter.loaded == {"owner": "Counter", "steps": 4}  # epoch 1: 64 images / 16
    assert counter.steps == 8
    saved = load_checkpoint(run / "last.pt")["callbacks"]
    assert list(saved) == [f"{__name__}.AddedOnResume", "ema", f"{__name__}.Counter"]
    # The averaged weights and everything else continued exactly where the cut run stopped.
    whole = load_checkpoint(runs / "whole" / "last.pt")
    for k, v in whole["callbacks"]["ema"]["weights"].items():
        assert torch.equal(v, saved["ema"]["weights"][k]), k
    for k, v in whole["model"].items():
        assert torch.equal(v, load_checkpoint(run / "last.pt")["model"][k]), k
    assert without_timing(read_metrics(runs / "whole")) == without_timing(read_metrics(run))


def test_a_checkpoint_with_the_states_in_a_list_resumes_them_by_position(runs, tmp_path):
    run = Path(shutil.copytree(runs / "cut", tmp_path / "cut"))
    state = load_checkpoint(runs / "cut" / "last.pt")
    state["callbacks"] = list(state["callbacks"].values())  # as checkpoints were written before
    save_checkpoint(run / "last.pt", state)
    counter = Counter()
    _fit(run, [_ema(), counter], resume=True)
    assert counter.loaded == {"owner": "Counter", "steps": 4}
    assert_same_run(runs / "whole", run)


def test_keys_default_to_the_class_and_repeats_are_numbered():
    assert state_keys([Counter(), _ema(), Counter()]) == [
        f"{__name__}.Counter", "ema", f"{__name__}.Counter#2"
    ]  # fmt: skip


def test_the_methods_callbacks_are_keyed_by_the_methods_names():
    cfg = load_config(None, ["bn.momentum=dynamic", "ema.decay=0.99"])
    keys = [cb.state_key for cb in config_callbacks(cfg, writer=False)]
    assert keys == ["bn_momentum", "ema", "probes"]
    # Every shipped method has its place in the fixed order, and they come first.
    shipped = [
        n for n, entry in METHODS.items() if entry.callbacks.__module__.startswith("cnnlab.")
    ]
    assert shipped == list(METHOD_ORDER)


def test_a_registry_orders_the_built_in_entries_as_listed_and_users_after(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "shipped_things.py").write_text(
        "from tests.test_callback_state import THINGS\n"
        "for name in ('a', 'b', 'c'):\n"
        "    THINGS.add(name, name)\n"
    )
    THINGS.add("mine", "mine")  # a user's entry, registered before the table was first read
    assert [name for name, _ in THINGS.items()] == ["c", "a", "b", "mine"]

    (tmp_path / "more_things.py").write_text(
        "from tests.test_callback_state import MORE\nMORE.add('b', 1)\n"
    )
    with pytest.raises(ValueError, match=r"\['a'\] are ordered but more_things does not"):
        MORE.names()


@pytest.fixture(autouse=True)
def _forget_test_modules():
    yield
    for name in ("shipped_things", "more_things"):
        sys.modules.pop(name, None)
