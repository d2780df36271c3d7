"""One training step and the epoch clock, kept apart from the loop so that the loop stays about
epochs, evaluation and checkpoints, and the step stays free of host synchronisation.

A step: forward under the precision's autocast, the (multi-head) loss, backward — through a
GradScaler for fp16, whose gradients would otherwise underflow — the callbacks' gradient hook on
*unscaled* gradients, the optimizer step. Nothing in it reads a GPU value on the host: the loss
comes back as a device tensor and the loop checks it every few steps. (GradScaler's own
inf check syncs once per step unless the optimizer is fused, which `build_optimizer` asks
for on CUDA under fp16; see docs/gpu.md.)
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cnnlab.engine.losses import combine_heads, multi_head_loss
from cnnlab.engine.numerics import Numerics


def make_scaler(precision: str, device: torch.device) -> torch.amp.GradScaler | None:
    """Return a GradScaler for fp16 (loss scaling keeps small gradients representable), or
    None for fp32 and bf16, whose exponent range needs none."""
    if precision != "fp16":
        return None
    return torch.amp.GradScaler(device.type)


@dataclass
class StepResult:
    """What one step leaves on the device: the detached loss and the combined logits."""

    loss: torch.Tensor
    logits: torch.Tensor


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    numerics: Numerics,
    scaler: torch.amp.GradScaler | None,
    images: torch.Tensor,
    targets: torch.Tensor,
    label_smoothing: float,
    before_step: Callable[[], None],
) -> StepResult:
    """Run forward, backward and the optimizer step on one batch, without a host sync."""
    with numerics.autocast(images.device):
        logits = model(numerics.layout(images))
    loss = multi_head_loss(logits, targets, label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        before_step()
        optimizer.step()
    else:
        scaler.scale(loss).backward()
        # Callbacks that touch gradients (NR's L1 term) see their true scale.
        scaler.unscale_(optimizer)
        before_step()
        scaler.step(optimizer)  # skipped, on the device, when a gradient is inf/NaN
        scaler.update()
    return StepResult(loss.detach(), combine_heads(logits))


class EpochClock:
    """Wall time of an epoch's steps: CUDA events on a GPU (the host runs ahead of the device,
    so host time would miss queued work), perf_counter elsewhere."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.device = device
        self._start_host = 0.0
        if self.cuda:
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)

    def _stream(self) -> torch.cuda.Stream:
        # The run's device's stream, not the current device's (cuda:0 unless set).
        return torch.cuda.current_stream(self.device)

    def start(self) -> None:
        """Mark the start of the epoch's first step."""
        self._start_host = time.perf_counter()
        if self.cuda:
            self._start.record(self._stream())

    def seconds(self) -> float:
        """Return the seconds since `start` (waits for the GPU's queued work on CUDA)."""
        if not self.cuda:
            return time.perf_counter() - self._start_host
        self._end.record(self._stream())
        self._end.synchronize()
        return self._start.elapsed_time(self._end) / 1000.0
