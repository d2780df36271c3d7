"""Evaluate a saved checkpoint on a dataset split (what `cnnlab eval` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnnlab.config import validate
from cnnlab.data.pipeline import eval_loader
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.evaluate import evaluate
from cnnlab.engine.numerics import Numerics
from cnnlab.engine.trainer import resolve_device
from cnnlab.errors import UserError
from cnnlab.methods.rejuvenation import apply_architecture
from cnnlab.registry import build_model


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


def evaluate_checkpoint(
    path: Path, dataset: str | None, root: str | None, split: str = "test", tta: str | None = None
) -> dict[str, Any]:
    """Return loss, top-1/top-5 error (percent) of the checkpoint's model on `split`, with
    test-time augmentation `tta` ('none' or 'flip'; None: the run's own eval.tta)."""
    state = load_checkpoint(path)
    if "config" not in state or "model" not in state:
        raise UserError(f"{path} is not a cnnlab checkpoint (no config or model state)")
    cfg = validate(state["config"])
    name = dataset or cfg.data.name
    device = resolve_device(cfg.train.device)
    loader, info = eval_loader(cfg, split, device, name, root)
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
            f"{path}: the weights do not fit {cfg.model.name} for {name} "
            f"({info.channels} channels, {info.num_classes} classes): {misfit}"
        )
    model.load_state_dict(weights)
    numerics = Numerics(**{k: v for k, v in state.get("numerics", {}).items() if k != "measured"})
    model.to(device=device, memory_format=numerics.memory_format)
    tta = tta or cfg.eval.tta
    with torch.no_grad():
        metrics = evaluate(model, loader, numerics, device, tta)
    return {**metrics, "dataset": name, "images": loader.num_images, "tta": tta}
