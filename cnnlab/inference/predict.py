"""Classify image files with a trained model (what `cnnlab predict` runs).

Each image is turned into the model's input the way the run's own evaluation images were:
image-folder runs take the folder's evaluation view (shorter side resized to
data.eval_resize, centre data.image_size square, RGB or gray as data.color); runs on an
in-memory set (MNIST, Fashion-MNIST, CIFAR) take the set's channels and size (a picture of
another size has its shorter side resized to that size and its centre kept; one of the set's
own size passes through unchanged), and both are normalised with the run's mean and std.
EXIF orientation is not applied, as it is not in training.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.augment import to_model_input
from cnnlab.data.folder import image_extensions
from cnnlab.data.folder_loader import ImageView, decode_view
from cnnlab.data.pipeline import folder_view
from cnnlab.engine.evaluate import predict as forward
from cnnlab.errors import UserError
from cnnlab.run.saved_model import TrainedModel


@dataclass
class Prediction:
    """The top-k classes of one image: (class index, class name, probability), best first."""

    path: Path
    top: list[tuple[int, str, float]]


@dataclass
class PredictResult:
    """Predictions of the readable images, in input order, and the unreadable ones."""

    predictions: list[Prediction] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)


def image_files(paths: Sequence[Path]) -> list[Path]:
    """Return the files named, and the image files below the folders named (sorted)."""
    extensions = frozenset(image_extensions())
    files: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in extensions
            )
            if not found:
                raise UserError(f"{path}: no image files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise UserError(f"{path}: no such file or folder")
    return files


def input_view(trained: TrainedModel) -> ImageView:
    """Return how a file becomes the model's input (the run's evaluation view)."""
    cfg, info = trained.cfg, trained.info
    if cfg.data.is_image_folder():
        return folder_view(cfg.data, train=False)
    height, width = info.image_size
    if height != width:
        raise UserError(f"{cfg.data.name}: predicting for {height}x{width} inputs is not supported")
    return ImageView(image_size=height, eval_resize=height, random_crop=False,
                     gray=info.channels == 1)  # fmt: skip


def _decode(path: Path, view: ImageView) -> tuple[np.ndarray | None, str | None]:
    try:
        return decode_view(str(path), view, None), None
    except Exception as exc:  # noqa: BLE001 - decoders raise many types for a bad file
        return None, f"{type(exc).__name__}: {exc}".splitlines()[0]


def _chunks(files: list[Path], size: int) -> Iterator[list[Path]]:
    for start in range(0, len(files), size):
        yield files[start : start + size]


def class_names(trained: TrainedModel) -> list[str]:
    """Return the run's class names (the class index as text where the run has none)."""
    names = list(trained.info.classes)
    if len(names) != trained.info.num_classes:
        names = [str(i) for i in range(trained.info.num_classes)]
    return names


@torch.no_grad()
def predict_files(
    trained: TrainedModel, files: list[Path], top_k: int = 1, tta: str | None = None
) -> PredictResult:
    """Classify `files` in batches of the run's eval batch size; unreadable ones are listed."""
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, got {top_k}")
    view, info, device = input_view(trained), trained.info, trained.device
    tta = tta or trained.cfg.eval.tta
    names = class_names(trained)
    k = min(top_k, info.num_classes)
    mean = torch.tensor(info.mean, device=device)
    inv_std = 1.0 / torch.tensor(info.std, device=device)
    result = PredictResult()
    workers = min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(workers) as pool:
        for chunk in _chunks(files, trained.cfg.train.eval_batch_size):
            decoded = list(pool.map(lambda p: _decode(p, view), chunk))
            good = [(p, px) for p, (px, _) in zip(chunk, decoded) if px is not None]
            result.unreadable += [(p, why) for p, (px, why) in zip(chunk, decoded) if px is None]
            if not good:
                continue
            images = torch.from_numpy(np.stack([px for _, px in good])).to(device)
            x = trained.numerics.layout(to_model_input(images, mean, inv_std, torch.float32))
            with trained.numerics.autocast(device):
                logits = forward(trained.model, x, tta)
            probs, index = logits.float().softmax(1).topk(k, dim=1)
            for (path, _), p_row, i_row in zip(good, probs.tolist(), index.tolist()):
                top = [(i, names[i], p) for i, p in zip(i_row, p_row)]
                result.predictions.append(Prediction(path, top))
    return result


def csv_text(result: PredictResult) -> str:
    """Return one CSV row per predicted image: path, then class, index, probability per rank."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    k = max((len(p.top) for p in result.predictions), default=1)
    header = ["path"]
    for r in range(1, k + 1):
        header += [f"class_{r}", f"index_{r}", f"probability_{r}"]
    writer.writerow(header)
    for pred in result.predictions:
        row: list[object] = [str(pred.path)]
        for index, name, prob in pred.top:
            row += [name, index, f"{prob:.6f}"]
        writer.writerow(row)
    return out.getvalue()


def json_text(result: PredictResult, checkpoint: Path, tta: str) -> str:
    """Return the predictions and the unreadable images as a JSON document."""
    doc = {
        "checkpoint": str(checkpoint),
        "tta": tta,
        "predictions": [
            {
                "path": str(p.path),
                "top": [{"class": n, "index": i, "probability": pr} for i, n, pr in p.top],
            }
            for p in result.predictions
        ],
        "unreadable": [{"path": str(p), "reason": why} for p, why in result.unreadable],
    }
    return json.dumps(doc, indent=2) + "\n"


def unreadable_message(result: PredictResult) -> str:
    """Return the one-line error naming the images that could not be read."""
    bad = result.unreadable
    named = "; ".join(f"{p} ({why})" for p, why in bad)
    what = f"cannot read {named}" if len(bad) == 1 else f"cannot read {len(bad)} images: {named}"
    return f"{what}; the other {len(result.predictions)} image(s) were predicted"
