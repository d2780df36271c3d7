"""From a cnnlab checkpoint back to a ready model: the one place that rebuilds a trained net.

`cnnlab eval`, `predict` and `export` all start here: find the checkpoint (a file, or a run
folder's last.pt), read it, check that it is
one of ours, rebuild the model the run trained (its options, a rejuvenated shape), load the
weights and put it in evaluation mode with the run's numerics.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.config import Config, validate
from cnnlab.data.pipeline import run_info
from cnnlab.data.sources import DatasetInfo
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.numerics import Numerics
from cnnlab.engine.run_folder import RunFolder
from cnnlab.engine.trainer import resolve_device
from cnnlab.errors import UserError
from cnnlab.methods.rejuvenation import apply_architecture
from cnnlab.registry import build_model


@dataclass
class TrainedModel:
    """A trained model in eval mode on `device`, and what it was trained with."""

    model: nn.Module
    cfg: Config
    info: DatasetInfo  # channels, image size, normalisation and class names of its input
    numerics: Numerics
    device: torch.device
    state: dict[str, Any]  # the checkpoint's other entries (history, epoch, best, flops, ...)
    path: Path


def weights_misfit(own: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> str:
    """Return why `saved` weights cannot load into a model with state `own` ('' if they fit)."""
    for key, tensor in own.items():
        if key in saved and saved[key].shape != tensor.shape:
            return (
                f"{key} is {tuple(saved[key].shape)} in the checkpoint but "
                f"{tuple(tensor.shape)} in the model"
            )
    missing = [k for k in own if k not in saved]
    unexpected = [k for k in saved if k not in own]
    if missing or unexpected:
        example = (missing or unexpected)[0]
        return (
            f"{len(missing)} of the model's tensors are not in the checkpoint and "
            f"{len(unexpected)} of its tensors are not in the model (e.g. {example})"
        )
    return ""


def checkpoint_file(path: Path) -> Path:
    """Return `path`, or for a run folder its last.pt: the model of the last epoch, which the
    run's summary.json reports (its best.pt is named explicitly, RUN/best.pt)."""
    path = Path(path)
    if not path.is_dir():
        return path
    run = RunFolder(path, writer=False)
    if run.last.is_file():
        return run.last
    if run.config.is_file():
        raise UserError(f"run folder {path} has no last.pt yet (no epoch has finished)")
    raise UserError(
        f"{path} is a folder but not a run folder (it has no last.pt); give a checkpoint "
        "file or a run folder"
    )


def read_cnnlab_checkpoint(path: Path) -> dict[str, Any]:
    """Load `path` and check it is a cnnlab checkpoint (a mapping with a config and weights)."""
    state = load_checkpoint(path)
    if isinstance(state, dict) and state.get("config") is None and state.get("settings"):
        raise UserError(
            f"{path} is a run of a model built in Python (cnnlab.Trainer): it has no config to "
            "rebuild the model from; load its 'model' state into your own model class"
        )
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("config"), dict)
        or not isinstance(state.get("model"), dict)
    ):
        raise UserError(f"{path} is not a cnnlab checkpoint (no config or model state)")
    return state


def load_trained_model(
    path: Path, device: torch.device | str | None = None, info: DatasetInfo | None = None
) -> TrainedModel:
    """Rebuild the checkpoint's model with its weights, in eval mode on `device` (None: the
    run's train.device); built for `info` (channels, classes) or for the run's own dataset.
    `path` is a checkpoint file or a run folder (its last.pt)."""
    path = checkpoint_file(path)
    state = read_cnnlab_checkpoint(path)
    cfg = validate(state["config"])
    if info is None:
        # Checkpoints since issue 17 carry their class names (an image folder may be gone).
        classes = tuple(state["classes"]) if state.get("classes") else None
        size = state.get("input_shape", [None, None])[-1]  # what image_size=auto chose
        info = run_info(cfg.data, classes, size)
    model = build_model(
        cfg.model.name, in_channels=info.channels, num_classes=info.num_classes,
        **cfg.model.options(),
    )  # fmt: skip
    if state.get("architecture") is not None:  # reshaped during training (rejuvenation)
        model = apply_architecture(model, state["architecture"])
    # Checkpoints written by DDP runs may carry a 'module.' prefix on every key.
    weights = {k.removeprefix("module."): v for k, v in state["model"].items()}
    misfit = weights_misfit(model.state_dict(), weights)
    if misfit:
        raise UserError(
            f"{path}: the weights do not fit {cfg.model.name} for {info.name} "
            f"({info.channels} channels, {info.num_classes} classes): {misfit}"
        )
    model.load_state_dict(weights)
    device = resolve_device(cfg.train.device) if device is None else torch.device(device)
    numerics = Numerics(**{k: v for k, v in state.get("numerics", {}).items() if k != "measured"})
    model.to(device=device, memory_format=numerics.memory_format)
    model.eval()
    rest = {k: v for k, v in state.items() if k not in ("model", "optimizer")}
    return TrainedModel(model, cfg, info, numerics, device, rest, path)
