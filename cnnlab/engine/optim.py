"""Optimizers (with an optional no-decay group) and learning-rate schedules (per iteration or
per epoch)."""

from __future__ import annotations

import math

import torch
from torch import nn

from cnnlab.config import OptimConfig, ScheduleConfig

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
}
# Normalisation layers whose affine weights are exempt from decay under no_decay_bn_bias.
NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def param_groups(
    model: nn.Module, weight_decay: float, no_decay_bn_bias: bool, norm_lr_scale: float = 1.0
) -> list[dict]:
    """Split parameters into a decayed group and, if asked, a no-decay group (norms, biases);
    with `norm_lr_scale` != 1 the norm layers' parameters form their own group whose
    `lr_scale` multiplies the schedule's lr (and divides its decay: same decay per step)."""
    if not no_decay_bn_bias and norm_lr_scale == 1.0:
        return [{"params": list(model.parameters()), "weight_decay": weight_decay}]
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters(False)
    }
    decay, no_decay, norm = [], [], []
    for name, p in model.named_parameters():
        if norm_lr_scale != 1.0 and id(p) in norm_params:
            norm.append(p)
            continue
        exempt = no_decay_bn_bias and (id(p) in norm_params or name.rsplit(".", 1)[-1] == "bias")
        (no_decay if exempt else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    groups.append({"params": no_decay, "weight_decay": 0.0})
    norm_decay = 0.0 if no_decay_bn_bias else weight_decay / norm_lr_scale
    groups.append({"params": norm, "weight_decay": norm_decay, "lr_scale": norm_lr_scale})
    return [g for g in groups if g["params"]]


# Optimizers with a fused CUDA kernel: one launch per step, and GradScaler hands them the
# inf check on the device instead of reading it on the host every step.
FUSED = {"sgd", "adam", "adamw"}


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, fused: bool = False
) -> torch.optim.Optimizer:
    """Return the optimizer named by `cfg.name` over `model`'s parameters (its fused kernel
    where `fused` and torch has one)."""
    groups = param_groups(model, cfg.weight_decay, cfg.no_decay_bn_bias, cfg.norm_lr_scale)
    extra = {"fused": True} if fused and cfg.name in FUSED else {}
    optimizer = OPTIMIZERS[cfg.name](groups, lr=cfg.lr, **cfg.options(), **extra)
    if extra and isinstance(optimizer, torch.optim.SGD):
        forget_skipped_first_momentum(optimizer)
    return optimizer


def forget_skipped_first_momentum(optimizer: torch.optim.SGD) -> None:
    """Make a fused SGD step that GradScaler skips leave no momentum behind, as the unfused one
    (`build_optimizer` does this to every fused SGD it builds).

    On a group's first step fused SGD creates its momentum buffers with `torch.empty_like`
    and lets the kernel fill them, but the kernel returns early when GradScaler's found_inf
    is set (pytorch/pytorch v2.13.0 torch/optim/sgd.py:505-511, `_fused_sgd`), so the next
    step would read whatever memory the buffers were given. After a step that created
    buffers, found_inf is read (a host sync, only until one step goes through) and, if set,
    the new buffers are dropped: the next step is then the first, as unfused SGD counts it.
    """
    fresh: list[dict] = []  # the groups whose first step this is

    def before(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        # A group's buffers are created together, so its first parameter tells (cheap per step).
        fresh[:] = [
            group
            for group in opt.param_groups
            if group["momentum"] and "momentum_buffer" not in opt.state.get(group["params"][0], {})
        ]

    def after(opt: torch.optim.Optimizer, args: tuple, kwargs: dict) -> None:
        # GradScaler hands the flag over as an attribute of the optimizer during its step.
        found_inf = getattr(opt, "found_inf", None)
        if fresh and found_inf is not None and bool(found_inf):
            for p in (p for group in fresh for p in group["params"]):
                opt.state[p].pop("momentum_buffer", None)
                if not opt.state[p]:
                    del opt.state[p]
        fresh.clear()

    optimizer.register_step_pre_hook(before)
    optimizer.register_step_post_hook(after)


def load_optimizer_state(optimizer: torch.optim.Optimizer, state: dict) -> None:
    """Load a saved optimizer state but keep how this optimizer was built (fused or not).

    `Optimizer.load_state_dict` replaces every group's options by the saved ones, `fused`
    included, so a checkpoint of an unfused optimizer (a CPU run, say) would silently turn a
    fused one unfused, and under fp16 GradScaler would then hand the unfused step its
    grad_scale and found_inf, which it refuses."""
    built = [{"fused": g["fused"]} if "fused" in g else {} for g in optimizer.param_groups]
    optimizer.load_state_dict(state)
    for group, kept in zip(optimizer.param_groups, built):
        group.update(kept)


class Schedule:
    """Learning rate as a pure function of the global step, so a resumed run is exact.

    Warm-up (its length in steps or epochs) is linear, rising to the base lr from `warmup_lr`
    (or from base/W at the first step), or constant at `warmup_lr`. The main schedule then
    gives a factor of the base lr: multistep (x gamma at each milestone epoch, counted from
    step 0); cosine, linear and onecycle run over the steps after warm-up, from 1 down to
    lr_min_factor m. cosine: m + (1 - m)(1 + cos(pi t / T)) / 2; linear: 1 - (1 - m) t / T;
    onecycle: rises linearly from `start_factor` (default m) to 1 at `peak_epoch`, then falls
    linearly to m. For cosine and linear, `decay_start_epoch` moves t = 0 and `decay_epochs`
    sets T. With interval=epoch the same formulas count epochs instead of steps, and every
    step of an epoch takes the value of the epoch's index. `step_offset` k gives step s the
    value of step s + k.
    """

    def __init__(
        self, cfg: ScheduleConfig, epochs: int, steps_per_epoch: int, base_lr: float = 1.0
    ) -> None:
        self.cfg = cfg
        self.base_lr = base_lr
        self.steps_per_epoch = steps_per_epoch
        self.total = epochs * steps_per_epoch
        # The schedule's clock: one tick per step, or per epoch with interval=epoch.
        self.steps_per_tick = steps_per_epoch if cfg.interval == "epoch" else 1
        per_epoch = steps_per_epoch // self.steps_per_tick
        self.ticks = epochs * per_epoch
        self.warmup = cfg.warmup_steps or round(cfg.warmup_epochs * per_epoch)
        self.milestone_steps = sorted(m * steps_per_epoch for m in cfg.milestones)
        # A quarter of the run when unset, as in airbench-style one-cycle schedules.
        peak_epoch = cfg.peak_epoch if cfg.peak_epoch is not None else epochs / 4
        self.peak = max(self.warmup, round(peak_epoch * per_epoch))
        start = cfg.decay_start_epoch
        self.decay_start = self.warmup if start is None else start * per_epoch
        span = cfg.decay_epochs * per_epoch if cfg.decay_epochs else self.ticks - self.decay_start
        self.decay_span = max(1, span)

    def _warmup_factor(self, tick: int) -> float:
        if self.cfg.warmup_lr is None:
            return (tick + 1) / self.warmup
        start = self.cfg.warmup_lr / self.base_lr
        if self.cfg.warmup_mode == "constant":
            return start
        return start + (1 - start) * tick / self.warmup

    def factor(self, step: int) -> float:
        """Return the multiplier of the base lr at global step `step` (0-based)."""
        step += self.cfg.step_offset * self.steps_per_tick
        tick = step // self.steps_per_tick
        if tick < self.warmup:
            return self._warmup_factor(tick)
        name, m = self.cfg.name, self.cfg.lr_min_factor
        if name == "multistep":
            passed = sum(step >= s for s in self.milestone_steps)
            return self.cfg.gamma**passed
        if name == "onecycle":
            if tick < self.peak:
                s = m if self.cfg.start_factor is None else self.cfg.start_factor
                return s + (1 - s) * (tick - self.warmup + 1) / (self.peak - self.warmup)
            return 1 - (1 - m) * (tick - self.peak) / max(1, self.ticks - self.peak)
        span = self.decay_span
        t = min(max(0, tick - self.decay_start), span)
        if name == "cosine":
            return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * t / span))
        if name == "linear":
            return 1 - (1 - m) * t / span
        return 1.0

    def resets_state(self, step: int) -> bool:
        """Return whether the optimizer's state starts afresh at global step `step` (the first
        step of a milestone epoch under reset_state_at_milestones)."""
        return self.cfg.reset_state_at_milestones and step in self.milestone_steps

    def lr(self, step: int) -> float:
        """Return the learning rate at global step `step`."""
        return self.base_lr * self.factor(step)

    def curve(self) -> list[float]:
        """Return the learning rate of every step of the run."""
        return [self.lr(step) for step in range(self.total)]

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every param group's lr for `step` (times the group's `lr_scale`); return it."""
        lr = self.lr(step)
        for group in optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        return lr
