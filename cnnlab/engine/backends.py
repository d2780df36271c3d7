"""Process-wide backend policy of a run: cudnn.benchmark, TF32 and deterministic algorithms.

These are torch globals, so a run sets only what its config asks for and reports the values in
force (summary.json `backends`, log.txt), whatever set them:
- `train.cudnn_benchmark` (default true): cuDNN times its convolution algorithms for each new
  input shape and keeps the fastest; the batch shape is fixed within a run, so this pays after
  the first steps. Off under `train.deterministic`.
- `train.tf32` (default null = torch's own defaults: TF32 in cuDNN convolutions, full fp32 in
  matmuls): true or false sets both. Only fp32 runs on Ampere or newer GPUs are affected.
- `train.deterministic` (default false): torch.use_deterministic_algorithms (warn_only: an op
  with no deterministic kernel warns instead of stopping the run), cudnn.deterministic,
  CUBLAS_WORKSPACE_CONFIG=:4096:8 when unset (cuBLAS needs it for reproducible matmuls; it must
  be set before cuBLAS starts, so it is set before the model is placed; where CUDA had already
  started in this process, the reported value says it may not be in force), and global
  average pooling as a mean (`deterministic_pooling`). Costs speed on GPUs.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

CUBLAS_WORKSPACE = ":4096:8"


class GlobalAvgPool(nn.Module):
    """Global average pooling as a mean: the same values as AdaptiveAvgPool2d(1), but a
    backward pass that is deterministic on CUDA (adaptive pooling's backward is not)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the per-channel mean as an N x C x 1 x 1 tensor."""
        return x.mean(dim=(2, 3), keepdim=True)


def deterministic_pooling(model: nn.Module) -> int:
    """Replace every AdaptiveAvgPool2d to 1x1 in `model` by GlobalAvgPool (no weights change,
    so checkpoints load either way); return how many were replaced."""
    swaps = [
        (parent, name)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1))
    ]
    for parent, name in swaps:
        setattr(parent, name, GlobalAvgPool())
    return len(swaps)


# Set when this process put CUBLAS_WORKSPACE_CONFIG in place after CUDA had started: cuBLAS
# reads it once, when it first runs, so it may then not be in force.
_late_cublas_workspace = False


def apply_backend_policy(
    device: torch.device, cudnn_benchmark: bool, tf32: bool | None, deterministic: bool
) -> dict[str, Any]:
    """Set the run's backend globals and return the values in force, for summary and log.

    On CUDA the run's device also becomes the current one: CUDA events, RNG states and
    allocations without a device go to the current device, which is cuda:0 unless set."""
    global _late_cublas_workspace
    if deterministic:
        if "CUBLAS_WORKSPACE_CONFIG" not in os.environ:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
            _late_cublas_workspace = torch.cuda.is_initialized()
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.deterministic = True
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
        if tf32 is not None:
            torch.backends.cuda.matmul.allow_tf32 = tf32
            torch.backends.cudnn.allow_tf32 = tf32
    return backend_state()


def backend_state() -> dict[str, Any]:
    """Return the backend globals that decide GPU speed and reproducibility."""
    return {
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32,
        "deterministic": torch.are_deterministic_algorithms_enabled(),
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cublas_workspace": _cublas_workspace(),
    }


def _cublas_workspace() -> str | None:
    value = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if value is not None and _late_cublas_workspace:
        return f"{value} (set after CUDA started: in force only if no cuBLAS call ran before)"
    return value
