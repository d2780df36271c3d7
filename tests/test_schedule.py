"""Learning-rate schedules: values at chosen iterations against their formulas."""

import math

import pytest
import torch

from cnnlab.config import ScheduleConfig
from cnnlab.engine.optim import Schedule


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
    s = Schedule(ScheduleConfig(name="multistep", milestones=[1], gamma=0.5), 2, 4)
    assert s.apply(opt, 0.2, 5) == pytest.approx(0.1)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.1, 0.1])
