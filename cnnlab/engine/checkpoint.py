"""Atomic checkpoints and the RNG state they carry for exact resume."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.errors import UserError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file and a rename, so readers never see half a file."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` atomically (temp file + rename)."""
    atomic_write_bytes(path, text.encode())


def copy_file_atomic(src: Path, dst: Path) -> None:
    """Copy `src` over `dst` through a temp file and a rename."""
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save `state` with torch.save to a temp file, then rename it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint with weights_only=True; a missing or corrupt file is a UserError."""
    if not Path(path).is_file():
        hint = ""
        if Path(path).name == "best.pt" and Path(path).with_name("last.pt").is_file():
            hint = "; a run without a validation split writes no best.pt: use last.pt"
        raise UserError(f"checkpoint {path} does not exist{hint}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(f"checkpoint {path} cannot be read: {str(exc).splitlines()[0]}") from None


def rng_state() -> dict[str, Any]:
    """Capture torch (CPU and the current CUDA device's), numpy and python RNG states in
    weights_only-safe types. Only the current device: each process trains on one GPU, and a
    run resumed where fewer GPUs are visible must still load."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": list(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the RNG states captured by `rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, list):  # older checkpoints kept every visible device's state
            cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda)


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and python's RNGs."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
