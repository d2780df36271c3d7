"""Optimizers and per-iteration learning-rate schedules (with linear warm-up)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch

from cnnlab.config import OptimConfig, ScheduleConfig


def build_optimizer(
    params: Iterable[torch.nn.Parameter], cfg: OptimConfig
) -> torch.optim.Optimizer:
    """Return the optimizer named by `cfg.name`."""
    return torch.optim.SGD(
        params,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov,
        weight_decay=cfg.weight_decay,
    )


class Schedule:
    """Learning-rate factor as a pure function of the global step, so resume is exact.

    Warm-up rises linearly to 1 over `warmup_epochs`; the main schedule then runs over the
    remaining steps: multistep (x gamma at each milestone epoch) or cosine from 1 to
    lr_min_factor (m + (1 - m) * (1 + cos(pi t / T)) / 2), or constant.
    """

    def __init__(self, cfg: ScheduleConfig, epochs: int, steps_per_epoch: int) -> None:
        self.cfg = cfg
        self.steps_per_epoch = steps_per_epoch
        self.total = epochs * steps_per_epoch
        self.warmup = round(cfg.warmup_epochs * steps_per_epoch)
        self.milestone_steps = sorted(m * steps_per_epoch for m in cfg.milestones)

    def factor(self, step: int) -> float:
        """Return the multiplier of the base lr at global step `step` (0-based)."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.cfg.name == "multistep":
            passed = sum(step >= m for m in self.milestone_steps)
            return self.cfg.gamma**passed
        if self.cfg.name == "cosine":
            span = max(1, self.total - self.warmup)
            t = min(step - self.warmup, span)
            m = self.cfg.lr_min_factor
            return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * t / span))
        return 1.0

    def apply(self, optimizer: torch.optim.Optimizer, base_lr: float, step: int) -> float:
        """Set every param group's lr for `step`; return it."""
        lr = base_lr * self.factor(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr
