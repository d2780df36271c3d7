"""Export a trained model to ONNX, TorchScript or safetensors, checked against the checkpoint.

Every export is verified before it is reported: the exported file is loaded back (ONNX by
onnxruntime at two batch sizes other than the one traced, to show the batch axis is dynamic;
TorchScript by torch.jit.load; safetensors into a freshly built cnnlab model) and its logits on
a fixed batch of normalised inputs are compared with the checkpoint's model in fp32 on the CPU.
A difference above the format's tolerance is an error, not a warning. Each export also writes
a model card beside the file (model_card.py).
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.inference.model_card import build_card, card_markdown
from cnnlab.run.saved_model import TrainedModel, load_trained_model

FORMATS = ("onnx", "torchscript", "safetensors")
SUFFIX = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}
# Largest |exported - checkpoint| logit allowed, relative to max(1, largest |logit|). ONNX
# Runtime fuses and reorders float ops (measured ~3e-6 on a preact-ResNet-20); a TorchScript
# trace runs the same kernels (measured 0); safetensors holds the very same weights.
TOLERANCE = {"onnx": 1e-4, "torchscript": 1e-5, "safetensors": 0.0}
CHECK_BATCHES = (1, 5)  # the traced example has batch 2: other sizes prove a dynamic batch
EXTRA_HINT = "pip install 'cnnlab[export]'"


@dataclass
class ExportResult:
    """Where the export went, how it was checked, and what the check measured."""

    format: str
    path: Path
    check: str
    max_rel_diff: float
    tolerance: float
    card_json: Path
    card_md: Path


def _need(module: str, fmt: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise UserError(
            f"--format {fmt} needs the Python package '{module}': {EXTRA_HINT}"
        ) from None


def _inputs(trained: TrainedModel, batch: int, seed: int) -> torch.Tensor:
    c, (h, w) = trained.info.channels, trained.info.image_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, c, h, w, generator=gen)  # inputs are normalised: ~N(0, 1)


def _compare(
    model: nn.Module, run: Callable[[torch.Tensor], torch.Tensor], trained: TrainedModel
) -> float:
    """Return the largest |logit difference| relative to max(1, largest |logit|)."""
    worst = 0.0
    with torch.no_grad():
        for seed, batch in enumerate(CHECK_BATCHES):
            x = _inputs(trained, batch, seed)
            want = model(x).float()
            got = run(x).float()
            if got.shape != want.shape:
                raise UserError(f"exported model gives logits {tuple(got.shape)}, "
                                f"expected {tuple(want.shape)}")  # fmt: skip
            scale = max(1.0, want.abs().max().item())
            worst = max(worst, (got - want).abs().max().item() / scale)
    return worst


def _onnx(model: nn.Module, trained: TrainedModel, out: Path) -> tuple[float, str]:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        _need(module, "onnx")
    import onnxruntime

    example = _inputs(trained, 2, 99)
    # The exporter logs a warning per torchvision operator it cannot find; cnnlab uses none.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(out), input_names=["images"], output_names=["logits"],
            dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False,
            verbose=False,
        )  # fmt: skip
    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(session.run(None, {"images": x.numpy()})[0])

    sizes = " and ".join(map(str, CHECK_BATCHES))
    return _compare(model, run, trained), f"onnxruntime {onnxruntime.__version__}, batch {sizes}"


def _torchscript(model: nn.Module, trained: TrainedModel, out: Path) -> tuple[float, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in favour of torch.export
        with torch.no_grad():
            traced = torch.jit.trace(model, _inputs(trained, 2, 99))
        torch.jit.save(traced, str(out))
        loaded = torch.jit.load(str(out), map_location="cpu")
    return _compare(model, loaded, trained), "torch.jit.load, batch " + " and ".join(
        map(str, CHECK_BATCHES)
    )


def _safetensors(model: nn.Module, trained: TrainedModel, out: Path) -> tuple[float, str]:
    _need("safetensors", "safetensors")
    from safetensors.torch import load_file, save_file

    cfg = trained.cfg
    weights = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": "pt",
        "cnnlab_model": cfg.model.name,
        "cnnlab_model_options": json.dumps(cfg.model.options()),
        "cnnlab_architecture": json.dumps(trained.state.get("architecture")),
        "classes": json.dumps(list(trained.info.classes)),
    }
    save_file(weights, str(out), metadata=metadata)
    # Reloaded into a freshly built model: the weights alone must give the same logits.
    fresh = load_trained_model(trained.path, "cpu").model
    fresh.load_state_dict(load_file(str(out)))
    return _compare(model, fresh, trained), "load_file into a new cnnlab model, batch " + (
        " and ".join(map(str, CHECK_BATCHES))
    )


EXPORTERS = {"onnx": _onnx, "torchscript": _torchscript, "safetensors": _safetensors}


def export_checkpoint(path: Path, fmt: str, out: Path | None = None) -> ExportResult:
    """Export checkpoint `path` in format `fmt` to `out` (default: beside it), check the
    logits against the checkpoint, and write the model card beside the file."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format '{fmt}'; use one of: {', '.join(FORMATS)}")
    trained = load_trained_model(path, "cpu")
    model = trained.model.to(memory_format=torch.contiguous_format).float().eval()
    out = Path(out) if out is not None else trained.path.with_suffix(SUFFIX[fmt])
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc.strerror or exc}") from None
    try:
        diff, check = EXPORTERS[fmt](model, trained, out)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - exporters raise many types for unsupported ops
        reason = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
        raise UserError(f"{trained.cfg.model.name} cannot be exported to {fmt}: {reason}") from None
    tolerance = TOLERANCE[fmt]
    if diff > tolerance:
        raise UserError(
            f"{out}: the exported logits differ from the checkpoint's by {diff:.3g} (relative), "
            f"above the {fmt} tolerance {tolerance:g}; the file is kept for inspection"
        )
    export = {"format": fmt, "file": out.name, "check": check,
              "max_relative_logit_difference": diff, "tolerance": tolerance}  # fmt: skip
    card = build_card(trained, export)
    card_json = out.with_name(out.name + ".card.json")
    card_md = out.with_name(out.name + ".card.md")
    card_json.write_text(json.dumps(card, indent=2) + "\n")
    card_md.write_text(card_markdown(card))
    return ExportResult(fmt, out, check, diff, tolerance, card_json, card_md)
