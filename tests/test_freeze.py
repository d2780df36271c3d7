"""freeze.params: named parameters train for the first epochs only, also across a resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.engine.callbacks import Callback
from cnnlab.errors import UserError
from cnnlab.methods.freeze import FreezeAfter, FreezeSettings
from tests.helpers import tiny_rgb_data


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        nn.Linear(4, 10),
    )  # fmt: skip


class Snapshot(Callback):
    """Keeps the conv bias after every epoch; stops the run after epoch `stop` if given."""

    def __init__(self, stop: int | None = None) -> None:
        self.stop, self.bias = stop, {}

    def on_epoch_end(self, trainer, epoch, row) -> None:
        self.bias[epoch] = trainer.model[0].bias.detach().clone()
        trainer.stop_requested = epoch == self.stop


def _run(tmp, net=None, stop=None, resume=False, params=("0.bias",)):
    net = net if net is not None else tiny_net()
    snap = Snapshot(stop)
    freeze = FreezeAfter(FreezeSettings(params=list(params), after_epochs=1))
    cnnlab.Trainer(net, tiny_rgb_data(), epochs=3, batch_size=16, precision="fp32",
                   optim={"lr": 0.1}, callbacks=[freeze, snap], run_dir=tmp,
                   resume=resume).fit()  # fmt: skip
    return net, snap


def test_bias_trains_in_the_first_epoch_then_stays_and_resume_freezes_it_again(tmp_path):
    start = tiny_net()[0].bias.detach().clone()
    net, snap = _run(tmp_path / "whole")
    assert not torch.equal(snap.bias[1], start)  # trained in epoch 1
    assert torch.equal(snap.bias[1], snap.bias[3])  # frozen in epochs 2-3
    assert not torch.equal(net[0].weight, tiny_net()[0].weight)  # the rest trains on
    _run(tmp_path / "parts", stop=2)
    resumed, _ = _run(tmp_path / "parts", resume=True)
    for (k, a), b in zip(net.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_a_pattern_naming_no_parameter_is_refused(tmp_path):
    with pytest.raises(UserError, match="freeze.params: 'whiten.bias' names no parameter"):
        _run(tmp_path / "r", params=["whiten.bias"])


def test_parameters_the_model_freezes_stay_frozen(tmp_path):
    net = tiny_net()
    net[5].weight.requires_grad_(False)
    before = net[5].weight.detach().clone()
    _run(tmp_path / "r", net=net, params=["0.*", "5.*"])  # the BN trains on
    assert not net[5].weight.requires_grad and torch.equal(net[5].weight, before)
