"""Multi-process training with PyTorch DDP, launched by `torchrun` (gloo on CPU, nccl on GPU).

`torchrun --nproc_per_node=N -m cnnlab train ...` starts N copies of the command with RANK,
WORLD_SIZE and LOCAL_RANK set; `init_from_env` joins them into one process group. Without
those variables everything here is a no-op for a single process, so the trainer has one code
path. Rank 0 alone writes the run folder; every rank computes, and collectives keep them equal.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from cnnlab.errors import ReportedElsewhere, UserError

T = TypeVar("T")


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: rank (0-based), world size, and rank on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Return whether this process writes the run folder and prints (rank 0)."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        """Return whether more than one process takes part."""
        return self.world > 1


def launched_by_torchrun() -> bool:
    """Return whether torchrun (or another launcher) set WORLD_SIZE and RANK for this process."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def current() -> DistInfo:
    """Return this process's DistInfo (rank 0 of 1 when no process group is running)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistInfo()
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init_from_env(device_name: str) -> DistInfo:
    """Join the torchrun job described by the environment; a single process when there is none.

    The backend follows the device: nccl when training on CUDA, gloo on the CPU. Each process
    uses the GPU of its LOCAL_RANK.
    """
    if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
        return DistInfo()
    if dist.is_initialized():
        return current()
    if not dist.is_available():
        raise UserError("this torch build has no torch.distributed; run without torchrun")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = device_name.startswith("cuda") or (
        device_name == "auto" and torch.cuda.is_available()
    )
    if use_cuda:
        if not torch.cuda.is_available():
            raise UserError("config key 'train.device': CUDA is not available on this machine")
        if local_rank >= torch.cuda.device_count():
            raise UserError(
                f"LOCAL_RANK {local_rank} but this node has {torch.cuda.device_count()} GPU(s); "
                "use --nproc_per_node <= the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
    backend = "nccl" if use_cuda else "gloo"
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))
    return current()


def device_for(info: DistInfo, device: torch.device) -> torch.device:
    """Return the device this rank trains on: its own GPU (cuda:LOCAL_RANK) under DDP."""
    if info.active and device.type == "cuda":
        return torch.device("cuda", info.local_rank)
    return device


def shutdown() -> None:
    """Leave the process group (if any)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def peer_failed(exc: BaseException) -> bool:
    """Return whether `exc` is one of this job's collectives failing because another process
    of the job is gone (nccl raises DistBackendError; gloo a RuntimeError from its transport)."""
    if not current().active or not isinstance(exc, RuntimeError):
        return False
    return isinstance(exc, dist.DistError) or "gloo/transport" in str(exc)


def barrier() -> None:
    """Wait for every rank (no-op for one process)."""
    if current().active:
        dist.barrier()


def reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Return the elementwise sum of `tensor` over all ranks (the tensor itself for one)."""
    if current().active:
        tensor = tensor.clone()
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_object(value: T, src: int = 0) -> T:
    """Return rank `src`'s `value` on every rank (picklable values only)."""
    if not current().active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Return every rank's `value`, in rank order, on every rank."""
    info = current()
    if not info.active:
        return [value]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, value)
    return out


def on_main(fn: Callable[[], T]) -> T:
    """Run `fn` on rank 0 only and give its result (or its UserError) to every rank.

    Used for what must happen once (creating the run folder, timing numerics): if rank 0
    fails with a UserError, every rank raises it, so no rank waits forever (rank 0 prints it;
    the others raise ReportedElsewhere, so it is printed once).
    """
    info = current()
    if not info.active:
        return fn()
    result: tuple[str, Any] = ("ok", None)
    if info.is_main:
        try:
            result = ("ok", fn())
        except UserError as exc:
            result = ("error", str(exc))
    result = broadcast_object(result)
    if result[0] == "error":
        raise UserError(result[1]) if info.is_main else ReportedElsewhere(result[1])
    return result[1]


def agree(fn: Callable[[], T]) -> T:
    """Run `fn` on every rank and agree on its UserErrors: if any rank fails, every rank raises,
    and only the lowest failing rank prints the message (the others exit without repeating it).

    For what every rank does alike outside the step (e.g. decoding a fixed batch of images), so
    that a bad file every rank meets is reported once, and no rank waits for one that stopped.
    """
    info = current()
    if not info.active:
        return fn()
    try:
        result, error = fn(), None
    except UserError as exc:
        result, error = None, str(exc)
    errors = gather_objects(error)
    failed = [rank for rank, message in enumerate(errors) if message is not None]
    if not failed:
        return result
    message = errors[failed[0]]
    raise UserError(message) if info.rank == failed[0] else ReportedElsewhere(message)


def check_disjoint(indices: torch.Tensor) -> str:
    """Check that the ranks' sample indices of an epoch are pairwise disjoint; describe them.

    Every rank passes the indices it will read this epoch (all of one length); rank 0 gets a
    line for the log; a repeat across ranks is a bug in the sharding and raises.
    """
    info = current()
    parts = gather_objects(indices.cpu().tolist())
    seen = [i for part in parts for i in part]
    repeats = len(seen) - len(set(seen))
    if repeats:
        raise RuntimeError(f"data shards overlap: {repeats} sample(s) drawn by two ranks")
    sizes = ", ".join(str(len(p)) for p in parts)
    return f"data shards: {info.world} ranks read {sizes} images this epoch, pairwise disjoint"


def wrap_model(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    """Return the module to train with: DDP around `model` under torchrun, else `model` itself.

    The trainer keeps the bare module for evaluation and checkpoints, so saved weights never
    carry DDP's 'module.' prefix.
    """
    if not info.active:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def convert_sync_bn(
    model: nn.Module, info: DistInfo, device: torch.device
) -> tuple[nn.Module, str]:
    """Return `model` with SyncBatchNorm layers when asked under DDP, and a line saying what."""
    if not info.active:
        return model, "train.sync_bn: one process, plain BatchNorm"
    if device.type != "cuda":
        raise UserError(
            "train.sync_bn=true needs GPUs: PyTorch's SyncBatchNorm does not run on the CPU "
            "(gloo); drop train.sync_bn or train on CUDA"
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(model), "train.sync_bn: SyncBatchNorm"


def rank_seed(seed: int, rank: int) -> int:
    """Return the seed of rank `rank`'s own random streams (dropout, augmentation); rank 0's is
    `seed` itself, so a one-process run is unchanged."""
    return seed if rank == 0 else (seed * 1_000_003 + rank * 104_729) % (2**63)
