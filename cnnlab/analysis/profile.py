"""Model size and cost: parameter counts and FLOPs (torch.utils.flop_counter)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

# The in-place random and constant fills that weight initialisation calls; on meta tensors
# they would only cost time (torch runs their Python reference implementations there).
_FILLS = frozenset({
    torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_,
    torch.Tensor.erfinv_, torch.Tensor.bernoulli_, torch.Tensor.exponential_,
    torch.Tensor.random_,
})  # fmt: skip


class _SkipFills(TorchFunctionMode):
    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):  # noqa: ANN204
        if func in _FILLS:
            return args[0]
        return func(*args, **(kwargs or {}))


def shape_only(build: Callable[..., nn.Module], *args: Any, **kwargs: Any) -> nn.Module:
    """Return the module `build(*args, **kwargs)` makes, with meta tensors (no memory) and no
    weight initialisation: enough for count_params and count_flops, in a fraction of the time
    a real build takes for large networks."""
    with torch.device("meta"), _SkipFills():
        return build(*args, **kwargs)


def count_params(model: nn.Module) -> int:
    """Return the number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Return forward FLOPs for one image of shape (C, H, W), counted in eval mode."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(1, *input_shape, device=param.device, dtype=param.dtype)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(x)
    model.train(was_training)
    return counter.get_total_flops()
