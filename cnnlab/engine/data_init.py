"""Data-dependent initialisation: a model whose weights are set from training images (airbench's
whitening conv) receives a fixed sample of them before a fresh run's first step.

The protocol is duck-typed so that any user's module can join: a method
`init_from_data(images)` taking normalised NCHW images as the loader makes them, and an
optional `init_images` attribute, how many of the first training images it wants (default
5,000). A resumed run does not call it: the checkpoint already holds the weights.
"""

from __future__ import annotations

import torch
from torch import nn

DEFAULT_IMAGES = 5000


def init_from_data(model: nn.Module, loader: object) -> int:
    """Call `model.init_from_data` with the loader's first training images (not augmented);
    return how many it got (0: the model has no such method)."""
    init = getattr(model, "init_from_data", None)
    if not callable(init):
        return 0
    count = min(int(getattr(model, "init_images", DEFAULT_IMAGES)), loader.num_images)
    with torch.no_grad():
        init(loader.fixed_images(torch.arange(count)))
    return count
