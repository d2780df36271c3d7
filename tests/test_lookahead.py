"""airbench94's lookahead EMA: its update rule step by step, and a run stopped and resumed with
it equal to an uninterrupted one."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

import cnnlab
from cnnlab.engine.callbacks import Callback
from cnnlab.methods.lookahead import Lookahead, LookaheadSettings
from tests.helpers import tiny_rgb_data


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10),
    )  # fmt: skip


def test_update_rule_is_airbenchs():
    net = tiny_net()
    settings = LookaheadSettings(enabled=True, start_epoch=1, every=3)
    trainer = SimpleNamespace(model=net, epoch=0, steps_per_epoch=4,
                              schedule=SimpleNamespace(total=12))  # fmt: skip
    la = Lookahead(settings)
    la.on_train_start(trainer)
    floats = [k for k, v in net.state_dict().items() if v.is_floating_point()]
    average = None  # the rule as airbench94.py's main() applies it, written out here
    g = torch.Generator().manual_seed(1)
    for step in range(1, 13):
        trainer.epoch = (step - 1) // 4
        with torch.no_grad():  # stands in for an optimizer step: every float tensor moves
            for k in floats:
                net.state_dict()[k].add_(torch.randn(net.state_dict()[k].shape, generator=g))
        now = {k: net.state_dict()[k].clone() for k in floats}
        expected = now  # between updates the weights are the optimizer's
        if trainer.epoch >= 1 and step % 3 == 0:
            if average is None:
                average = now
            else:
                rho = 0.95**3 * (step / 12) ** 3
                average = {k: average[k] + (1 - rho) * (now[k] - average[k]) for k in floats}
            expected = average
        if average is not None and step % 4 == 0:  # the epoch's end: written back again
            expected = average
        la.on_step_end(trainer, step, None)
        state = net.state_dict()
        for k in floats:
            assert torch.allclose(state[k], expected[k], atol=1e-6), (step, k)
    assert average is not None  # it did start (epoch 1, step 6; copied back at step 8 too)
    assert net.state_dict()["1.num_batches_tracked"] == 0  # counters are left alone


class StopAfter(Callback):
    """Ends the run after epoch `epoch` (its checkpoint is written), like a clean kill."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer, epoch, row) -> None:
        trainer.stop_requested = epoch == self.epoch


def _run(tmp, stop: int | None = None, resume: bool = False) -> nn.Module:
    settings = LookaheadSettings(enabled=True, start_epoch=1, every=3)
    callbacks = [Lookahead(settings)] + ([StopAfter(stop)] if stop else [])
    net = tiny_net()
    trainer = cnnlab.Trainer(net, tiny_rgb_data(), epochs=3, batch_size=16, precision="fp32",
                             optim={"lr": 0.05}, callbacks=callbacks, run_dir=tmp,
                             resume=resume)  # fmt: skip
    trainer.fit()
    return net


def test_stopped_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    whole = _run(tmp_path / "whole")
    _run(tmp_path / "parts", stop=2)  # the average started in epoch 2, before the checkpoint
    resumed = _run(tmp_path / "parts", resume=True)
    for (k, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
    # And lookahead changed the run: without it the weights end elsewhere.
    net = tiny_net()
    cnnlab.Trainer(net, tiny_rgb_data(), epochs=3, batch_size=16, precision="fp32",
                   optim={"lr": 0.05}).fit()  # fmt: skip
    assert not torch.equal(net[0].weight, whole[0].weight)
