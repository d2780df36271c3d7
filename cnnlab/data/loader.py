"""In-memory batch loader for small datasets: uint8 tensors on the device, seeded order.

The order, augmentation and mixing of epoch e depend only on (seed, e), so a run resumed at
the start of an epoch draws exactly the batches an uninterrupted run would have drawn.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cnnlab.data.augment import BatchAugment, to_model_input
from cnnlab.data.mixing import BatchMixer


@dataclass
class Batch:
    """A model-ready batch: normalised float images (NCHW), int64 labels, and the soft targets
    (rows summing to one) when the batch was mixed, else None."""

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None = None


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """Return the generator that drives epoch `epoch`'s order and augmentation."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + epoch * 7919 + 17) % (2**63))
    return gen


def epoch_rng(seed: int, epoch: int) -> np.random.Generator:
    """Return the host-side generator of epoch `epoch`'s per-batch scalars (mixing lambdas)."""
    return np.random.default_rng([seed % 2**64, epoch, 1])


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
        augment: BatchAugment | None = None,
        mixer: BatchMixer | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        self.images = images.to(device)
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.augment = augment or BatchAugment()
        self.mixer = mixer
        self.seed = seed
        self.dtype = dtype
        self.mean = torch.tensor(mean, device=device, dtype=dtype)
        self.inv_std = 1.0 / torch.tensor(std, device=device, dtype=dtype)

    def __len__(self) -> int:
        """Return the number of batches per epoch (training drops the ragged last batch)."""
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield the batches of epoch `epoch` (shuffled, augmented and mixed when training)."""
        n = len(self.labels)
        if not self.train:
            for start in range(0, n, self.batch_size):
                end = start + self.batch_size
                x = to_model_input(self.images[start:end], self.mean, self.inv_std, self.dtype)
                yield Batch(x, self.labels[start:end])
            return
        gen = epoch_generator(self.seed, epoch, self.device)
        rng = epoch_rng(self.seed, epoch)
        order = torch.randperm(n, generator=gen, device=self.device)
        for i in range(len(self)):
            idx = order[i * self.batch_size : (i + 1) * self.batch_size]
            raw = self.augment.pixels(self.images[idx], gen)
            x = to_model_input(raw, self.mean, self.inv_std, self.dtype)
            x = self.augment.normalised(x, gen)
            labels = self.labels[idx]
            targets = None
            if self.mixer is not None:
                x, targets = self.mixer(x, labels, rng)
            yield Batch(x, labels, targets)
