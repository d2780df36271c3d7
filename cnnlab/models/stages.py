"""Where each family's stages end: the modules whose outputs are the stage feature maps.

Every family keeps its body in one `nn.Sequential` trunk (`stages`, `blocks` or `features`);
a stage is a maximal run of consecutive trunk children whose outputs share one spatial size,
and its output is the run's last child. Runs with no parameters (a trailing pool) are not
stages. Used by feature-map PatchShuffle (cnnlab/methods/patch_shuffle_features.py).
"""

from __future__ import annotations

import torch
from torch import nn

TRUNK_ATTRIBUTES = ("stages", "blocks", "features")


def trunk(model: nn.Module) -> nn.Sequential:
    """Return the model's body: its `stages`, `blocks` or `features` Sequential."""
    for name in TRUNK_ATTRIBUTES:
        module = getattr(model, name, None)
        if isinstance(module, nn.Sequential):
            return module
    raise ValueError(f"{type(model).__name__} has no stages/blocks/features Sequential")


def stage_outputs(model: nn.Module, input_shape: tuple[int, ...]) -> list[nn.Module]:
    """Return, in order, the module ending each stage of `model` (found by one eval forward)."""
    children = list(trunk(model).children())
    sizes: dict[int, tuple[int, ...]] = {}
    hooks = [
        child.register_forward_hook(lambda m, i, out, k=k: sizes.__setitem__(k, out.shape[-2:]))
        for k, child in enumerate(children)
    ]
    was_training = model.training
    device = next(model.parameters()).device
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape, device=device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    runs: list[list[nn.Module]] = []
    for k, child in enumerate(children):
        if runs and sizes[k] == sizes[k - 1]:
            runs[-1].append(child)
        else:
            runs.append([child])
    return [run[-1] for run in runs if any(p.numel() for m in run for p in m.parameters())]
