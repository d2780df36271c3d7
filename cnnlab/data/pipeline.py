"""From the data config to loaders: read the split, hold out validation, limit, batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnnlab.config import Config
from cnnlab.data.augment import BatchAugment
from cnnlab.data.loader import InMemoryLoader
from cnnlab.data.mixing import BatchMixer
from cnnlab.data.sources import TRAIN_IMAGES, ArrayDataset, DatasetInfo, load_split
from cnnlab.errors import UserError


@dataclass
class DataBundle:
    """The loaders of one run; `val` is None unless data.val_size > 0."""

    train: InMemoryLoader
    val: InMemoryLoader | None
    test: InMemoryLoader
    info: DatasetInfo


def split_validation(
    ds: ArrayDataset, val_size: int, seed: int
) -> tuple[ArrayDataset, ArrayDataset]:
    """Hold out `val_size` training images chosen by a seeded permutation (not by train.seed)."""
    n = len(ds.labels)
    if val_size >= n:
        raise UserError(f"data.val_size={val_size} leaves no training images (the set has {n})")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    keep, held = order[: n - val_size].sort().values, order[n - val_size :].sort().values
    return (
        ArrayDataset(ds.images[keep], ds.labels[keep], ds.info),
        ArrayDataset(ds.images[held], ds.labels[held], ds.info),
    )


def _limit(ds: ArrayDataset, limit: int | None) -> ArrayDataset:
    if limit is None or limit >= len(ds.labels):
        return ds
    return ArrayDataset(ds.images[:limit], ds.labels[:limit], ds.info)


def train_images(cfg: Config) -> int:
    """Return how many training images a run of `cfg` uses, without reading the dataset."""
    d = cfg.data
    n = TRAIN_IMAGES[d.name] - d.val_size
    if n <= 0:
        raise UserError(f"data.val_size={d.val_size} leaves no training images (the set has "
                        f"{TRAIN_IMAGES[d.name]})")  # fmt: skip
    return min(n, d.train_limit) if d.train_limit is not None else n


def steps_per_epoch(cfg: Config) -> int:
    """Return the optimizer steps per epoch of `cfg` (the ragged last batch is dropped)."""
    steps = train_images(cfg) // cfg.train.batch_size
    if steps == 0:
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training set "
            f"({train_images(cfg)} images); lower it or raise data.train_limit"
        )
    return steps


def build_data(cfg: Config, device: torch.device) -> DataBundle:
    """Return train/val/test loaders for `cfg`, with the data resident on `device`."""
    d = cfg.data
    train_set = load_split(d.name, "train", d.root, d.download)
    test_set = _limit(load_split(d.name, "test", d.root, d.download), d.test_limit)
    val_set = None
    if d.val_size:
        train_set, val_set = split_validation(train_set, d.val_size, d.split_seed)
    train_set = _limit(train_set, d.train_limit)
    if len(train_set.labels) < cfg.train.batch_size:
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training set "
            f"({len(train_set.labels)} images); lower it or raise data.train_limit"
        )
    info = train_set.info
    augment = BatchAugment.from_config(cfg.augment, info.mean, info.image_size)
    mixer = BatchMixer.from_config(cfg.augment, info.num_classes)

    def loader(ds: ArrayDataset, train: bool) -> InMemoryLoader:
        return InMemoryLoader(
            ds.images,
            ds.labels,
            info.mean,
            info.std,
            cfg.train.batch_size if train else cfg.train.eval_batch_size,
            device,
            train=train,
            augment=augment if train else None,
            mixer=mixer if train else None,
            seed=cfg.train.seed,
        )

    return DataBundle(
        train=loader(train_set, True),
        val=loader(val_set, False) if val_set is not None else None,
        test=loader(test_set, False),
        info=info,
    )
