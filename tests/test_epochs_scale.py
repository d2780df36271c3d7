"""train.epochs_scale: one override shortens (or lengthens) a recipe with its schedule, while a
recipe without it resolves exactly as before."""

from __future__ import annotations

import pytest

from cnnlab.config import DEFAULT_RECIPE, RECIPES_DIR, dump_config, load_config, validate
from cnnlab.engine.optim import Schedule
from cnnlab.errors import UserError

RESNET20 = "recipes/cifar10/resnet20.yaml"  # multistep, 200 epochs, milestones 80 and 120


def test_a_multistep_recipe_shortens_with_its_milestones():
    cfg = load_config(RESNET20, ["train.epochs_scale=0.1"])
    assert cfg.train.epochs == 20 and cfg.schedule.milestones == [8, 12]
    # The resolved config says what runs; read back, it is not scaled a second time.
    assert cfg.train.epochs_scale == 1.0
    assert validate(cfg.model_dump(mode="json")) == cfg
    steps = 3
    lrs = Schedule(cfg.schedule, cfg.train.epochs, steps, base_lr=cfg.optim.lr).curve()
    assert len(lrs) == 20 * steps
    assert lrs[8 * steps - 1] == pytest.approx(0.1) and lrs[8 * steps] == pytest.approx(0.01)
    assert lrs[12 * steps] == pytest.approx(0.001)


def test_a_tiny_scale_keeps_one_epoch_and_every_milestone():
    cfg = load_config(RESNET20, ["train.epochs_scale=0.001"])
    assert cfg.train.epochs == 1 and cfg.schedule.milestones == [1, 1]


def test_warmup_and_the_one_cycle_peak_scale_too():
    cfg = load_config(None, ["schedule.name=onecycle", "schedule.peak_epoch=1.5",
                             "train.epochs=6", "train.epochs_scale=2"])  # fmt: skip
    assert cfg.train.epochs == 12 and cfg.schedule.peak_epoch == 3.0
    cfg = load_config(None, ["schedule.warmup_epochs=2", "train.epochs=10",
                             "train.epochs_scale=0.5"])  # fmt: skip
    assert cfg.train.epochs == 5 and cfg.schedule.warmup_epochs == 1.0


def test_a_per_epoch_schedule_scales_its_warmup_and_decay_in_whole_epochs():
    # ReCU's CIFAR schedule: 5 warm-up epochs, a cosine of 596 epochs from epoch 4, 600 epochs.
    cfg = load_config("recipes/cifar10/resnet20_1w1a.yaml", ["train.epochs_scale=0.01"])
    s = cfg.schedule
    assert cfg.train.epochs == 6 and s.interval == "epoch"
    assert (s.warmup_epochs, s.decay_start_epoch, s.decay_epochs) == (1, 0, 6)


def test_shortening_with_train_epochs_alone_names_the_option():
    with pytest.raises(
        UserError, match=r"80 lies outside 1..train.epochs \(1\).*train.epochs_scale"
    ):
        load_config(RESNET20, ["train.epochs=1"])
    with pytest.raises(UserError, match="train.epochs_scale"):
        load_config(None, ["train.epochs_scale=0"])


@pytest.mark.parametrize(
    "recipe", [DEFAULT_RECIPE, *sorted(RECIPES_DIR.glob("cifar10/*.yaml"))[:8]], ids=str
)
def test_a_scale_of_one_changes_no_recipe(recipe):
    plain = load_config(recipe)
    assert load_config(recipe, ["train.epochs_scale=1"]) == plain
    assert dump_config(plain) == dump_config(validate(plain.model_dump(mode="json")))
