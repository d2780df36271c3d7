"""Batch mixing: Mixup and CutMix on whole batches, returning soft targets.

Each image is mixed with its neighbour in the (already shuffled) batch, `x.roll(1, 0)`, so
no permutation has to be drawn. One lambda (and for CutMix one box) serves the whole batch,
as in the papers' reference code. The scalar draws come from a per-epoch numpy Generator, so
they never wait on the device and a resumed run draws them again identically.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cnnlab.config import AugmentConfig


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """Return (top, bottom, left, right) of a box of about (1 - lam) of the image, clipped.

    As in Yun et al.'s code: sides H*sqrt(1 - lam) and W*sqrt(1 - lam) (truncated), centre
    uniform over the image, clipped at the borders (so the pasted area may be smaller).
    """
    ratio = np.sqrt(1.0 - lam)
    cut_h, cut_w = int(h * ratio), int(w * ratio)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    top, bottom = np.clip([cy - cut_h // 2, cy + cut_h // 2], 0, h)
    left, right = np.clip([cx - cut_w // 2, cx + cut_w // 2], 0, w)
    return int(top), int(bottom), int(left), int(right)


@dataclass(frozen=True)
class BatchMixer:
    """Mixup (`mixup_alpha`) and/or CutMix (`cutmix_alpha`); 0 turns either off.

    A batch is mixed with probability `prob`; when both are on, CutMix is chosen with
    probability `switch_prob`, Mixup otherwise (one of them per batch, never both at once).
    """

    num_classes: int
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    prob: float = 1.0
    switch_prob: float = 0.5

    @classmethod
    def from_config(cls, cfg: AugmentConfig, num_classes: int) -> BatchMixer | None:
        """Build from `augment.*`, or return None when neither Mixup nor CutMix is on."""
        if not (cfg.mixup_alpha or cfg.cutmix_alpha) or not cfg.mix_prob:
            return None
        return cls(
            num_classes, cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_prob, cfg.mix_switch_prob
        )

    def __call__(
        self, x: torch.Tensor, labels: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the mixed NCHW batch and its soft targets (rows sum to one)."""
        targets = torch.nn.functional.one_hot(labels, self.num_classes).to(x.dtype)
        if rng.random() >= self.prob:
            return x, targets
        use_cutmix = self.cutmix_alpha > 0 and (
            self.mixup_alpha == 0 or rng.random() < self.switch_prob
        )
        partner = x.roll(1, dims=0)
        if use_cutmix:
            h, w = x.shape[2:]
            top, bottom, left, right = cutmix_box(
                h, w, rng.beta(self.cutmix_alpha, self.cutmix_alpha), rng
            )
            x = x.clone()
            x[:, :, top:bottom, left:right] = partner[:, :, top:bottom, left:right]
            # The label weight is the area actually pasted, after clipping at the borders.
            lam = 1.0 - (bottom - top) * (right - left) / (h * w)
        else:
            lam = float(rng.beta(self.mixup_alpha, self.mixup_alpha))
            x = x * lam + partner * (1.0 - lam)
        return x, targets * lam + targets.roll(1, dims=0) * (1.0 - lam)
