"""The model card written beside every export: what the model is, what it expects, how good.

The metrics are those the checkpoint itself recorded for the epoch it holds (its last row of
metrics), with the protocol that produced them, so a card never claims more than the run
measured.
"""

from __future__ import annotations

from typing import Any

import torch

from cnnlab.analysis.profile import count_flops, count_params
from cnnlab.inference.predict import class_names, input_view
from cnnlab.run.saved_model import TrainedModel

_METRICS = ("test_error", "test_top5_error", "test_loss", "val_error", "val_top5_error",
            "val_loss", "train_loss", "train_error")  # fmt: skip


def _preprocessing(trained: TrainedModel) -> str:
    view = input_view(trained)
    colour = "gray" if view.gray else "RGB"
    size = view.image_size
    if trained.cfg.data.is_image_folder():
        crop = f"shorter side resized to {view.eval_resize}, centre {size}x{size} crop"
    else:
        crop = f"{size}x{size} as the dataset (other sizes: shorter side to {size}, centre crop)"
    return f"{colour}, {crop}, x = (pixel / 255 - mean) / std per channel, NCHW float32"


def _metrics(trained: TrainedModel) -> tuple[dict[str, float], str]:
    history = trained.state.get("history") or []
    cfg = trained.cfg
    if not history:
        return {}, "no metrics recorded in the checkpoint"
    row = history[-1]
    found = {k: row[k] for k in _METRICS if k in row}
    d = cfg.data
    test_images = f"the first {d.test_limit} test images" if d.test_limit else "the test split"
    protocol = (
        f"epoch {row['epoch']} of {cfg.train.epochs} (the epoch this checkpoint holds); "
        f"errors in percent on {test_images}"
        + (f" and a {d.val_size}-image validation split held out of training" if d.val_size else "")
        + f"; test-time augmentation {cfg.eval.tta}; seed {cfg.train.seed}, one run"
    )
    if "test_error" not in row:
        protocol += "; this epoch was not evaluated on the test split"
    return found, protocol


def build_card(trained: TrainedModel, export: dict[str, Any]) -> dict[str, Any]:
    """Return the model card of `trained` as plain data (what the JSON card holds)."""
    cfg, info, model = trained.cfg, trained.info, trained.model
    shape = (info.channels, *info.image_size)
    metrics, protocol = _metrics(trained)
    with torch.no_grad():
        flops = count_flops(model, shape)
    ref = cfg.reference
    return {
        "name": cfg.name,
        "model": {
            "name": cfg.model.name,
            "options": cfg.model.options(),
            "rejuvenated": trained.state.get("architecture") is not None,
            "params": count_params(model),
            "flops_per_image": flops,
        },
        "input": {
            "shape": ["batch", *shape],
            "dtype": "float32",
            "mean": list(info.mean),
            "std": list(info.std),
            "preprocessing": _preprocessing(trained),
        },
        "output": "logits (batch, classes); softmax gives probabilities",
        "classes": class_names(trained),
        "training": {
            "dataset": cfg.data.name,
            "train_limit": cfg.data.train_limit,
            "val_size": cfg.data.val_size,
            "epochs": cfg.train.epochs,
            "checkpoint": str(trained.path),
        },
        "metrics": metrics,
        "protocol": protocol,
        "reference": ref.model_dump() if ref is not None else None,
        "export": {**export, "torch": torch.__version__},
    }


def card_markdown(card: dict[str, Any]) -> str:
    """Return a short markdown rendering of `card`."""
    m, inp, exp = card["model"], card["input"], card["export"]
    options = ", ".join(f"{k}={v}" for k, v in m["options"].items()) or "defaults"
    lines = [
        f"# {card['name']}: {m['name']}",
        "",
        f"- model: `{m['name']}` ({options}){', rejuvenated' if m['rejuvenated'] else ''}; "
        f"{m['params']:,} parameters, {m['flops_per_image'] / 1e6:.1f} MFLOPs per image",
        f"- input: {' x '.join(map(str, inp['shape']))}, {inp['preprocessing']}; "
        f"mean {inp['mean']}, std {inp['std']}",
        f"- classes ({len(card['classes'])}): {', '.join(card['classes'])}",
        f"- trained on {card['training']['dataset']} for {card['training']['epochs']} epochs",
        f"- export: {exp['format']} `{exp['file']}`, checked with {exp['check']}: largest "
        f"logit difference {exp['max_relative_logit_difference']:.3g} (relative to max(1, "
        f"|logit|)), tolerance {exp['tolerance']:g}; torch {exp['torch']}",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {v:.4g} |" for k, v in card["metrics"].items()),
        "",
        f"Protocol: {card['protocol']}.",
    ]
    ref = card["reference"]
    if ref:
        value = f"{ref['value']} % test error" if ref["value"] is not None else "no single value"
        lines += ["", f"Reference: {ref['row']} — {value} ({ref['source']}; {ref['protocol']})."]
    return "\n".join(lines) + "\n"
