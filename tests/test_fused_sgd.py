"""Fused SGD under GradScaler (the CUDA fp16 path) behaves as unfused SGD: a skipped first
step leaves no momentum, and a resume keeps the optimizer fused. Fused SGD has a CPU kernel
on the same Python path, so this runs on the CPU; the Trainer-level checks need CUDA."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.config import OptimConfig
from cnnlab.engine.numerics import Numerics
from cnnlab.engine.optim import build_optimizer, load_optimizer_state
from cnnlab.engine.step import make_scaler, train_step

CPU = torch.device("cpu")
SGD = OptimConfig(name="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.0)


def linear_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Linear(64, 4)


def fp16_step(model: nn.Module, opt: torch.optim.Optimizer, scaler, images: torch.Tensor) -> None:
    targets = torch.arange(len(images)) % 4
    train_step(model, opt, Numerics("fp16"), scaler, images, targets, 0.0, lambda: None)


def after_a_skipped_first_step(fused: bool) -> tuple[nn.Module, torch.optim.Optimizer]:
    model = linear_model()
    opt = build_optimizer(model, SGD, fused=fused)
    scaler = make_scaler("fp16", CPU)
    # Freed memory full of 1e30 for the momentum buffers to land on, as a GPU's caching
    # allocator hands back whatever a freed block held.
    poison = [torch.full_like(p, 1e30) for p in model.parameters()]
    del poison
    fp16_step(model, opt, scaler, torch.full((8, 64), float("inf")))  # overflows: skipped
    assert scaler.get_scale() == 2.0**15  # the scaler did skip it (and halved its scale)
    return model, opt, scaler


def test_a_skipped_first_fused_step_leaves_no_momentum_and_matches_unfused_sgd():
    fused_model, fused_opt, fused_scaler = after_a_skipped_first_step(fused=True)
    plain_model, plain_opt, plain_scaler = after_a_skipped_first_step(fused=False)
    assert fused_opt.param_groups[0]["fused"] is True
    assert not any("momentum_buffer" in s for s in fused_opt.state.values())
    torch.manual_seed(1)
    images = [torch.randn(8, 64) for _ in range(3)]
    for x in images:
        fp16_step(fused_model, fused_opt, fused_scaler, x)
        fp16_step(plain_model, plain_opt, plain_scaler, x)
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        assert a.abs().max() < 1.0  # garbage momentum gave NaN or 1e28
        assert torch.allclose(a, b, atol=1e-6)


def test_a_fused_step_that_goes_through_keeps_its_momentum():
    model = linear_model()
    opt = build_optimizer(model, SGD, fused=True)
    fp16_step(model, opt, make_scaler("fp16", CPU), torch.randn(8, 64))
    assert all("momentum_buffer" in opt.state[p] for p in model.parameters())


@pytest.mark.parametrize("saved_fused", [False, True])
def test_a_resumed_optimizer_stays_as_built_and_takes_an_fp16_step(saved_fused):
    # A checkpoint of an unfused optimizer (a CPU run) resumed where it is built fused (a GPU
    # run): torch's load_state_dict would copy fused=False over and the fp16 step would fail.
    model = linear_model()
    saved = build_optimizer(model, SGD, fused=saved_fused)
    fp16_step(model, saved, make_scaler("fp16", CPU), torch.randn(8, 64))
    opt = build_optimizer(model, SGD, fused=True)
    load_optimizer_state(opt, saved.state_dict())
    assert all(group["fused"] is True for group in opt.param_groups)
    assert all("momentum_buffer" in opt.state[p] for p in model.parameters())
    fp16_step(model, opt, make_scaler("fp16", CPU), torch.randn(8, 64))
    # And the other way: a fused checkpoint resumed unfused stays unfused.
    plain = build_optimizer(model, SGD, fused=False)
    load_optimizer_state(plain, opt.state_dict())
    assert all(not group["fused"] for group in plain.param_groups)


def test_an_optimizer_without_a_fused_option_loads_unchanged():
    model = linear_model()
    opt = build_optimizer(model, OptimConfig(name="rmsprop", lr=0.01, weight_decay=0.0))
    load_optimizer_state(opt, opt.state_dict())
    assert "fused" not in opt.param_groups[0]
