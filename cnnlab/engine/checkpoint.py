"""Atomic checkpoints and the RNG state they carry for exact resume."""

from __future__ import annotations

import errno
import os
import random
import re
import shutil
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cnnlab.engine.faults import fault_point
from cnnlab.errors import UserError

# Every file of a run folder is written as NAME.tmp first and renamed over NAME once complete and
# on disk, so a reader (or a resume after a kill) sees the old file or the new one, never half.
TEMP_SUFFIX = ".tmp"

# Version of the checkpoint layout (the keys Trainer.checkpoint_state writes). A checkpoint of a
# newer format than this code reads is refused rather than half-understood.
CHECKPOINT_FORMAT = 1


def temp_path(path: Path) -> Path:
    """Return the temp file that an atomic write of `path` goes through."""
    return path.with_name(path.name + TEMP_SUFFIX)


def _write_failed(path: Path, exc: OSError) -> UserError:
    # ENOSPC, EIO, EDQUOT...: say what happened and that the file there before is untouched.
    code = errno.errorcode.get(exc.errno or 0, "")
    reason = f"{exc.strerror or exc}" + (f" [{code}]" if code else "")
    kept = f"the previous {path.name} is unchanged" if path.exists() else f"no {path.name} yet"
    return UserError(f"could not write {path}: {reason}; {kept}, the partial file was removed")


@contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    # Yields the temp path to fill; then makes it durable and renames it over `path`. A failed
    # write (disk full, I/O error) removes the temp file and leaves `path` as it was.
    tmp = temp_path(path)
    try:
        yield tmp
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _write_failed(path, exc) from None
    fault_point(f"{path.name}_before_rename")
    os.replace(tmp, path)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temp file and a rename, so readers never see half a file."""
    with _atomic(path) as tmp, open(tmp, "wb") as f:
        f.write(data)


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` atomically (temp file + rename)."""
    atomic_write_bytes(path, text.encode())


def copy_file_atomic(src: Path, dst: Path) -> None:
    """Copy `src` over `dst` through a temp file and a rename."""
    with _atomic(dst) as tmp:
        shutil.copyfile(src, tmp)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Save `state` with torch.save to a temp file, then rename it over `path`."""
    with _atomic(path) as tmp, open(tmp, "wb") as f:
        try:
            torch.save(state, f)
        except RuntimeError as exc:
            # torch reports a failed write (a full disk, an I/O error) as a RuntimeError of its
            # zip writer ("unexpected pos ..."), without the errno; the free space tells which.
            free = shutil.disk_usage(tmp.parent).free / 2**20
            first = (str(exc).strip().splitlines() or ["RuntimeError"])[0]
            raise OSError(f"torch.save failed ({first}); {free:.0f} MB free there") from None


def _unreadable(path: Path, exc: Exception) -> str:
    # torch's own text runs to many lines and suggests weights_only=False, which would run
    # whatever code the file holds; say instead what is wrong with the file.
    text = str(exc)
    found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
    if found:
        return (
            f"it holds a Python object ({found[1]}) besides tensors and plain data; cnnlab "
            "loads weights only (torch.load with weights_only=True) and never runs code from a "
            "file"
        )
    if not zipfile.is_zipfile(path) or "Weights only load failed" in text:
        return "it is not a PyTorch checkpoint, or it is damaged (truncated or overwritten)"
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Load a checkpoint (weights_only); a missing, corrupt or too new file is a UserError."""
    path = Path(path)
    if not path.is_file():
        hint = ""
        if path.name == "best.pt" and path.with_name("last.pt").is_file():
            hint = "; a run without a validation split writes no best.pt: use last.pt"
        raise UserError(f"checkpoint {path} does not exist{hint}")
    # A temp file beside it is a write that was interrupted; it is never read.
    stray = temp_path(path)
    note = (
        f" ({stray.name} beside it is an interrupted write and is not used)"
        if stray.exists()
        else ""
    )
    if path.stat().st_size == 0:
        raise UserError(f"checkpoint {path} is empty (0 bytes){note}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged file
        raise UserError(
            f"checkpoint {path} cannot be read: {_unreadable(path, exc)}{note}"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise UserError(f"{path} is not a cnnlab checkpoint (no model state){note}")
    found = state.get("format", 1)
    if not isinstance(found, int) or found > CHECKPOINT_FORMAT:
        raise UserError(
            f"checkpoint {path} has format {found!r}, newer than this cnnlab reads (up to "
            f"{CHECKPOINT_FORMAT}); use the cnnlab version that wrote it"
        )
    return state


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
