"""Dead-unit probes: the measurements on hand-made layers, the callback, `cnnlab probe`, resume."""

import pytest
import torch
from torch import nn

from cnnlab.analysis.dead import (
    SignFlips,
    alive_channels,
    clamped_weight_counts,
    dead_bn_counts,
    dead_relu_counts,
    dead_scale_mask,
    fractions,
    pooled_fraction,
)
from cnnlab.config import load_config
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.run_folder import RunFolder
from cnnlab.methods.probes import probe_indices
from cnnlab.methods.rejuvenation import (
    NRUtilisation,
    inspect_utilisation,
    parameter_utilisation,
    rejuvenate,
)
from cnnlab.models.binary import BinaryConv2d
from cnnlab.models.preact import PreactResNet
from cnnlab.models.vgg import CifarVGG
from cnnlab.run.training import train_new, train_resume
from tests.helpers import SMALL, cli, needs_fashion, read_metrics, without_timing

torch.set_num_threads(1)


class _TwoReLUs(nn.Module):
    """1x1 conv with 4 channels: 0 and 3 pass positive inputs, 1 and 2 never do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 1)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([1.0, -1.0, 0.0, 2.0]).view(4, 1, 1, 1))
            self.conv.bias.copy_(torch.tensor([0.0, 0.0, -1.0, -5.0]))
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, 0, 0, 0], [0, -1.0, 0, 0], [0, 0, 1.0, 0]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.conv(x))  # the same module twice: two call sites
        return self.relu(self.fc(h.mean(dim=(2, 3))))


def test_dead_relu_channels_on_a_hand_made_layer():
    model = _TwoReLUs()
    # Pixel values in (0, 3): channel 3 (2x - 5) fires only on pixels above 2.5.
    low = torch.rand(4, 1, 5, 5) * 2  # below 2.5 everywhere
    high = low.clone()
    high[0, 0, 0, 0] = 2.9
    with torch.no_grad():
        counts = dead_relu_counts(model, [low])
        assert counts == {"relu": (3, 4), "relu#2": (2, 3)}
        # One pixel of one image in a later chunk is enough to keep channel 3 alive.
        assert dead_relu_counts(model, [low, high])["relu"] == (2, 4)
    assert fractions(counts) == {"relu": 0.75, "relu#2": 2 / 3}
    assert pooled_fraction(counts) == 5 / 7
    assert pooled_fraction({}) is None
    assert not model.conv._forward_hooks and not model.relu._forward_hooks  # hooks removed


def test_alive_channels_reads_dim_one_of_conv_and_linear_outputs():
    x = torch.zeros(2, 3, 4, 4)
    x[1, 2, 3, 0] = 0.1
    assert alive_channels(x).tolist() == [False, False, True]
    assert alive_channels(torch.tensor([[0.0, 1.0], [-1.0, 0.0]])).tolist() == [False, True]
    assert alive_channels(x.to(memory_format=torch.channels_last)).tolist() == [False, False, True]


def test_dead_bn_channels_by_relative_scale():
    bn = nn.BatchNorm2d(5)
    gn = nn.GroupNorm(2, 4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([2.0, 0.019, -0.021, 0.0, -1.0]))
        gn.weight.zero_()
    model = nn.Sequential(nn.Conv2d(1, 5, 1), bn, nn.Conv2d(5, 4, 1), gn, nn.BatchNorm2d(4))
    # 1 % of the largest |gamma| (2.0) is 0.02: 0.019 and 0 are dead, -0.021 is not.
    assert dead_bn_counts(model) == {"1": (2, 5), "3": (4, 4), "4": (0, 4)}
    assert dead_bn_counts(model, rel=0.5) == {"1": (3, 5), "3": (4, 4), "4": (0, 4)}
    assert dead_scale_mask(torch.tensor([1.0, 0.001])).tolist() == [False, True]
    assert "0" not in dead_bn_counts(nn.Sequential(nn.BatchNorm2d(3, affine=False)))


def test_clamped_binary_weights_follow_tau():
    torch.manual_seed(0)
    conv = BinaryConv2d(64, 64)  # 36,864 weights: the quantiles are sharp
    with torch.no_grad():  # Laplace weights, the distribution ReCU's quantile assumes
        conv.weight.copy_(torch.distributions.Laplace(0.0, 0.1).sample(conv.weight.shape))
    model = nn.Sequential(conv, nn.BatchNorm2d(64))
    for tau in (0.85, 0.99):
        conv.tau = tau
        (clamped, total), = clamped_weight_counts(model).values()  # fmt: skip
        assert clamped / total == pytest.approx(2 * (1 - tau), abs=0.01)  # P(|x| > Q(tau))
    conv.tau = None
    assert clamped_weight_counts(model) == {}


def test_sign_flips_count_weights_that_never_changed_sign():
    torch.manual_seed(0)
    model = nn.Sequential(BinaryConv2d(2, 3, kernel_size=1, padding=0))
    conv = model[0]
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[1.0, -1.0], [2.0, -3.0], [0.5, -0.2]]).view(3, 2, 1, 1))
    flips = SignFlips()
    flips.reset(model)
    assert flips.frozen_counts() == {"0": (6, 6)}
    with torch.no_grad():
        conv.weight[0, :, 0, 0] = torch.tensor([-1.0, 1.0])  # filter 0 flips both signs
    flips.update()
    with torch.no_grad():
        conv.weight[0, :, 0, 0] = torch.tensor([1.0, -1.0])  # and back: still counted as alive
        conv.weight[1, :, 0, 0] = torch.tensor([2.5, -3.0])  # no sign change
    flips.update()
    assert flips.frozen_counts() == {"0": (4, 6)}
    flips.reset(model)
    assert flips.frozen_counts() == {"0": (6, 6)}


def test_nr_utilisation_probe_reads_live_shares_and_skips_other_networks():
    vgg = CifarVGG(layout=(4, "M", 8), conv_bias=False)  # convs 3->4, 4->8
    with torch.no_grad():
        vgg.features[1].weight.copy_(torch.tensor([1.0, 0.0, 1.0, 1.0]))  # 3 of 4 live
        vgg.features[5].weight.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]))
    result = NRUtilisation(0.01).measure(vgg, [])
    assert result.per_layer == {"features.0": 0.75, "features.4": 0.75}
    # live weight pairs: 3 out x 3 in, then 6 out x 3 live in; all: 4x3 + 8x4 (x 9 taps)
    assert result.summary == pytest.approx((3 * 3 + 6 * 3) / (4 * 3 + 8 * 4))
    assert result.summary == pytest.approx(parameter_utilisation(vgg))
    none = NRUtilisation(0.01).measure(PreactResNet(depth=8, base_width=4), [])
    assert none.summary is None and none.per_layer == {}
    rebuilt, _ = rejuvenate(vgg, inspect_utilisation(vgg))
    assert NRUtilisation(0.01).measure(rebuilt, []).summary is None  # defined before it only


def test_probe_batch_indices_are_fixed_and_spread():
    assert probe_indices(10, 4).tolist() == [0, 2, 5, 7]
    assert probe_indices(3, 256).tolist() == [0, 1, 2]


@needs_fashion
def test_a_run_logs_probes_and_cnnlab_probe_draws_them(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli("train", "--out", str(run), *SMALL, "model.name=resnet20", "model.base_width=4",
               "probes.batch_size=100") == 0  # fmt: skip
    rows = read_metrics(run)
    for row in rows:
        assert 0 <= row["probe_dead_relu"] <= 1 and 0 <= row["probe_dead_bn"] <= 1
        assert row["probe_seconds"] > 0
        relu = row["probes"]["dead_relu"]
        assert "stem.2" in relu and "stages.8.out_relu" in relu and len(relu) == 19
        assert len(row["probes"]["dead_bn"]) == 19
        assert "probe_clamped_weights" not in row  # no binary layers
    capsys.readouterr()
    assert cli("probe", str(run)) == 0
    out = capsys.readouterr().out
    assert "dead_relu" in out and "stages.8.out_relu" in out and "epoch 2" in out
    assert (run / "probe_dead_relu.png").stat().st_size > 1000
    assert cli("probe", str(run / "last.pt"), "--out", str(tmp_path / "maps")) == 0
    assert (tmp_path / "maps" / "probe_dead_bn.png").exists()

    off = tmp_path / "off"
    assert (
        cli("train", "--out", str(off), *SMALL, "data.train_limit=256", "probes.enabled=false") == 0
    )
    assert not any(k.startswith("probe") for k in read_metrics(off)[0])
    assert cli("probe", str(off)) == 2


class _Interrupt(Exception):
    pass


class _StopMidEpoch(Callback):
    """Stops the run a few steps into epoch 2, after epoch 1's checkpoint was written."""

    def on_step_end(self, trainer, step, loss):
        if trainer.epoch == 1 and step == trainer.steps_per_epoch + 3:
            raise _Interrupt


@needs_fashion
def test_binary_run_with_probes_resumes_exactly(tmp_path):
    tiny = ["data.train_limit=512", "data.test_limit=200", "train.epochs=3"]
    cfg = load_config(None, [*SMALL, *tiny, "model.name=resnet20_1w1a", "probes.batch_size=64"])
    whole, cut = RunFolder.create(tmp_path / "whole"), RunFolder.create(tmp_path / "cut")
    train_new(cfg, whole)
    with pytest.raises(_Interrupt):
        train_new(cfg, cut, [_StopMidEpoch()])
    assert load_checkpoint(cut.last)["epoch"] == 1
    train_resume(cfg, RunFolder.open(cut.path))

    a, b = load_checkpoint(whole.last), load_checkpoint(cut.last)
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["callbacks"]["recu"] == b["callbacks"]["recu"]  # the ReCU schedule's state
    assert a["callbacks"]["recu"]["tau"] > 0.85
    rows = without_timing(read_metrics(whole.path))
    assert rows == without_timing(read_metrics(cut.path))
    assert all("probe_frozen_weights" in r and "recu_tau" in r for r in rows)
