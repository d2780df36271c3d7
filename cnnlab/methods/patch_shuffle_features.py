"""PatchShuffle on feature maps: shuffle the pixels of local patches of chosen stage outputs.

PatchShuffle (Kang et al., arXiv 1707.07103) permutes the pixels inside every non-overlapping
k x k patch of a randomly chosen image or feature map. The EraseReLU/PatchShuffle repository's
MiniImageNet scripts (`train_*_10000`, `train_*_11000`) name where it is switched on with a
5-digit mask; the scripts are not public, so reading the first digit as
the input image and the next ones as the outputs of the stages in order is cnnlab's reading,
unconfirmed. `augment.patch_shuffle_stages` is that mask: flag 0 is the input image (handled
by the batch augmentation), flag s the output of stage s (cnnlab.models.stages); every chosen
map uses `augment.patch_shuffle_prob` per image and `augment.patch_shuffle_size` patches.

Training only: the forward hooks act when the module is in training mode. The draws come from
the method's own generator, seeded from train.seed and the rank and saved in checkpoints, so
a resumed run draws what the uninterrupted one would have.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cnnlab.config import AugmentConfig
from cnnlab.data.augment import patch_shuffle
from cnnlab.engine.callbacks import Callback
from cnnlab.errors import UserError
from cnnlab.models.stages import stage_outputs
from cnnlab.registry import register_method

if TYPE_CHECKING:
    from cnnlab.engine.trainer import Trainer

STREAM_OFFSET = 2_654_435_761  # keeps this stream apart from the data and global generators


def shuffle_feature_map(
    x: torch.Tensor, size: int, prob: float, generator: torch.Generator
) -> torch.Tensor:
    """Return NCHW `x` with each map chosen with `prob` patch-shuffled (channels move together)."""
    return patch_shuffle(x.permute(0, 2, 3, 1), size, prob, generator).permute(0, 3, 1, 2)


class FeaturePatchShuffle(Callback):
    """Attach PatchShuffle hooks to the stage outputs that `augment.patch_shuffle_stages` marks."""

    def __init__(self, cfg: AugmentConfig, seed: int) -> None:
        self.mask = [bool(f) for f in cfg.patch_shuffle_stages]
        self.size, self.prob, self.seed = cfg.patch_shuffle_size, cfg.patch_shuffle_prob, seed
        self.generator: torch.Generator | None = None
        self.saved_state: torch.Tensor | None = None
        self.hooked: nn.Module | None = None
        self.handles: list[Any] = []

    def on_train_start(self, trainer: Trainer) -> None:
        """Seed (or restore) the stream and hook the model's chosen stages."""
        self.generator = torch.Generator(device=trainer.device)
        self.generator.manual_seed((self.seed + STREAM_OFFSET * (1 + trainer.dist.rank)) % 2**63)
        if self.saved_state is not None:
            self._restore(trainer)
        self._hook(trainer)

    def _restore(self, trainer: Trainer) -> None:
        # A CPU generator's state and a CUDA one's differ in size and kind, so a run resumed
        # on another device type cannot continue the stream: it restarts it from the seed and
        # the step reached (a resume across devices is never bitwise anyway).
        try:
            self.generator.set_state(self.saved_state)
        except RuntimeError:
            step_seed = self.seed + STREAM_OFFSET * (1 + trainer.dist.rank) + trainer.step
            self.generator.manual_seed(step_seed % 2**63)
            trainer.run.log(
                f"note: the PatchShuffle-features stream was saved on another device type than "
                f"{trainer.device.type}; it restarts from the seed at step {trainer.step}"
            )

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Re-hook when a method (Neural Rejuvenation) has swapped in a rebuilt model."""
        if trainer.model is not self.hooked:
            self._hook(trainer)

    def _hook(self, trainer: Trainer) -> None:
        for handle in self.handles:
            handle.remove()
        model = trainer.model
        try:
            ends = stage_outputs(model, trainer.input_shape)
        except ValueError as exc:
            raise UserError(f"augment.patch_shuffle_stages: {exc}") from None
        if len(self.mask) != 1 + len(ends):
            raise UserError(
                f"augment.patch_shuffle_stages has {len(self.mask)} flags; "
                f"{trainer.cfg.model.name} has {len(ends)} stages, so it takes {1 + len(ends)} "
                "(the input image first)"
            )
        self.handles = [
            end.register_forward_hook(self._shuffle)
            for end, on in zip(ends, self.mask[1:], strict=True)
            if on
        ]
        self.hooked = model

    def _shuffle(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if not module.training or self.generator is None:
            return output
        return shuffle_feature_map(output, self.size, self.prob, self.generator)

    def state_dict(self) -> dict[str, Any]:
        """Return the stream's state, so a resumed run continues it."""
        return {"generator": self.generator.get_state()} if self.generator is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Keep the saved stream state; it is applied when training starts."""
        self.saved_state = state.get("generator")


register_method(
    "patch_shuffle_features",
    lambda cfg: [FeaturePatchShuffle(cfg.augment, cfg.train.seed)],
    active=lambda cfg: bool(cfg.augment.patch_shuffle_stages),
    doc="PatchShuffle on the outputs of the stages that augment.patch_shuffle_stages selects",
)
