"""In-memory batch loader for small datasets: uint8 tensors on the device, seeded order.

The order, augmentation and mixing of epoch e depend only on (seed, e), so a run resumed at
the start of an epoch draws exactly the batches an uninterrupted run would have drawn.

Under DDP (world > 1) `batch_size` stays the *global* batch: every rank draws the same epoch
order, global batch i is order[i*B : (i+1)*B] exactly as for one process, and rank r takes its
r-th slice of B/world images. So the ranks' data are disjoint, their union is the one-process
batch, and the schedule does not depend on the number of processes. Augmentation and mixing
draws come from per-rank streams (rank 0's are the one-process streams).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from cnnlab.data.augment import BatchAugment, alternating_flips, to_model_input
from cnnlab.data.mixing import BatchMixer
from cnnlab.errors import UserError


@dataclass
class Batch:
    """A model-ready batch: normalised float images (NCHW), int64 labels, and the soft targets
    (rows summing to one) when the batch was mixed, else None."""

    images: torch.Tensor
    labels: torch.Tensor
    targets: torch.Tensor | None = None


def epoch_generator(seed: int, epoch: int, device: torch.device, rank: int = 0) -> torch.Generator:
    """Return the generator that drives epoch `epoch`'s order and rank `rank`'s augmentation."""
    gen = torch.Generator(device=device)
    gen.manual_seed((seed * 1_000_003 + epoch * 7919 + 17 + rank * 104_729) % (2**63))
    return gen


def epoch_rng(seed: int, epoch: int, rank: int = 0) -> np.random.Generator:
    """Return the host-side generator of epoch `epoch`'s per-batch scalars (mixing lambdas)."""
    return np.random.default_rng([seed % 2**64, epoch, 1] + ([rank] if rank else []))


def rank_slice(step: int, batch_size: int, rank: int, world: int) -> slice:
    """Return the positions in the epoch order of rank `rank`'s part of global batch `step`."""
    per_rank = batch_size // world
    start = step * batch_size + rank * per_rank
    return slice(start, start + per_rank)


def eval_shard(n: int, rank: int, world: int) -> range:
    """Return the positions rank `rank` evaluates: every world-th one (no padding, no repeats)."""
    return range(rank, n, world)


class BatchLoader:
    """What both loaders share: the (global) batch and its split over the ranks, the device,
    normalisation, the training-batch augmentation and mixing, and the seed of their streams."""

    def __init__(
        self,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        batch_size: int,
        device: torch.device,
        train: bool,
        augment: BatchAugment | None,
        mixer: BatchMixer | None,
        seed: int,
        dtype: torch.dtype,
        rank: int,
        world: int,
    ) -> None:
        if train and batch_size % world:
            raise ValueError(f"batch size {batch_size} does not split over {world} processes")
        self.batch_size = batch_size
        self.device = device
        self.train = train
        self.augment = augment or BatchAugment()
        self.mixer = mixer
        self.seed, self.rank, self.world = seed, rank, world
        self.dtype = dtype
        self.mean = torch.tensor(mean, device=device, dtype=dtype)
        self.inv_std = 1.0 / torch.tensor(std, device=device, dtype=dtype)


class InMemoryLoader(BatchLoader):
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
        drop_last: bool = True,
        augment: BatchAugment | None = None,
        mixer: BatchMixer | None = None,
        seed: int = 0,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world: int = 1,
        replacement: bool = False,
    ) -> None:
        super().__init__(mean, std, batch_size, device, train, augment, mixer, seed, dtype, rank,
                         world)  # fmt: skip
        if replacement and world > 1:
            raise UserError(
                "train.sampling=replacement runs in one process: the ranks' draws would overlap"
            )
        self.replacement = replacement
        if not train and world > 1:
            # Evaluation shards the split; the ranks' sums are added up by the caller.
            keep = torch.as_tensor(eval_shard(len(labels), rank, world), dtype=torch.long)
            self.num_images = len(labels)
            images, labels = images[keep], labels[keep]
        self.images = images.to(device)
        self.labels = labels.to(device)
        if train or world == 1:
            self.num_images = len(labels)
        if train and not drop_last and world > 1:
            raise ValueError("a ragged last batch cannot be split over several processes")
        self.drop_last = drop_last

    def __len__(self) -> int:
        """Return this rank's batches per epoch (training drops the ragged last batch unless
        drop_last is false)."""
        n = len(self.labels)
        return n // self.batch_size if self.train and self.drop_last else -(-n // self.batch_size)

    def fixed_images(self, index: torch.Tensor) -> torch.Tensor:
        """Return images `index`, normalised NCHW and not augmented (e.g. a probe batch)."""
        idx = index.to(self.images.device)
        return to_model_input(self.images[idx], self.mean, self.inv_std, self.dtype)

    def take_notes(self) -> list[str]:
        """Return lines for the run's log about the data (none: in-memory sets are checked
        when read)."""
        return []

    def _order(self, gen: torch.Generator) -> torch.Tensor:
        # An epoch's training order: a permutation, or n draws with replacement.
        n = len(self.labels)
        if self.replacement:
            return torch.randint(n, (n,), generator=gen, device=self.device)
        return torch.randperm(n, generator=gen, device=self.device)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """Return the indices of the images this rank trains on in epoch `epoch`."""
        order = self._order(epoch_generator(self.seed, epoch, self.device))
        parts = [
            order[rank_slice(i, self.batch_size, self.rank, self.world)] for i in range(len(self))
        ]
        return torch.cat(parts) if parts else order[:0]

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
        order = self._order(gen)
        if self.rank:
            gen = epoch_generator(self.seed, epoch, self.device, self.rank)
        rng = epoch_rng(self.seed, epoch, self.rank)
        flips = (
            alternating_flips(n, self.seed, epoch, self.device)
            if self.augment.flip_alternating else None
        )  # fmt: skip
        for i in range(len(self)):
            idx = order[rank_slice(i, self.batch_size, self.rank, self.world)]
            mirrored = None if flips is None else flips[idx]
            raw = self.augment.pixels(self.images[idx], gen, mirrored)
            x = to_model_input(raw, self.mean, self.inv_std, self.dtype)
            x = self.augment.normalised(x, gen, mirrored)
            labels = self.labels[idx]
            targets = None
            if self.mixer is not None:
                x, targets = self.mixer(x, labels, rng)
            yield Batch(x, labels, targets)
