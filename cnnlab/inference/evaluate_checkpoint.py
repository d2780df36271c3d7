"""Evaluate a saved checkpoint on a dataset split (what `cnnlab eval` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnnlab.config import validate
from cnnlab.data.pipeline import eval_loader
from cnnlab.engine.evaluate import evaluate
from cnnlab.engine.trainer import resolve_device
from cnnlab.run.saved_model import load_trained_model, read_cnnlab_checkpoint


def evaluate_checkpoint(
    path: Path, dataset: str | None, root: str | None, split: str = "test", tta: str | None = None
) -> dict[str, Any]:
    """Return loss, top-1/top-5 error (percent) of the checkpoint's model on `split`, with
    test-time augmentation `tta` (see cnnlab.engine.evaluate.predict; None: the run's own
    eval.tta)."""
    cfg = validate(read_cnnlab_checkpoint(path)["config"])
    name = dataset or cfg.data.name
    device = resolve_device(cfg.train.device)
    loader, info = eval_loader(cfg, split, device, name, root)
    # The model is built for the evaluated data's channels and classes, so weights that do
    # not fit another dataset are named as such.
    trained = load_trained_model(path, device, info)
    tta = tta or cfg.eval.tta
    with torch.no_grad():
        metrics = evaluate(trained.model, loader, trained.numerics, device, tta)
    return {**metrics, "dataset": name, "images": loader.num_images, "tta": tta}
