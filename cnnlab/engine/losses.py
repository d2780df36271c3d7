"""The training loss: one cross-entropy for hard labels and soft (mixed) targets alike."""

from __future__ import annotations

import torch
from torch.nn import functional as F


def soft_target_cross_entropy(
    logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy against class indices or per-class probabilities, label-smoothed.

    Smoothing mixes the target with the uniform distribution, (1 - e) * t + e / K, after any
    mixup/cutmix, so all three compose (rather than excluding each other).
    """
    if not targets.is_floating_point():
        # Hard labels: the fused kernel computes the same function, faster.
        return F.cross_entropy(logits, targets, label_smoothing=smoothing)
    if smoothing:
        targets = targets * (1 - smoothing) + smoothing / logits.shape[1]
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def multi_head_loss(
    logits: torch.Tensor | tuple[torch.Tensor, ...], targets: torch.Tensor, smoothing: float = 0.0
) -> torch.Tensor:
    """The training loss of a model with one head or several (a tuple): the sum over heads."""
    heads = logits if isinstance(logits, tuple) else (logits,)
    loss = soft_target_cross_entropy(heads[0].float(), targets, smoothing)
    for head in heads[1:]:
        loss = loss + soft_target_cross_entropy(head.float(), targets, smoothing)
    return loss


def combine_heads(logits: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The prediction of several heads is the sum of their logits; one head is itself."""
    if not isinstance(logits, tuple):
        return logits
    return torch.stack(logits).sum(0)
