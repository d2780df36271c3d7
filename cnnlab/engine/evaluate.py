"""Evaluation: loss, top-1 and top-5 error of a model over a loader, with optional TTA."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.data.pipeline import Loader
from cnnlab.engine.distributed import reduce_sum
from cnnlab.engine.faults import fault_point
from cnnlab.engine.numerics import Numerics


def _mirror_mean(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Return the mean of the logits of `x` and of its horizontal mirror."""
    # flip keeps x's memory format (channels_last or not).
    return (model(x) + model(x.flip(3))) / 2


def predict(model: nn.Module, x: torch.Tensor, tta: str = "none") -> torch.Tensor:
    """Return logits for NCHW `x` under test-time augmentation `tta` (none, flip, flip_shift).

    flip averages the logits of each image and its mirror. flip_shift is airbench94's level-2
    TTA (KellerJordan/airbench, airbench94.py, `infer_mirror_translate`): the flip average of
    the image weighs 1/2, and those of the image moved one pixel down-right and one pixel
    up-left (the border reflect-padded) 1/4 each: six forward passes in all.
    """
    if tta == "none":
        return model(x)
    mirrored = _mirror_mean(model, x)
    if tta == "flip":
        return mirrored
    height, width = x.shape[2:]
    padded = nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    moved_down_right = padded[:, :, :height, :width]
    moved_up_left = padded[:, :, 2:, 2:]
    shifted = _mirror_mean(model, moved_down_right) + _mirror_mean(model, moved_up_left)
    return mirrored / 2 + shifted / 4


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Loader,
    numerics: Numerics,
    device: torch.device,
    tta: str = "none",
) -> dict[str, float]:
    """Return {'loss', 'error', 'top5_error'} (errors in percent) over the whole loader.

    Under DDP each rank evaluates its shard of the split and the sums are added over ranks,
    so every rank returns the metrics of the whole split. Pass the bare module, not the DDP
    wrapper (whose forward would expect the same number of calls on every rank).
    """
    was_training = model.training
    model.eval()
    total_loss = torch.zeros((), device=device, dtype=torch.float64)
    wrong1 = torch.zeros((), device=device, dtype=torch.long)
    wrong5 = torch.zeros((), device=device, dtype=torch.long)
    count = 0
    for batch in loader.epoch(0):
        x = numerics.layout(batch.images)
        with numerics.autocast(device):
            logits = predict(model, x, tta)
        logits = logits.float()
        total_loss += nn.functional.cross_entropy(logits, batch.labels, reduction="sum")
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices
        hit = top == batch.labels[:, None]
        wrong1 += (~hit[:, 0]).sum()
        wrong5 += (~hit.any(dim=1)).sum()
        count += len(batch.labels)
        fault_point("eval_batch")
    model.train(was_training)
    count_t = torch.tensor(float(count), device=device, dtype=torch.float64)
    sums = reduce_sum(torch.stack([total_loss, wrong1.double(), wrong5.double(), count_t]))
    loss, w1, w5, n = sums.tolist()
    if n == 0:
        raise ValueError("evaluation saw no images")
    return {"loss": loss / n, "error": 100.0 * w1 / n, "top5_error": 100.0 * w5 / n}
