"""ReCU binary convolution (Xu et al. 2021): 1-bit weights and activations with a learned scale.

Forward of `BinaryConv2d` on input a with latent weight w (per output filter f):
  w1 = (w - mean_f w) * 2*sqrt(2) / sqrt(var_f(w - mean_f w) + 1e-5)   (balance + standardise)
  Q  = -mean(|w1|) * ln(2 - 2*tau)   (Laplace tau-quantile, one scalar per layer, no gradient)
  wb = sign(clamp(w1, -Q, Q))        (identity straight-through estimator for the sign)
  ab = sign(a / sqrt(var_sample(a) + 1e-5))   (standardised in training only; gradient of the
                                              sign approximated by max(0, 2 - 2|a0|))
  y  = conv(ab, wb) * alpha          (alpha: learnable per output channel, initialised U[0, 1))
The clamp never changes a sign, so the forward value does not depend on tau; tau only decides
which latent weights get a gradient. `tau=None` drops the clamp: the plain sign-STE baseline.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

STD_SCALE = 2.0 * math.sqrt(2.0)  # filter std 2*sqrt(2) = a Laplace scale of about 2
EPS = 1e-5


def standardize_filters(w: torch.Tensor) -> torch.Tensor:
    """Return w balanced (zero mean) and scaled to std 2*sqrt(2) per output filter."""
    dims = tuple(range(1, w.dim()))
    w0 = w - w.mean(dim=dims, keepdim=True)
    return w0 * STD_SCALE / torch.sqrt(w0.var(dim=dims, keepdim=True) + EPS)


def recu_threshold(w1: torch.Tensor, tau: float) -> torch.Tensor:
    """Return Q(tau) = -mean|w1| * ln(2 - 2 tau), the tau-quantile of a Laplace fit (detached)."""
    if not 0.5 < tau < 1.0:
        raise ValueError(f"ReCU tau must lie in (0.5, 1), got {tau}")
    return -w1.detach().abs().mean() * math.log(2.0 - 2.0 * tau)


def recu(w1: torch.Tensor, tau: float) -> torch.Tensor:
    """Clamp standardised weights at +-Q(tau); the gradient is zero outside the clamp."""
    q = recu_threshold(w1, tau)
    return torch.clamp(w1, -q, q)


class _SignSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return torch.sign(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        # ReCU's weight sign passes the gradient through unchanged (no |x| <= 1 window).
        return grad


class _ApproxSign(torch.autograd.Function):
    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.sign(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)


def sign_ste(x: torch.Tensor) -> torch.Tensor:
    """Return sign(x) with an identity gradient (straight-through)."""
    return _SignSTE.apply(x)


def approx_sign(x: torch.Tensor) -> torch.Tensor:
    """Return sign(x) with the polynomial (ApproxSign) gradient max(0, 2 - 2|x|)."""
    return _ApproxSign.apply(x)


def binarize_activation(a: torch.Tensor, training: bool) -> torch.Tensor:
    """Return sign of the activation, standardised per sample in training (gradient ApproxSign)."""
    if training:
        a = a / torch.sqrt(a.var(dim=tuple(range(1, a.dim())), keepdim=True) + EPS)
    return approx_sign(a)


class BinaryConv2d(nn.Conv2d):
    """A 1W1A convolution with ReCU weight clamping and a learnable per-channel scale."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int = 3,
        stride: int = 1,
        padding: int = 1,
        tau: float | None = 0.85,
    ) -> None:
        super().__init__(in_ch, out_ch, kernel_size, stride=stride, padding=padding, bias=False)
        self.alpha = nn.Parameter(torch.rand(out_ch, 1, 1))
        # Set each epoch by the ReCU schedule (cnnlab.methods.recu); None = no clamp.
        self.tau = tau

    def standardized_weight(self) -> torch.Tensor:
        """Return the balanced, standardised latent weight w1 (before the clamp)."""
        return standardize_filters(self.weight)

    def binary_weight(self) -> torch.Tensor:
        """Return the +-1 weight the forward uses (with the clamp and STE in the graph)."""
        w1 = self.standardized_weight()
        return sign_ste(recu(w1, self.tau) if self.tau is not None else w1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return conv(sign(a), sign(clamp(w1))) * alpha."""
        ab = binarize_activation(x, self.training)
        y = F.conv2d(ab, self.binary_weight(), None, self.stride, self.padding)
        return y * self.alpha

    def extra_repr(self) -> str:
        """Show tau beside the conv's shape."""
        return f"{super().extra_repr()}, tau={self.tau}"


def binary_convs(model: nn.Module) -> Iterator[tuple[str, BinaryConv2d]]:
    """Yield (qualified name, layer) for every BinaryConv2d in `model`."""
    for name, m in model.named_modules():
        if isinstance(m, BinaryConv2d):
            yield name, m


def set_tau(model: nn.Module, tau: float | None) -> None:
    """Set the ReCU tau of every binary conv of `model` (None switches the clamp off)."""
    for _, conv in binary_convs(model):
        conv.tau = tau
