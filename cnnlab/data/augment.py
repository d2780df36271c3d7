"""Batched augmentation on the training device: one gather does pad-crop and flip together.

Images stay uint8 NHWC until the last step, where one fused op converts to normalised float
in NCHW shape with channels_last strides (the layout convolutions prefer on CPU and GPU).
"""

from __future__ import annotations

import torch


def crop_flip(
    images: torch.Tensor, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Randomly crop each uint8 NHWC image from its zero-padded copy and flip half of them.

    Offsets are uniform in [0, 2*padding] per image (as a pad-then-random-crop does); a flip
    mirrors the crop's columns, so both happen in a single gather with no per-image Python.
    """
    n, h, w, _ = images.shape
    dev = images.device
    if padding == 0 and not flip:
        return images
    if padding:
        images = torch.nn.functional.pad(images, (0, 0, padding, padding, padding, padding))
    span = 2 * padding + 1
    dy = torch.randint(span, (n,), generator=generator, device=dev)
    dx = torch.randint(span, (n,), generator=generator, device=dev)
    rows = dy[:, None] + torch.arange(h, device=dev)
    cols = torch.arange(w, device=dev).expand(n, w)
    if flip:
        mirrored = torch.rand(n, generator=generator, device=dev) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    cols = dx[:, None] + cols
    batch = torch.arange(n, device=dev)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


def to_model_input(
    images: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Turn uint8 NHWC images into normalised NCHW float (channels_last strides)."""
    x = images.to(dtype).mul_(1.0 / 255.0).sub_(mean).mul_(inv_std)
    return x.permute(0, 3, 1, 2)
