"""Learning-rate schedules: values at chosen iterations against their formulas."""

import math

import pytest
import torch

from cnnlab.config import ScheduleConfig, load_config
from cnnlab.data.pipeline import build_data, steps_per_epoch, train_images
from cnnlab.engine.optim import Schedule
from cnnlab.errors import UserError
from tests.helpers import cli, needs_fashion


def test_multistep_drops_at_milestone_epochs():
    s = Schedule(ScheduleConfig(name="multistep", milestones=[2, 4], gamma=0.1), 5, 10)
    assert s.factor(0) == 1.0
    assert s.factor(19) == 1.0
    assert s.factor(20) == pytest.approx(0.1)
    assert s.factor(39) == pytest.approx(0.1)
    assert s.factor(40) == pytest.approx(0.01)


def test_cosine_follows_the_formula_with_floor():
    s = Schedule(ScheduleConfig(name="cosine", lr_min_factor=0.001), 4, 25)
    total = 100
    for step in (0, 13, 50, 99):
        expect = 0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * step / total))
        assert s.factor(step) == pytest.approx(expect)
    assert s.factor(50) == pytest.approx(0.5005)


def test_linear_warmup_then_cosine_over_the_rest():
    s = Schedule(ScheduleConfig(name="cosine", warmup_epochs=1), 3, 10)
    assert [s.factor(i) for i in range(3)] == pytest.approx([0.1, 0.2, 0.3])
    assert s.factor(9) == pytest.approx(1.0)
    assert s.factor(10) == pytest.approx(1.0)  # cosine starts at its peak after warm-up
    assert s.factor(20) == pytest.approx(0.5)  # half-way through the 20 remaining steps


def test_apply_sets_every_param_group():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=1.0)
    s = Schedule(ScheduleConfig(name="multistep", milestones=[1], gamma=0.5), 2, 4, base_lr=0.2)
    assert s.apply(opt, 5) == pytest.approx(0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.1])


def test_gcr_fancy_policy_is_a_constant_warmup_in_iterations():
    cfg = ScheduleConfig(name="multistep", milestones=[80, 120], warmup_steps=400,
                         warmup_mode="constant", warmup_lr=0.001)  # fmt: skip
    s = Schedule(cfg, 200, 391, base_lr=0.1)
    assert [s.lr(i) for i in (0, 200, 399)] == pytest.approx([0.001] * 3)
    assert s.lr(400) == pytest.approx(0.1)
    assert s.lr(80 * 391 - 1) == pytest.approx(0.1)
    assert s.lr(80 * 391) == pytest.approx(0.01)
    assert s.lr(120 * 391) == pytest.approx(0.001)


def test_linear_warmup_in_steps_from_a_given_lr():
    cfg = ScheduleConfig(name="constant", warmup_steps=4, warmup_lr=0.02)
    s = Schedule(cfg, 2, 10, base_lr=0.1)
    # From warmup_lr at step 0 toward base: 0.02 + 0.08 * step / 4.
    assert [s.lr(i) for i in range(6)] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1])
    plain = Schedule(ScheduleConfig(name="constant", warmup_steps=4), 2, 10, base_lr=0.1)
    assert [plain.lr(i) for i in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])


def test_linear_decay_to_the_floor():
    s = Schedule(ScheduleConfig(name="linear", lr_min_factor=0.1), 4, 25)
    for step in (0, 30, 99):
        assert s.factor(step) == pytest.approx(1 - 0.9 * step / 100)


def test_onecycle_rises_to_the_peak_epoch_then_falls_to_the_floor():
    s = Schedule(ScheduleConfig(name="onecycle", peak_epoch=2, lr_min_factor=0.0), 10, 10)
    assert s.factor(0) == pytest.approx(1 / 20)
    assert s.factor(9) == pytest.approx(10 / 20)
    assert s.factor(19) == pytest.approx(1.0)
    assert s.factor(20) == pytest.approx(1.0)
    assert s.factor(60) == pytest.approx(1 - 40 / 80)
    assert s.factor(99) == pytest.approx(1 / 80)
    # Unset, the peak is a quarter of the run; with a floor m both ends approach m.
    q = Schedule(ScheduleConfig(name="onecycle", lr_min_factor=0.2), 8, 10)
    assert max(range(80), key=q.factor) == 19
    assert q.factor(0) == pytest.approx(0.2 + 0.8 / 20)
    assert q.factor(79) == pytest.approx(1 - 0.8 * 59 / 60)
    # A separate start (airbench94's triangle: 0.2 -> 1 -> 0.07); the fall is unchanged.
    t = Schedule(ScheduleConfig(name="onecycle", lr_min_factor=0.07, start_factor=0.2), 8, 10)
    assert t.factor(0) == pytest.approx(0.2 + 0.8 / 20)
    assert t.factor(19) == pytest.approx(1.0)
    assert t.factor(79) == pytest.approx(1 - 0.93 * 59 / 60)


def test_curve_is_the_lr_of_every_step():
    s = Schedule(ScheduleConfig(name="cosine", warmup_epochs=0.5), 3, 10, base_lr=0.4)
    curve = s.curve()
    assert len(curve) == 30 and curve == [s.lr(i) for i in range(30)]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["schedule.warmup_epochs=1", "schedule.warmup_steps=10"], "not both"),
        (["schedule.warmup_mode=constant", "schedule.warmup_steps=10"], "needs schedule.warmup_lr"),
        (["schedule.warmup_lr=0.01"], "schedule.warmup_lr needs a warm-up length"),
        (["schedule.name=cosine", "schedule.peak_epoch=2"], "applies only to schedule.name=one"),
        (["schedule.name=cosine", "schedule.start_factor=0.2"], "start_factor applies only to"),
        (["schedule.name=onecycle", "schedule.peak_epoch=5"], "must lie below train.epochs"),
        (["schedule.warmup_steps=-1"], "config key 'schedule.warmup_steps'"),
        (["schedule.name=poly"], "config key 'schedule.name'"),
        (["schedule.interval=epoch", "schedule.warmup_steps=10"], "use schedule.warmup_epochs"),
        (["schedule.interval=epoch", "schedule.warmup_epochs=0.5"], "needs whole warm-up epochs"),
        (["schedule.interval=iteration"], "config key 'schedule.interval'"),
        (["schedule.name=multistep", "schedule.decay_epochs=10"], "decay_epochs applies only to"),
        (["schedule.name=onecycle", "schedule.decay_start_epoch=1"], "decay_start_epoch applies"),
        (
            ["schedule.name=cosine", "train.epochs=5", "schedule.decay_start_epoch=5"],
            "decay_start_epoch: 5 must lie below train.epochs",
        ),
        (["schedule.decay_epochs=0"], "config key 'schedule.decay_epochs'"),
        (["schedule.reset_state_at_milestones=true"], "needs schedule.name=multistep with"),
        (["schedule.step_offset=-1"], "config key 'schedule.step_offset'"),
    ],
)
def test_bad_schedule_keys_are_named(overrides, message):
    with pytest.raises(UserError, match=message.replace(".", r"\.")):
        load_config(None, overrides)


def _recu_lrs(epochs: int = 600, base: float = 0.1) -> list[float]:
    """The lr of each epoch as z-hXu/ReCU@9a73bed cifar/main.py sets it with --warm_up:
    CosineAnnealingLR(T_max=epochs - 4) built at last_epoch=-1 (main.py:147), a warm-up of
    base (e + 1) / 5 written over it for epochs 0-4 (main.py:179-181), and the scheduler stepped
    after each epoch's training from epoch 4 on (main.py:196-197)."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [param], "initial_lr": base}], lr=base, momentum=0.9)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs - 4, eta_min=0, last_epoch=-1)
    lrs = []
    for epoch in range(epochs):
        if epoch < 5:
            opt.param_groups[0]["lr"] = base * (epoch + 1) / 5
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        if epoch >= 4:
            cosine.step()
    return lrs


def test_recu_recipes_follow_torchs_cosine_stepped_once_per_epoch():
    official = _recu_lrs()
    assert official[:6] == pytest.approx(
        [0.02, 0.04, 0.06, 0.08, 0.1, 0.05 * (1 + math.cos(math.pi / 596))]
    )
    assert (
        official[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * 595 / 596)))
        and official[-1] > 0
    )
    for name in ("resnet20_1w1a", "resnet18_1w1a", "vgg_small_1w1a"):
        cfg = load_config(f"recipes/cifar10/{name}.yaml")
        steps = steps_per_epoch(cfg)
        assert steps == 196  # 50,000 images in batches of 256, the last of 80 kept
        s = Schedule(cfg.schedule, cfg.train.epochs, steps, base_lr=cfg.optim.lr)
        for epoch, lr in enumerate(official):
            # Every step of an epoch trains at the epoch's lr.
            assert s.lr(epoch * steps) == pytest.approx(lr, rel=1e-9, abs=1e-15)
            assert s.lr(epoch * steps + steps - 1) == s.lr(epoch * steps)


def test_epoch_interval_holds_each_value_over_the_epoch():
    cfg = ScheduleConfig(name="cosine", interval="epoch", warmup_epochs=2)
    s = Schedule(cfg, 6, 10)
    # Warm-up (e + 1) / 2, then cosine over the 4 epochs after it, t counted in epochs.
    expect = [0.5, 1.0] + [0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(4)]
    assert [s.factor(10 * e + k) for e in range(6) for k in (0, 9)] == pytest.approx(
        [f for f in expect for _ in (0, 1)]
    )
    decay = ScheduleConfig(name="linear", decay_start_epoch=1, decay_epochs=2, lr_min_factor=0.5)
    d = Schedule(decay, 4, 10)
    # Steps: base until step 10, then down to the floor over 20 steps, then the floor.
    assert [d.factor(i) for i in (0, 10, 20, 30, 39)] == pytest.approx([1, 1, 0.75, 0.5, 0.5])


def _hysts_cosine_lrs(epochs: int, steps: int, base: float) -> list[float]:
    """The lr of each update as hysts/pytorch_image_classification@da2bdcf runs its cosine:
    LambdaLR over epochs x steps (utils.py:80-90) stepped before every update (main.py:175-176)."""
    param = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([param], lr=base, momentum=0.9)
    total = epochs * steps
    cosine = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda step: 0.5 * (1 + math.cos(step / total * math.pi))
    )
    lrs = []
    for _ in range(total):
        cosine.step()
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
    return lrs


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)` before")
def test_step_offset_matches_a_scheduler_stepped_before_each_update():
    cfg = ScheduleConfig(name="cosine", step_offset=1)
    s = Schedule(cfg, 3, 7, base_lr=0.2)
    official = _hysts_cosine_lrs(3, 7, 0.2)
    assert s.curve() == pytest.approx(official, rel=1e-12, abs=1e-15)
    assert official[-1] == pytest.approx(0.0, abs=1e-15)  # the last update at t = T
    plain = Schedule(ScheduleConfig(name="cosine"), 3, 7, base_lr=0.2).curve()
    assert plain[1:] == pytest.approx(official[:-1], rel=1e-12)  # without: one update behind


def test_hysts_cosine_recipe_follows_its_lambda_lr_at_every_update():
    cfg = load_config("recipes/cifar10/wrn28_10_cutout16_cosine.yaml")
    steps = steps_per_epoch(cfg)
    assert steps == 781  # 50,000 // 64 (drop_last=True)
    total = cfg.train.epochs * steps
    curve = Schedule(cfg.schedule, cfg.train.epochs, steps, base_lr=cfg.optim.lr).curve()
    # hysts' utils.cosine_annealing at LambdaLR's count i + 1 for update i.
    official = [0.1 * 0.5 * (1 + math.cos((i + 1) / total * math.pi)) for i in range(total)]
    assert curve == pytest.approx(official, rel=1e-12, abs=1e-15)


def test_wrn_drops_where_train_lua_drops():
    """szagoruyko/wide-residual-networks@ae6d0d0 train.lua:173-184: at the start of each epoch
    (torchnet's state.epoch = epochs done), lr *= 0.2 when state.epoch + 1 is in {60, 120, 160}."""
    official, lr = [], 0.1
    for done in range(200):
        if done + 1 in (60, 120, 160):
            lr *= 0.2
        official.append(lr)
    cfg = load_config("recipes/cifar10/wrn28_10_dropout.yaml")
    steps = steps_per_epoch(cfg)
    assert steps == 390  # 'skip-last' batches of 128 (train.lua:142)
    s = Schedule(cfg.schedule, cfg.train.epochs, steps, base_lr=cfg.optim.lr)
    assert [s.lr(e * steps) for e in range(200)] == pytest.approx(official, rel=1e-12)
    assert [s.lr(e * steps + steps - 1) for e in range(200)] == pytest.approx(official, rel=1e-12)
    phases = [sum(1 for x in official if x == pytest.approx(v)) for v in sorted(set(official))]
    assert phases == [41, 40, 60, 59]
    assert [i for i in range(200 * steps) if s.resets_state(i)] == [59 * 390, 119 * 390, 159 * 390]


def test_steps_per_epoch_without_reading_the_images():
    assert steps_per_epoch(load_config()) == 60000 // 256
    cfg = load_config(None, ["data.name=cifar10", "data.val_size=5000", "train.batch_size=100"])
    assert train_images(cfg) == 45000 and steps_per_epoch(cfg) == 450
    cfg = load_config(None, ["data.train_limit=1000", "train.batch_size=64"])
    assert steps_per_epoch(cfg) == 15
    with pytest.raises(UserError, match="larger than the training set"):
        steps_per_epoch(load_config(None, ["data.train_limit=10"]))
    ragged = load_config(
        None, ["data.train_limit=1000", "train.batch_size=64", "train.drop_last=false"]
    )
    assert steps_per_epoch(ragged) == 16


@needs_fashion
def test_step_count_matches_the_loader_and_the_cli_draws_the_curve(tmp_path, capsys):
    overrides = ["data.val_size=1000", "data.train_limit=5000", "train.batch_size=96"]
    cfg = load_config(None, overrides)
    assert steps_per_epoch(cfg) == len(build_data(cfg, torch.device("cpu")).train) == 52
    out = tmp_path / "lr.png"
    recipe = "recipes/cifar10/resnet110_warmup.yaml"
    assert (
        cli("schedule", recipe, "train.epochs=10", "schedule.milestones=[5,8]", "--out", str(out))
        == 0
    )
    text = capsys.readouterr().out
    assert "50000 training images / batch 128 = 390 steps per epoch, 3900 steps" in text
    assert "lr 0.001 at the first step, peak 0.1 at step 400" in text
    assert out.read_bytes()[:4] == b"\x89PNG"
