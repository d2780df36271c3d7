"""In-memory batch loader for small datasets: uint8 tensors on the device, seeded order.

The order and augmentation of epoch e depend only on (seed, e), so a run resumed at the start
of an epoch draws exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from cnnlab.data.augment import crop_flip, to_model_input


@dataclass
class Batch:
    """A model-ready batch: normalised float images (NCHW) and int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Return the generator that drives epoch `epoch`'s order and augmentation."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + epoch * 7919 + 17) % (2**63))
    return gen


class InMemoryLoader:
    """Batches from uint8 NHWC images held on `device`; augments on the device when training."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        batch_size: int,
        device: torch.device,
        train: bool,
        crop_padding: int = 0,
        flip: bool = False,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.crop_padding = crop_padding
        self.flip = flip
        self.seed = seed
        self.dtype = dtype
        self.mean = torch.tensor(mean, device=device, dtype=dtype)
        self.inv_std = 1.0 / torch.tensor(std, device=device, dtype=dtype)

    def __len__(self) -> int:
        """Return the number of batches per epoch (training drops the ragged last batch)."""
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield the batches of epoch `epoch` (shuffled and augmented when training)."""
        n = len(self.labels)
        if not self.train:
            for start in range(0, n, self.batch_size):
                end = start + self.batch_size
                x = to_model_input(self.images[start:end], self.mean, self.inv_std, self.dtype)
                yield Batch(x, self.labels[start:end])
            return
        gen = epoch_generator(self.seed, epoch, self.device)
        order = torch.randperm(n, generator=gen, device=self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            raw = crop_flip(self.images[idx], self.crop_padding, self.flip, gen)
            yield Batch(to_model_input(raw, self.mean, self.inv_std, self.dtype), self.labels[idx])
