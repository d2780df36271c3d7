"""Precision (fp32 / bf16 / fp16 autocast) and memory format, chosen by measurement when 'auto'.

bf16 is several times faster than fp32 on CPUs with native bf16 units and GPUs, and several
times *slower* on CPUs without them, so 'auto' times a few training steps of the real model
in each candidate and keeps the fastest. On the CPU the candidates are fp32 and bf16 (fp16
is only taken when asked for: it needs loss scaling and torch 2.13's CPU fp16 kernels are
slower than bf16 here), at min(batch, 64). On CUDA they are fp32, bf16 (where the GPU has
it), fp16, each with and without channels_last, timed at the real per-rank batch with CUDA
events after warm-up steps under the run's cudnn.benchmark, so that the batch people train
with decides (a small batch is launch-bound on a GPU and would favour fp32).

On the CPU, 'auto' leaves channels_last out: with torch 2.13's CPU kernels a channels_last
network with narrow layers ran about 25x slower and, now and then, crashed the process
(segfault or abort) inside the convolution. The verdict is cached per machine, torch
version, model and batch shape (on CUDA also cudnn.benchmark, determinism and TF32, which change
the timings) in ~/.cache/cnnlab/numerics.json, so later runs skip the measurement. The probe
times eager steps: under train.compile the choice is the fastest uncompiled candidate.

train.compile=auto then times compiled against eager steps at that precision, once per machine,
torch version, model and batch shape (the same cache): on a 2-core Intel Xeon with AMX bf16,
one thread, preact_resnet20 at batch 128 on 32x32 images trained 318 images/s compiled against
171 eager in bf16, and 108 against 94 in fp32.
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from cnnlab.engine.optim import forget_skipped_first_momentum

CACHE_FILE = (
    Path(os.environ.get("CNNLAB_CACHE", Path.home() / ".cache" / "cnnlab")) / "numerics.json"
)
PROBE_BATCH = 64  # the CPU probe's batch cap (a CPU's speed ratio barely moves with batch)
CUDA_WARMUP_STEPS = 5
CUDA_TIMED_STEPS = 20


@dataclass
class Numerics:
    """The chosen precision and memory format, with the measurements behind an 'auto' choice."""

    precision: str = "fp32"
    channels_last: bool = False
    measured: dict[str, float] = field(default_factory=dict)
    compile: bool = False  # whether the training steps run through torch.compile
    compile_measured: dict[str, float] = field(default_factory=dict)  # train.compile=auto's

    @property
    def label(self) -> str:
        """Return a short name such as 'bf16+channels_last'."""
        return self.precision + ("+channels_last" if self.channels_last else "")

    @property
    def memory_format(self) -> torch.memory_format:
        """Return the torch memory format for model weights and inputs."""
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """Return `x` with exactly the canonical strides of this memory format.

        `.contiguous(memory_format=...)` keeps ambiguous strides (a 1-channel batch counts as
        both layouts), and a conv whose input and weights disagree on the layout can fall onto
        a path hundreds of times slower on the CPU; so the strides are made exact here.
        """
        wanted = torch.empty_like(x, memory_format=self.memory_format).stride()
        return x if x.stride() == wanted else x.clone(memory_format=self.memory_format)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """Return the autocast context for this precision on `device`."""
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device.type, dtype=dtype, enabled=self.precision != "fp32")


def bf16_usable(device: torch.device) -> bool:
    """Return whether bf16 autocast can run on `device`."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


def precision_candidates(device: torch.device) -> list[str]:
    """Return the precisions 'auto' may time on `device` (fp16 only on GPUs)."""
    if device.type == "cuda":
        return ["fp32"] + ["bf16"] * bf16_usable(device) + ["fp16"]
    return ["fp32"] + ["bf16"] * bf16_usable(device)


def channels_last_candidates(device: torch.device) -> list[bool]:
    """Return the memory formats 'auto' may time on `device` (channels_last only on GPUs)."""
    return [False, True] if device.type == "cuda" else [False]


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu:{platform.processor() or platform.machine()}:{torch.get_num_threads()}threads"


def _images_per_second(
    model: nn.Module,
    numerics: Numerics,
    shape: tuple[int, ...],
    device: torch.device,
    compiled: bool = False,
) -> float:
    model = copy.deepcopy(model).to(device=device, memory_format=numerics.memory_format)
    cuda = device.type == "cuda"
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, fused=cuda or None)
    forward = torch.compile(model) if compiled else model
    if cuda:  # else an overflowing first fp16 step leaves garbage momentum, then skipped steps
        forget_skipped_first_momentum(opt)
    scaler = torch.amp.GradScaler(device.type) if numerics.precision == "fp16" else None
    x = numerics.layout(torch.randn(shape, device=device))
    y = torch.zeros(shape[0], dtype=torch.long, device=device)

    def step() -> None:
        with numerics.autocast(device):
            loss = nn.functional.cross_entropy(forward(x), y)
        opt.zero_grad(set_to_none=True)
        if scaler is None:
            loss.backward()
            opt.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()

    if not cuda:
        step()  # warm-up: allocations, kernel selection (and compilation)
        steps, start = 0, time.perf_counter()
        while steps < 2 or (time.perf_counter() - start < 0.5 and steps < 20):
            step()
            steps += 1
        return steps * shape[0] / (time.perf_counter() - start)
    # CUDA: warm-up steps let cudnn.benchmark pick its algorithms and the allocator settle;
    # events time the device's work, not the host's queueing, on `device`'s own stream.
    for _ in range(CUDA_WARMUP_STEPS):
        step()
    stream = torch.cuda.current_stream(device)
    begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    begin.record(stream)
    for _ in range(CUDA_TIMED_STEPS):
        step()
    end.record(stream)
    end.synchronize()
    return CUDA_TIMED_STEPS * shape[0] / (begin.elapsed_time(end) / 1000.0)


def choose_numerics(
    model: nn.Module,
    model_key: str,
    input_shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device,
    precision: str,
    channels_last: str | bool,
) -> Numerics:
    """Resolve 'auto' precision / channels_last by timing the candidates (cached)."""
    if precision == "auto" and getattr(model, "binary", False):
        precision = "fp32"  # 1-bit nets: ReCU is fp32; bf16 flips signs (docs/methods.md)
    precisions = [precision] if precision != "auto" else precision_candidates(device)
    layouts = [channels_last] if channels_last != "auto" else channels_last_candidates(device)
    candidates = [Numerics(p, bool(c)) for p in precisions for c in layouts]
    if len(candidates) == 1:
        return candidates[0]
    probe_batch = batch_size if device.type == "cuda" else min(batch_size, PROBE_BATCH)
    shape = (probe_batch, *input_shape)
    c_labels = ",".join(c.label for c in candidates)
    key = "|".join(
        [_device_name(device), f"torch {torch.__version__}", model_key, str(shape), c_labels]
        + _backend_key(device)
    )
    cache = _read_cache()
    if key not in cache:
        # The probe must not disturb the run: it trains a copy, under a forked RNG.
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            cache[key] = {
                c.label: round(_images_per_second(model, c, shape, device), 1) for c in candidates
            }
        _write_cache(cache)
    measured = cache[key]
    best = max(
        candidates,
        key=lambda c: measured[f"{c.precision}{'+channels_last' if c.channels_last else ''}"],
    )
    return Numerics(best.precision, best.channels_last, dict(measured))


def _backend_key(device: torch.device) -> list[str]:
    """Return the backend settings that change what the CUDA probe measures (cudnn.benchmark,
    determinism, TF32), for the cache key; none on the CPU, where they change nothing."""
    if device.type != "cuda":
        return []
    b = torch.backends
    return [
        f"cudnn_benchmark={b.cudnn.benchmark}",
        f"deterministic={torch.are_deterministic_algorithms_enabled()}",
        f"tf32={b.cuda.matmul.allow_tf32},{b.cudnn.allow_tf32}",
    ]


def choose_compile(
    numerics: Numerics,
    setting: bool | str,
    model: nn.Module,
    model_key: str,
    input_shape: tuple[int, int, int],
    batch_size: int,
    device: torch.device,
) -> Numerics:
    """Return `numerics` with its compile choice: train.compile as set, or for 'auto' whether
    torch.compile made training steps faster, timed once at the chosen precision (cached).

    Compiled steps fuse the element-wise work around each convolution, which pays on some
    machines and not on others (and costs a compilation at start-up), so 'auto' measures.
    """
    if setting != "auto":
        return replace(numerics, compile=bool(setting))
    probe_batch = batch_size if device.type == "cuda" else min(batch_size, PROBE_BATCH)
    shape = (probe_batch, *input_shape)
    key = "|".join(
        [_device_name(device), f"torch {torch.__version__}", model_key, str(shape),
         numerics.label, "compile"]
    )  # fmt: skip
    cache = _read_cache()
    if key not in cache:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            cache[key] = {
                mode: round(
                    _images_per_second(model, numerics, shape, device, mode == "compiled"), 1
                )
                for mode in ("eager", "compiled")
            }
        _write_cache(cache)
    measured = cache[key]
    return replace(
        numerics, compile=measured["compiled"] > measured["eager"], compile_measured=measured
    )


def _read_cache() -> dict[str, dict[str, float]]:
    try:
        return json.loads(CACHE_FILE.read_text())
    except (OSError, ValueError):
        return {}


def _write_cache(cache: dict[str, dict[str, float]]) -> None:
    try:
        CACHE_FILE.parent.mkdir(parents=True, exist_ok=True)
        tmp = CACHE_FILE.with_suffix(".tmp")
        tmp.write_text(json.dumps(cache, indent=1))
        tmp.replace(CACHE_FILE)
    except OSError:
        pass  # an unwritable cache only costs a re-measurement next time


def precision_note(numerics: Numerics, device: torch.device) -> str | None:
    """Return a log line when the precision is known to be slow on `device`, else None."""
    if numerics.precision == "fp16" and device.type == "cpu":
        return (
            "note: fp16 on the CPU is slow with torch 2.13 (its backward convolutions take a "
            "slow path: preact_resnet20 trained at 1.9 images/s against 147 in fp32); bf16 is "
            "the fast half precision on CPUs"
        )
    return None


def numerics_dict(numerics: Numerics) -> dict[str, object]:
    """Return the choice as plain data for summary.json and checkpoints."""
    return asdict(numerics)
