"""schedule.reset_state_at_milestones: the optimizer's momentum starts afresh at each milestone
(as Torch's optim.sgd did when szagoruyko/wide-residual-networks' train.lua replaced its state
table at a drop), at the same step in a resumed run as in an uninterrupted one."""

from __future__ import annotations

import torch
from torch import nn

import cnnlab

STEPS = 5  # 40 images in batches of 8
MILESTONE_STEP = 2 * STEPS  # the first step of epoch 3 (0-based step index)


def _data() -> cnnlab.datasets.Splits:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 6, 6, 1), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 3, (40,), generator=g)
    return cnnlab.datasets.from_tensors(
        images, labels, images[:8], labels[:8], mean=[0.5], std=[0.25], num_classes=3
    )


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(36, 3))


def _settings(reset: bool) -> dict:
    schedule = {"name": "multistep", "milestones": [2], "gamma": 0.5}
    return dict(
        epochs=3, batch_size=8, device="cpu", precision="fp32", channels_last=False,
        augment={"crop_padding": 0, "flip": False},
        optim={"lr": 0.1, "weight_decay": 0.0, "momentum": 0.9, "nesterov": False},
        schedule={**schedule, "reset_state_at_milestones": reset},
    )  # fmt: skip


class Buffers(cnnlab.Callback):
    """Each step's gradients (before the update) and momentum buffers (after it)."""

    def __init__(self) -> None:
        self.grads: dict[int, list[torch.Tensor]] = {}
        self.buffers: dict[int, list[torch.Tensor]] = {}
        self._grads: list[torch.Tensor] = []

    def on_before_step(self, trainer: cnnlab.Trainer) -> None:
        self._grads = [p.grad.clone() for p in trainer.model.parameters()]

    def on_step_end(self, trainer: cnnlab.Trainer, step: int, loss: float | None) -> None:
        state = trainer.optimizer.state
        index = step - 1  # `step` counts the steps done
        self.grads[index] = self._grads
        self.buffers[index] = [
            state[p]["momentum_buffer"].clone() for p in trainer.model.parameters()
        ]


def _equal(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_momentum_restarts_from_the_gradient_at_each_milestone():
    probe = Buffers()
    cnnlab.Trainer(_model(), _data(), callbacks=[probe], **_settings(reset=True)).fit()
    # torch's SGD starts an absent buffer at the gradient: the first step, and the milestone's.
    assert _equal(probe.buffers[0], probe.grads[0])
    assert _equal(probe.buffers[MILESTONE_STEP], probe.grads[MILESTONE_STEP])
    assert not _equal(probe.buffers[MILESTONE_STEP - 1], probe.grads[MILESTONE_STEP - 1])
    assert not _equal(probe.buffers[MILESTONE_STEP + 1], probe.grads[MILESTONE_STEP + 1])

    kept = Buffers()
    cnnlab.Trainer(_model(), _data(), callbacks=[kept], **_settings(reset=False)).fit()
    assert not _equal(kept.buffers[MILESTONE_STEP], kept.grads[MILESTONE_STEP])


class StopAfter(cnnlab.Callback):
    """Ends the run after epoch `epoch` (its checkpoint is written), as a kill there would."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_end(self, trainer: cnnlab.Trainer, epoch: int, row: dict) -> None:
        if epoch == self.epoch:
            trainer.stop_requested = True


def test_a_run_resumed_at_the_milestone_resets_as_an_uninterrupted_one(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    settings = _settings(reset=True)
    cnnlab.Trainer(_model(), _data(), run_dir=whole, **settings).fit()
    cnnlab.Trainer(_model(), _data(), run_dir=parts, callbacks=[StopAfter(2)], **settings).fit()
    assert torch.load(parts / "last.pt", weights_only=True)["epoch"] == 2
    cnnlab.Trainer(_model(), _data(), run_dir=parts, resume=True, **settings).fit()

    a = torch.load(whole / "last.pt", weights_only=True)
    b = torch.load(parts / "last.pt", weights_only=True)
    assert a["step"] == b["step"] == 3 * STEPS
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key, state in a["optimizer"]["state"].items():
        assert torch.equal(
            state["momentum_buffer"], b["optimizer"]["state"][key]["momentum_buffer"]
        )
