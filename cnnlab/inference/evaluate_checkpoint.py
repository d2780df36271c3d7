"""Evaluate a saved checkpoint on a dataset split (what `cnnlab eval` runs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from cnnlab.config import validate
from cnnlab.data.pipeline import eval_loader
from cnnlab.engine.evaluate import evaluate
from cnnlab.engine.trainer import resolve_device
from cnnlab.errors import UserError
from cnnlab.run.saved_model import checkpoint_file, load_trained_model, read_cnnlab_checkpoint


def evaluate_checkpoint(
    path: Path,
    dataset: str | None,
    root: str | None,
    split: str = "test",
    tta: str | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Return loss, top-1/top-5 error (percent) of the checkpoint's model on `split` (its
    first `limit` images), with test-time augmentation `tta` (see cnnlab.engine.evaluate.predict;
    None: the run's own eval.tta), in batches of `batch_size` (None: train.eval_batch_size).
    `path` is a checkpoint file or a run folder (its last.pt)."""
    for name, value in (("--limit", limit), ("--batch-size", batch_size)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    path = checkpoint_file(path)
    cfg = validate(read_cnnlab_checkpoint(path)["config"])
    if batch_size is not None:
        cfg.train.eval_batch_size = batch_size
    name = dataset or cfg.data.name
    device = resolve_device(cfg.train.device)
    loader, info = eval_loader(cfg, split, device, name, root, limit)
    # The model is built for the evaluated data's channels and classes, so weights that do
    # not fit another dataset are named as such.
    trained = load_trained_model(path, device, info)
    tta = tta or cfg.eval.tta
    with torch.no_grad():
        metrics = evaluate(trained.model, loader, trained.numerics, device, tta)
    return {**metrics, "dataset": name, "images": loader.num_images, "tta": tta}
