"""Layers of a rejuvenated network (Qiao et al. 2019): survivors first, newcomers after.

After Neural Rejuvenation every conv's input and output channels are split into a survivor
part (the first `live_in` / `live_out`) and a new part. `SplitConv2d` runs the two parts side
by side ("separate": out = [W_LL*x_L, W_NN*x_N], the cross blocks are not used) or couples them
by cross-attention (out_L = W_LL*x_L + 2 sigmoid(W_LL*x_L) * (W_LN*x_N), and symmetrically).
`TwoHeadLinear` is the classifier: the same weights applied to the survivor features and to
the new features; it returns both logits while training (the loss is their sum of CEs) and
their sum at evaluation (the prediction).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NR_MODES = ("separate", "cross_attention")


class SplitConv2d(nn.Conv2d):
    """A bias-free Conv2d whose channels are split into survivors and newcomers.

    `live_in` = 0 means the input is not split (the first conv sees the same image in both
    halves, so it is a plain conv over all output channels).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] = 0,
        live_in: int = 0,
        live_out: int = 0,
        mode: str = "separate",
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        if mode not in NR_MODES:
            raise ValueError(f"mode must be one of {', '.join(NR_MODES)}, got '{mode}'")
        if live_in and not (0 < live_in < in_channels and 0 < live_out < out_channels):
            raise ValueError(
                f"a split conv needs 0 < live_in < {in_channels} and 0 < live_out < "
                f"{out_channels}, got {live_in}, {live_out}"
            )
        self.live_in, self.live_out, self.mode = live_in, live_out, mode

    def _conv(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight, None, self.stride, self.padding, self.dilation, self.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve survivors and newcomers separately (and cross-attend in that mode)."""
        if not self.live_in:
            return super().forward(x)
        li, lo, w = self.live_in, self.live_out, self.weight
        x_live, x_new = x[:, :li], x[:, li:]
        out_live = self._conv(x_live, w[:lo, :li])
        out_new = self._conv(x_new, w[lo:, li:])
        if self.mode == "cross_attention":
            out_live = out_live + 2 * torch.sigmoid(out_live) * self._conv(x_new, w[:lo, li:])
            out_new = out_new + 2 * torch.sigmoid(out_new) * self._conv(x_live, w[lo:, :li])
        return torch.cat([out_live, out_new], dim=1)

    def extra_repr(self) -> str:
        """Show the split and the mode next to the usual conv description."""
        split = f"live_in={self.live_in}, live_out={self.live_out}, mode={self.mode}"
        return f"{super().extra_repr()}, {split}"


class TwoHeadLinear(nn.Linear):
    """Classifier over [survivor features, new features]: one weight matrix, two heads."""

    def __init__(self, in_features: int, out_features: int, live_in: int) -> None:
        super().__init__(in_features, out_features)
        if not 0 < live_in < in_features:
            raise ValueError(f"live_in must lie in 1..{in_features - 1}, got {live_in}")
        self.live_in = live_in

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Training: (logits of survivors, logits of newcomers); evaluation: their sum."""
        li = self.live_in
        # Zeroing the other part's features is the same as using only this part's columns.
        live = F.linear(x[:, :li], self.weight[:, :li], self.bias)
        new = F.linear(x[:, li:], self.weight[:, li:], self.bias)
        return (live, new) if self.training else live + new

    def extra_repr(self) -> str:
        """Show the survivor count next to the usual linear description."""
        return f"{super().extra_repr()}, live_in={self.live_in}"
