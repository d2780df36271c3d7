"""Neural Rejuvenation (METHODS §2): detection, utilisation, rebuild, training and exact resume."""

import math
import types

import pytest
import torch
from torch import nn

from cnnlab.config import load_config
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.run_folder import RunFolder
from cnnlab.errors import UserError
from cnnlab.inference.evaluate_checkpoint import evaluate_checkpoint
from cnnlab.methods.rejuvenation import (
    Rejuvenation,
    apply_architecture,
    conv_output_pixels,
    inspect_utilisation,
    live_channels,
    neural_rescale,
    parameter_utilisation,
    rejuvenate,
    separate_mode_params,
    unit_graph,
)
from cnnlab.models.densenet import DenseNet
from cnnlab.models.imagenet import ImageNetDenseNet, ImageNetResNet, NRImageNetVGG
from cnnlab.models.nr_layers import SplitConv2d, TwoHeadLinear
from cnnlab.models.resnet import CifarResNet
from cnnlab.models.vgg import CifarVGG
from cnnlab.registry import build_model
from cnnlab.run.training import train_new, train_resume
from tests.helpers import assert_learned, needs_fashion, read_metrics, without_timing

MEASURED_NR = 55.0  # test error (%) measured: the run's 200 test images
MEASURED_NR_EVAL = 58.85  # test error (%) measured: `cnnlab eval` on all 10,000 test images


def small_vgg(widths=(4, 4, "M", 8)) -> CifarVGG:
    return CifarVGG(layout=widths, conv_bias=False, norm_scale_init=0.5, fc_init_std=0.01)


def set_scales(model: nn.Module, scales: dict[str, list[float]]) -> None:
    with torch.no_grad():
        for path, values in scales.items():
            model.get_submodule(path).weight.copy_(torch.tensor(values))


def test_dead_channels_and_utilisation_match_hand_computed_values():
    model = small_vgg()  # convs 3->4, 4->4, 4->8 (3x3), classifier not counted
    set_scales(
        model,
        {
            "features.1": [1.0, 0.005, 0.5, 0.02],  # 0.005 < 0.01 * 1.0: channel 1 dead
            "features.4": [0.2, 0.2, 0.001, 0.2],  # 0.001 < 0.002: channel 2 dead
            "features.8": [1.0, 2.0, 3.0, 4.0, 0.0, 0.0, 0.03, 0.05],  # 0, 0, 0.03 < 0.04
        },
    )
    report = inspect_utilisation(model)
    assert live_channels(model) == {
        "features.0": (3, 4),
        "features.3": (3, 4),
        "features.7": (5, 8),
    }
    # live weights: 3*3 + 3*3 + 5*3 (out x live in) pairs of 9 taps; all: 4*3 + 4*4 + 8*4.
    assert report.live_weights == 9 * (3 * 3 + 3 * 3 + 5 * 3)
    assert report.all_weights == 9 * (4 * 3 + 4 * 4 + 8 * 4)
    assert parameter_utilisation(model) == pytest.approx(33 / 60)
    # A looser threshold (0.3 * max) kills more: 2/4, 3/4, 3/8 live.
    assert parameter_utilisation(model, live_threshold=0.3) == pytest.approx(
        (2 * 3 + 3 * 2 + 3 * 3) / 60
    )


def test_a_unit_with_tiny_scales_or_no_live_input_is_wholly_dead():
    model = small_vgg()
    set_scales(model, {"features.4": [5e-4, 1e-4, 0.0, 2e-4]})  # max below all_dead 1e-3
    report = inspect_utilisation(model)
    assert report.all_dead == (False, True, True)  # the next unit has no live input
    assert report.live_weights == 9 * 4 * 3


def test_fixed_units_of_a_resnet_count_every_channel_live():
    model = CifarResNet(depth=8, base_width=4, shortcut_kind="B")
    graph = unit_graph(model)
    fixed = [u.conv for u in graph.units if u.fixed]
    assert fixed == ["stem.0", "stages.0.branch.3", "stages.1.branch.3", "stages.1.skip.0",
                     "stages.2.branch.3", "stages.2.skip.0"]  # fmt: skip
    with torch.no_grad():
        for u in graph.units:
            model.get_submodule(u.bn).weight[1:] = 1e-5
    counts = live_channels(model)
    assert counts["stem.0"] == (4, 4) and counts["stages.1.skip.0"] == (8, 8)
    assert counts["stages.0.branch.0"] == (1, 4) and counts["stages.2.branch.0"] == (1, 16)


def test_unsupported_models_are_named():
    with pytest.raises(UserError, match="shortcut_kind=B"):
        unit_graph(CifarResNet(depth=8, base_width=4, shortcut_kind="A"))
    with pytest.raises(UserError, match="bias-free"):
        unit_graph(CifarVGG(layout=(4, 8)))
    with pytest.raises(UserError, match="supports"):
        unit_graph(nn.Sequential(nn.Conv2d(3, 4, 3)))
    with pytest.raises(UserError, match="post_activation"):
        unit_graph(DenseNet(depth=10, growth=4))  # pre-activation units
    with torch.device("meta"):
        with pytest.raises(UserError, match="post_activation"):
            unit_graph(build_model("densenet121"))
        with pytest.raises(UserError, match="grouped"):
            unit_graph(build_model("resnext50_32x4d"))
        with pytest.raises(UserError, match="supports"):
            unit_graph(build_model("vgg16_bn"))  # FC classifier stack


@pytest.mark.parametrize(
    "name, units, fixed",
    [
        ("resnet18", 1 + 8 * 2 + 3, 1 + 8 + 3),  # stem, 2 convs per block, 3 projections
        ("resnet34", 1 + 16 * 2 + 3, 1 + 16 + 3),
        ("resnet50", 1 + 16 * 3 + 4, 1 + 16 + 4),  # the first block projects too (64 -> 256)
        ("resnet101", 1 + 33 * 3 + 4, 1 + 33 + 4),
        ("vgg16_nr", 16, 0),
        ("densenet121_nr", 1 + 58 * 2 + 3, 0),  # stem, 2 convs per dense unit, 3 transitions
    ],
)
def test_imagenet_networks_read_as_units(name, units, fixed):
    with torch.device("meta"):
        graph = unit_graph(build_model(name))
    assert (len(graph.units), sum(u.fixed for u in graph.units)) == (units, fixed)


def test_flops_weighting_uses_each_convs_output_size():
    model = NRImageNetVGG(num_classes=10, base_width=2)
    pixels = conv_output_pixels(model, (3, 64, 64))
    # 7x7 stride 2: 32x32; after the 3x3 stride-2 pool 16x16, then 8, 4 and 2 after each pool.
    assert [pixels[u.conv] for u in unit_graph(model).units] == (
        [1024, 1024] + [256] * 2 + [64] * 4 + [16] * 4 + [4] * 4
    )
    set_scales(model, {"features.1": [1.0, 0.0]})  # the stem loses one of its 2 channels
    report = inspect_utilisation(model, input_shape=(3, 64, 64))
    per_pair = {u.conv: model.get_submodule(u.conv).weight[0, 0].numel() * pixels[u.conv]
                for u in unit_graph(model).units}  # fmt: skip
    conv = model.get_submodule
    total = sum(conv(c).in_channels * conv(c).out_channels * n for c, n in per_pair.items())
    # The stem keeps 1 of 2 outputs (3 inputs); the next conv 1 of 2 inputs (2 outputs).
    lost = 1 * 3 * per_pair["features.0"] + 2 * 1 * per_pair["features.3"]
    assert report.all_weights == total
    assert report.live_weights == total - lost


def test_densenet_concatenations_join_the_live_masks():
    # stem 3->3 (3x3); unit 3->2 (3x3); transition [stem, unit] 5->2 (1x1); then two more
    # units of 2->2 and one more transition 4->2, all with every channel live.
    model = DenseNet(
        depth=7, growth=2, bottleneck=False, compression=0.5, stem_width=3,
        post_activation=True,
    )  # fmt: skip
    set_scales(model, {"stem.1": [1.0, 0.001, 1.0], "blocks.0.branch.1": [0.5, 0.001]})
    graph = unit_graph(model)
    assert [u.sources for u in graph.units] == [(), (0,), (0, 1), (2,), (2, 3), (4,)]
    assert graph.classifier_sources == (4, 5)
    report = inspect_utilisation(model)
    # The transition reads [stem (2 of 3 live), unit (1 of 2 live)]: 3 live inputs of 5.
    live = 2 * 3 * 9 + 1 * 2 * 9 + 2 * 3 + 2 * 2 * 9 + 2 * 4 + 2 * 2 * 9
    total = 3 * 3 * 9 + 2 * 3 * 9 + 2 * 5 + 2 * 2 * 9 + 2 * 4 + 2 * 2 * 9
    assert (report.live_weights, report.all_weights) == (live, total)
    assert report.ratio == pytest.approx(158 / 225)


def kill_half(model: nn.Module, randomise: bool = True) -> None:
    """Zero the scales of every other channel of the non-fixed units; randomise BN stats."""
    gen = torch.Generator().manual_seed(1)
    dense = isinstance(model, DenseNet)
    with torch.no_grad():
        for u in unit_graph(model).units:
            bn = model.get_submodule(u.bn)
            if randomise:  # so that copying the wrong statistics would show
                bn.bias.copy_(torch.randn(bn.bias.shape, generator=gen))
                bn.running_mean.copy_(torch.randn(bn.bias.shape, generator=gen))
                bn.running_var.copy_(torch.rand(bn.bias.shape, generator=gen) + 0.5)
            if not u.fixed:
                bn.weight[::2] = 0.0
                bn.bias[::2] = 0.0  # so the dead channels output exactly relu(0) = 0
        if dense:
            # DenseNet's rate is int(sqrt(all / live)): a few more dead stem channels bring
            # utilisation just below 1/4 (r = 2); at just above it r would be 1.
            model.stem[1].weight[1:6:2] = 0.0
            model.stem[1].bias[1:6:2] = 0.0


def survivor_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.train()
    live, _ = model(x)
    return live


@pytest.mark.parametrize(
    "make",
    [
        lambda: small_vgg((32, 32, "M", 64, 64)),
        lambda: CifarResNet(depth=11, block="bottleneck", base_width=8, shortcut_kind="B"),
        lambda: CifarResNet(depth=8, base_width=16, shortcut_kind="B"),
        lambda: DenseNet(depth=10, growth=8, bottleneck=True, post_activation=True),
        # ImageNet networks at 64x64: resnet18 as is, the others narrowed or shortened.
        lambda: ImageNetResNet(depth=18, num_classes=10),
        lambda: ImageNetResNet(depth=50, base_width=16, num_classes=10),
        lambda: NRImageNetVGG(num_classes=10, base_width=8),
        lambda: ImageNetDenseNet(
            block_config=(2, 2, 2, 2),
            growth_rate=32,
            init_features=64,
            num_classes=10,
            post_activation=True,
        ),  # fmt: skip
    ],
    ids=[
        "vgg",
        "resnet_bottleneck",
        "resnet_basic",
        "densenet",
        "imagenet_resnet18",
        "imagenet_resnet50",
        "imagenet_vgg16_nr",
        "imagenet_densenet_nr",
    ],  # fmt: skip
)
def test_rebuild_restores_the_budget_and_keeps_the_survivors_function(make):
    torch.manual_seed(0)
    model = make()
    kill_half(model)
    report = inspect_utilisation(model)
    assert report.ratio < 0.75  # fixed units (residual adds) stay whole
    new, plan = rejuvenate(model, report, "separate")
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # DenseNet: r = int(sqrt(1 / 0.246)) = 2 restores the budget only up to that truncation;
    # the ImageNet DenseNet's 7x7 stem on 3 channels (a large share of a small net) grows by
    # r, not r^2.
    assert count(new) == pytest.approx(count(model), rel=0.06 if plan["concats"] else 0.05)
    # Half the channels of the non-fixed units live: the split net uses about half the weights.
    assert separate_mode_params(new, plan) < 0.75 * count(new)
    # Widths: survivors first, every split unit has new channels; residual sums still match.
    for u in plan["units"]:
        conv = new.get_submodule(u["conv"])
        assert isinstance(conv, SplitConv2d) and conv.out_channels == u["out"] > u["live_out"]
    assert isinstance(new.fc, TwoHeadLinear)
    if isinstance(model, DenseNet):
        assert all(u["out"] == 2 * u["live_out"] for u in plan["units"])  # integer rate 2
        # survivors of the input x and of the unit: stem 5 of 16, transitions 6 of 12, 5 of 10
        assert [c["live"] for c in plan["concats"]] == [[5, 4], [6, 4], [5, 4]]
    size = 64 if isinstance(model, IMAGENET) else 16
    x = torch.randn(4, 3, size, size)
    model.eval()
    with torch.no_grad():
        expected = model(x)
        # Zero the newcomers (their BN scale and shift): the survivors' head must be unchanged.
        for u in plan["units"]:
            bn = new.get_submodule(u["bn"])
            bn.weight[u["live_out"] :] = 0
            bn.bias[u["live_out"] :] = 0
        # Running statistics are used, as in the original network.
        new.eval()
        total = new(x)
        new.fc.train()
        live, new_head = new.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(
            new_features(new, x), 1), 1))  # fmt: skip
    assert torch.allclose(live, expected, atol=1e-5)
    assert torch.allclose(total, live + new_head, atol=1e-6)
    # Resume and `cnnlab eval` replay the plan on a fresh model, then load the weights.
    replayed = apply_architecture(make(), plan)
    replayed.load_state_dict(new.state_dict())
    replayed.eval()
    with torch.no_grad():
        assert torch.equal(replayed(x), total)


IMAGENET = (ImageNetResNet, ImageNetDenseNet, NRImageNetVGG)


def new_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if isinstance(model, CifarVGG):
        return model.features(x)
    if isinstance(model, DenseNet):
        return model.blocks(model.stem(x))
    if isinstance(model, (ImageNetDenseNet, NRImageNetVGG)):
        return model.features(x)
    return model.stages(model.stem(x))


def test_cross_attention_starts_as_the_separate_network():
    torch.manual_seed(0)
    model = small_vgg((16, 16, "M", 32))
    kill_half(model)
    report = inspect_utilisation(model)
    torch.manual_seed(1)
    sep, _ = rejuvenate(model, report, "separate")
    torch.manual_seed(1)
    ca, plan = rejuvenate(model, report, "cross_attention")
    assert plan["mode"] == "cross_attention"
    x = torch.randn(2, 3, 16, 16)
    sep.eval(), ca.eval()
    with torch.no_grad():
        # The cross blocks start at zero, so cross-attention adds nothing yet ...
        assert torch.allclose(sep(x), ca(x), atol=1e-6)
        for m in ca.modules():
            if isinstance(m, SplitConv2d):
                m.weight.normal_()
        # ... and couples the halves once they are not.
        assert not torch.allclose(sep(x), ca(x), atol=1e-3)


class ZeroHalfScales(Callback):
    """At the last step of `epoch`, zero every other scale: utilisation falls below target."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.current = 0

    def on_epoch_start(self, trainer, epoch):
        self.current = epoch

    def on_step_end(self, trainer, step, loss):
        if self.current == self.epoch and step % trainer.steps_per_epoch == 0:
            kill_half(trainer.model, randomise=False)


class StopAfter(Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, epoch, row):
        if epoch == self.epoch:
            trainer.stop_requested = True


NR_ARGS = [
    "model.name=resnet20",
    "model.shortcut_kind=B",
    "model.base_width=4",
    "data.train_limit=768",
    "data.test_limit=200",
    "train.epochs=2",
    "train.batch_size=64",
    "train.eval_batch_size=200",
    "train.precision=fp32",
    "train.channels_last=false",
    "train.device=cpu",
    "optim.lr=0.05",
    "schedule.name=multistep",
    "schedule.peak_epoch=null",
    "schedule.milestones=[1]",
    "nr.enabled=true",
    "nr.sparsity=1e-3",
    "nr.target=0.6",
]


@needs_fashion
def test_training_rejuvenates_shifts_the_schedule_and_learns(tmp_path):
    cfg = load_config(None, NR_ARGS)
    run = RunFolder.create(tmp_path / "run")
    summary = train_new(cfg, run, [ZeroHalfScales(epoch=2)])
    rows = read_metrics(run.path)
    # Two watched epochs (the second rebuilt the net), then the 2 scheduled ones.
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert [r["lr"] for r in rows] == pytest.approx([0.05, 0.05, 0.05, 0.005])
    assert rows[0]["nr_utilisation"] == 1.0 and rows[1]["nr_utilisation"] < 0.6
    assert "nr_utilisation" not in rows[2]
    log = (run.path / "log.txt").read_text()
    assert "nr: rejuvenated at utilisation" in log and "params 17462 ->" in log
    assert summary["params"] == pytest.approx(17462, rel=0.1)  # int(C * r) at widths of 4-16
    assert rows[-1]["train_loss"] < rows[2]["train_loss"]
    assert_learned(rows[-1]["test_error"], measured=MEASURED_NR, chance=90.0)
    state = load_checkpoint(run.last)
    assert state["architecture"]["mode"] == "separate" and state["extra_epochs"] == 2
    # `cnnlab eval` rebuilds the widened net from the checkpoint (on all 10,000 test images).
    metrics = evaluate_checkpoint(run.last, None, None)
    assert metrics["images"] == 10000
    assert_learned(metrics["error"], measured=MEASURED_NR_EVAL, chance=90.0)


RESUME_ARGS = [*NR_ARGS, "data.train_limit=256"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> RunFolder:
    whole = RunFolder.create(tmp_path_factory.mktemp("nr") / "whole")
    train_new(load_config(None, RESUME_ARGS), whole, [ZeroHalfScales(epoch=2)])
    return whole


@needs_fashion
@pytest.mark.parametrize("stop", [1, 2], ids=["before_rebuild", "after_rebuild"])
def test_resume_across_the_rebuild_equals_an_uninterrupted_run(tmp_path, uninterrupted, stop):
    cfg, whole = load_config(None, RESUME_ARGS), uninterrupted
    part = RunFolder.create(tmp_path / "part")
    train_new(cfg, part, [ZeroHalfScales(epoch=2), StopAfter(stop)])
    assert load_checkpoint(part.last)["epoch"] == stop
    train_resume(cfg, RunFolder.open(part.path), [ZeroHalfScales(epoch=2), StopAfter(0)])
    a, b = load_checkpoint(whole.last), load_checkpoint(part.last)
    assert a["architecture"] == b["architecture"]
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert without_timing(read_metrics(whole.path)) == without_timing(read_metrics(part.path))


@needs_fashion
def test_compress_only_stops_after_the_rebuild_and_keeps_the_file(tmp_path):
    cfg = load_config(None, [*NR_ARGS, "data.train_limit=128", "nr.compress_only=true"])
    run = RunFolder.create(tmp_path / "run")
    train_new(cfg, run, [ZeroHalfScales(epoch=1)])
    assert [r["epoch"] for r in read_metrics(run.path)] == [1]
    saved = load_checkpoint(run.path / "NR_resnet20_0.6.pt")
    assert saved["architecture"] is not None


def test_target_at_least_0999_means_plain_training():
    cb = Rejuvenation(load_config(None, ["nr.target=0.999"]).nr)
    assert cb.phase == "off"


def random_bn(model: nn.Module, seed: int = 0) -> None:
    """Give every unit scales of both signs (many below 0.5), shifts and running statistics."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for u in unit_graph(model).units:
            bn = model.get_submodule(u.bn)
            shape = bn.weight.shape
            bn.weight.copy_((torch.rand(shape, generator=gen) - 0.3) * 1.5)
            bn.bias.copy_(torch.randn(shape, generator=gen) * 0.3)
            bn.running_mean.copy_(torch.randn(shape, generator=gen) * 0.1)
            bn.running_var.copy_(torch.rand(shape, generator=gen) + 0.5)


def _logits(out):
    return out[0] + out[1] if isinstance(out, tuple) else out


def rebuilt_densenet() -> nn.Module:
    torch.manual_seed(0)
    model = DenseNet(depth=10, growth=8, bottleneck=True, post_activation=True)
    kill_half(model)
    new, _ = rejuvenate(model, inspect_utilisation(model), "separate")
    return new


@pytest.mark.parametrize(
    "make, classifier_scaled",
    [
        (lambda: small_vgg((8, 8, "M", 16)), True),
        (lambda: CifarResNet(depth=8, base_width=4, shortcut_kind="B"), False),
        (rebuilt_densenet, True),
    ],
    ids=["vgg", "resnet_fixed_last_unit", "densenet_rebuilt"],
)
def test_neural_rescaling_keeps_the_function_under_relu(make, classifier_scaled):
    target = 0.5
    torch.manual_seed(0)
    model = make()
    random_bn(model)
    units = unit_graph(model).units
    small = sum(int((model.get_submodule(u.bn).weight.abs() < target).sum()) for u in units)
    assert small > 10  # plenty to rescale
    first = model.get_submodule(units[0].conv).weight.clone()
    with torch.no_grad():
        model.fc.bias.normal_()
    # Training mode: the BN after a conv fed by the image or a fixed unit normalises away the
    # uniform 1/t that NR's bn_restore gives that conv (its running statistics do not).
    model.train()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        before = _logits(model(x))
        neural_rescale(model, target)
        after = _logits(model(x))
    for u in units:
        scale = model.get_submodule(u.bn).weight.abs()
        assert u.fixed or scale.min() >= target - 1e-7  # small scales raised to the target
    # As the official code: the conv fed by the image is scaled uniformly by 1/t.
    assert torch.allclose(model.get_submodule(units[0].conv).weight, first / target)
    # NR's quirk: the classifier takes the scales without dividing by the target, so its
    # logits (less the bias) come out `target` times larger when a non-fixed unit feeds it.
    # A two-headed classifier adds its bias once per head.
    bias = model.fc.bias * (2 if isinstance(model.fc, TwoHeadLinear) else 1)
    expected = (before - bias) * target + bias if classifier_scaled else before
    assert torch.allclose(after, expected, atol=1e-4)
    if classifier_scaled:  # the quirk shows
        assert (after - before).abs().max() > 1e-3


@needs_fashion
def test_resuming_a_compressed_run_rescales_once_and_keeps_the_file(tmp_path):
    args = [*NR_ARGS, "data.train_limit=128", "nr.compress_only=true", "nr.bn_target=0.5"]
    cfg = load_config(None, args)
    run = RunFolder.create(tmp_path / "run")
    train_new(cfg, run, [ZeroHalfScales(epoch=1)])
    saved = run.path / "NR_resnet20_0.6.pt"
    compressed = load_checkpoint(saved)
    assert compressed["callbacks"]["nr"]["rescaled"] is False
    train_resume(cfg, RunFolder.open(run.path), [StopAfter(2)])
    log = (run.path / "log.txt").read_text()
    assert log.count("nr: neural rescaling") == 1
    state = load_checkpoint(run.last)
    assert state["epoch"] == 2 and state["callbacks"]["nr"]["rescaled"] is True
    # The rebuilt file is the network as rebuilt, not the resumed run's.
    assert load_checkpoint(saved)["epoch"] == 1
    assert all(torch.equal(compressed["model"][k], v) for k, v in
               load_checkpoint(saved)["model"].items())  # fmt: skip


@needs_fashion
def test_a_densenet_rebuilds_in_training_and_resumes_with_its_split_concatenations(tmp_path):
    args = [*NR_ARGS, "model.name=densenet40_k12", "model.post_activation=true",
            "data.train_limit=16", "data.test_limit=16", "train.batch_size=16"]  # fmt: skip
    args.remove("model.shortcut_kind=B")
    args.remove("model.base_width=4")
    cfg = load_config(None, args)
    run = RunFolder.create(tmp_path / "run")
    train_new(cfg, run, [ZeroHalfScales(epoch=1), StopAfter(1)])
    plan = load_checkpoint(run.last)["architecture"]
    assert len(plan["concats"]) == 36  # 12 dense units in each of the 3 blocks
    assert all(u["out"] == 2 * u["live_out"] for u in plan["units"])  # r = int(sqrt(...)) = 2
    # Resuming rebuilds the split net from the plan and trains the two heads on.
    train_resume(cfg, RunFolder.open(run.path), [StopAfter(2)])
    rows = read_metrics(run.path)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert math.isfinite(rows[1]["train_loss"])
    assert load_checkpoint(run.last)["architecture"] == plan


def test_a_wholly_dead_residual_branch_does_not_cascade_and_rebuilds():
    # Official CAddList.inspect: after each addition every channel is live again, so only the
    # dead branch's own units are dead; the rebuild sizes its fixed unit like the sum it feeds.
    torch.manual_seed(0)
    model = CifarResNet(depth=8, base_width=4, shortcut_kind="B")  # one block per stage
    with torch.no_grad():
        model.get_submodule("stages.1.branch.1").weight.fill_(1e-4)  # below all_dead 1e-3
    graph = unit_graph(model)
    report = inspect_utilisation(model)
    dead = [u.conv for u, d in zip(graph.units, report.all_dead, strict=True) if d]
    assert dead == ["stages.1.branch.0", "stages.1.branch.3"]  # not stages.2
    assert live_channels(model)["stages.2.branch.0"] == (16, 16)
    new, plan = rejuvenate(model, report)
    widths = {u["conv"]: (u["in"], u["out"]) for u in plan["units"]}
    # The dead branch's fixed unit has the width of the projection beside it.
    assert widths["stages.1.branch.3"][1] == widths["stages.1.skip.0"][1]
    assert widths["stages.2.branch.0"][0] == widths["stages.1.skip.0"][1]
    # It trains: a step of SGD on the two heads' summed loss changes the weights, stays finite.
    opt = torch.optim.SGD(new.parameters(), lr=0.1)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    new.train()
    live, fresh = new(x)
    loss = nn.functional.cross_entropy(live, y) + nn.functional.cross_entropy(fresh, y)
    before = new.get_submodule("stages.1.branch.3").weight.clone()
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item())
    assert not torch.equal(new.get_submodule("stages.1.branch.3").weight, before)
    new.eval()
    assert new(x).shape == (4, 10)


def test_adaptive_lambda_can_rise_after_the_first_epoch():
    # Official imagenet.py starts util_params_old at 1.0: an epoch that leaves utilisation
    # within increase_threshold of 1 raises lambda, the first epoch included.
    cfg = load_config(None, ["nr.enabled=true", "nr.sparsity_schedule=adaptive"])
    messages = []
    trainer = types.SimpleNamespace(
        model=small_vgg(),
        input_shape=(3, 16, 16),
        cfg=cfg,
        extra_epochs=0,
        run=types.SimpleNamespace(log=messages.append),
    )
    nr = Rejuvenation(cfg.nr)
    nr.on_epoch_end(trainer, 1, {})
    assert nr.sparsity == pytest.approx(cfg.nr.sparsity + cfg.nr.increase_step)
    assert nr.previous == 1.0 and trainer.extra_epochs == 1
