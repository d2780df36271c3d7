"""The unit graph of a network, read through the family's own description (models/unit_graph.py)."""

from __future__ import annotations

import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.models.unit_graph import DescribesUnits, UnitGraph


def unit_graph(model: nn.Module) -> UnitGraph:
    """Return the Conv+BN units of a network that describes them; a UserError for any other."""
    if isinstance(model, DescribesUnits):
        return model.unit_graph()
    raise UserError(
        f"rejuvenation supports the CIFAR VGGs (vgg19_nr), post-activation ResNets (resnet164, "
        f"resnet18..101), NR's ImageNet VGG (vgg16_nr) and conv-BN-ReLU DenseNets "
        f"(densenet100_k40_nr, densenet121_nr), not {type(model).__name__}"
    )


def conv_output_pixels(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Return out_h*out_w of every conv for one input of `input_shape` (C, H, W)."""
    pixels: dict[str, int] = {}
    hooks = [
        m.register_forward_hook(
            lambda mod, inp, out, name=name: pixels.__setitem__(name, out.shape[2] * out.shape[3])
        )
        for name, m in model.named_modules()
        if isinstance(m, nn.Conv2d)
    ]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return pixels
