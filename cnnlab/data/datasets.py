"""Datasets by name or from tensors: the table users register into, and the splits a run uses.

`load("fashion_mnist")` reads a registered dataset (the shipped readers, or a user's
`register_dataset`) and returns its `Splits`: uint8 NHWC images and int64 labels for train,
an optional validation split held out of train, and test, with the normalisation statistics.
`from_tensors(...)` makes the same object from a user's own tensors, checked so that a wrong
dtype, shape or label is one clear line instead of an error deep inside a training step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from cnnlab.data.sources import DATASETS as BUILTIN_INFO
from cnnlab.data.sources import (
    FOLDER_TRAIN_IMAGES,
    TRAIN_IMAGES,
    ArrayDataset,
    DatasetInfo,
    load_split,
)
from cnnlab.errors import UserError
from cnnlab.registry import DATASETS

Reader = Callable[[str, Any, bool], ArrayDataset]  # (split 'train'|'test', root, download)


class DataError(UserError):
    """Data handed to cnnlab that it cannot train on (dtype, shape, labels, statistics)."""


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: a reader of its 'train' and 'test' splits (None for image
    folders, which stream from disk) and, when known, its training-set size."""

    name: str
    read: Reader | None
    train_images: int | None = None
    doc: str = ""


def register_dataset(
    name: str, read: Reader, *, train_images: int | None = None, doc: str = ""
) -> None:
    """Register `read(split, root, download) -> ArrayDataset` as dataset `name` (usable as
    `data.name` in recipes and `cnnlab.datasets.load(name)`)."""
    DATASETS.add(name, DatasetEntry(name, read, train_images, doc))


def names() -> list[str]:
    """Return the registered dataset names."""
    return DATASETS.names()


def dataset_entry(name: str) -> DatasetEntry:
    """Return the entry of dataset `name` (UnknownName suggests the closest)."""
    return DATASETS.get(name)


@dataclass
class Splits:
    """Everything a Trainer needs to build its in-memory loaders."""

    train: ArrayDataset
    val: ArrayDataset | None
    test: ArrayDataset | None  # None: a run that never looks at the test set (tuning)
    info: DatasetInfo
    description: str = ""


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


def first(ds: ArrayDataset, limit: int | None) -> ArrayDataset:
    """Return the first `limit` examples of `ds` (all of them when `limit` is None)."""
    if limit is None or limit >= len(ds.labels):
        return ds
    return ArrayDataset(ds.images[:limit], ds.labels[:limit], ds.info)


def normalised_as(
    info: DatasetInfo, mean: Sequence[float] | None, std: Sequence[float] | None
) -> DatasetInfo:
    """Return `info` with `mean` / `std` where given (checked against its channels)."""
    for key, values in (("mean", mean), ("std", std)):
        if values is not None and len(values) != info.channels:
            raise UserError(
                f"config key 'data.{key}': {len(values)} values for {info.channels}-channel images"
            )
    return replace(
        info,
        mean=tuple(mean) if mean is not None else info.mean,
        std=tuple(std) if std is not None else info.std,
    )


def assemble(
    train: ArrayDataset,
    test: ArrayDataset | None,
    *,
    val_size: int = 0,
    split_seed: int = 0,
    train_limit: int | None = None,
    test_limit: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Splits:
    """Hold out validation images, apply the limits and the normalisation, in that order."""
    test = first(test, test_limit) if test is not None else None
    val = None
    if val_size:
        train, val = split_validation(train, val_size, split_seed)
    train = first(train, train_limit)
    info = normalised_as(train.info, mean, std)
    tested = len(test) if test is not None else "no"
    sizes = f"{len(train)} train, {len(val) if val else 0} val, {tested} test"
    return Splits(train, val, test, info, f"{info.name}: {sizes} images")


def load(
    name: str,
    root: str | None = None,
    *,
    download: bool = True,
    test: bool = True,
    **options: Any,
) -> Splits:
    """Read registered dataset `name` (located in `root`, the cache or the system folders, or
    downloaded and verified) and return its splits (without `test`, the test split is not
    even read); `options` are those of `assemble` (val_size, split_seed, train_limit,
    test_limit, mean, std)."""
    entry = dataset_entry(name)
    if entry.read is None:
        raise UserError(
            f"dataset '{name}' streams from disk and has no in-memory form; train it with "
            "cnnlab.train(config) or `cnnlab train data.name=folder data.root=DIR`"
        )
    train = entry.read("train", root, download)
    return assemble(train, entry.read("test", root, download) if test else None, **options)


def _check_split(images: Any, labels: Any, what: str, num_classes: int) -> None:
    if not isinstance(images, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise DataError(f"{what}: images and labels must be torch tensors or numpy arrays")
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise DataError(
            f"{what} images must be uint8 of shape (N, H, W, C), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    if labels.dtype != torch.int64 or labels.shape != (len(images),):
        raise DataError(
            f"{what} labels must be int64 of shape ({len(images)},), got {labels.dtype} "
            f"{tuple(labels.shape)}"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DataError(
            f"{what} labels must lie in 0..{num_classes - 1} (num_classes={num_classes}), "
            f"found {int(labels.min())}..{int(labels.max())}"
        )


def _as_tensor(value: Any, what: str) -> Any:
    # A numpy array (how most users hold their images) becomes a tensor sharing its memory
    # (copied only when not C-contiguous or read-only); the checks that follow are the same.
    if not isinstance(value, np.ndarray):
        return value
    try:
        return torch.from_numpy(np.require(value, requirements=["C", "W"]))
    except TypeError:
        raise DataError(f"{what}: numpy arrays of dtype {value.dtype} cannot be used") from None


def from_tensors(
    train_images: torch.Tensor | np.ndarray,
    train_labels: torch.Tensor | np.ndarray,
    test_images: torch.Tensor | np.ndarray,
    test_labels: torch.Tensor | np.ndarray,
    *,
    mean: Sequence[float],
    std: Sequence[float],
    num_classes: int | None = None,
    classes: Sequence[str] | None = None,
    name: str = "tensors",
    val_size: int = 0,
    split_seed: int = 0,
) -> Splits:
    """Return splits made of a user's own uint8 NHWC images and int64 labels (checked), given as
    torch tensors or numpy arrays."""
    train_images, train_labels, test_images, test_labels = (
        _as_tensor(value, what) for value, what in (
            (train_images, "training images"), (train_labels, "training labels"),
            (test_images, "test images"), (test_labels, "test labels"),
        )
    )  # fmt: skip
    if num_classes is None:
        num_classes = len(classes) if classes is not None else int(train_labels.max()) + 1
    if classes is not None and len(classes) != num_classes:
        raise DataError(f"{len(classes)} class names for num_classes={num_classes}")
    _check_split(train_images, train_labels, "training", num_classes)
    _check_split(test_images, test_labels, "test", num_classes)
    if len(train_images) == 0 or len(test_images) == 0:
        raise DataError("the training and test sets must each hold at least one image")
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"training images are {tuple(train_images.shape[1:])} (H, W, C) but test images "
            f"are {tuple(test_images.shape[1:])}"
        )
    channels = train_images.shape[3]
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise DataError(
            f"mean and std need {channels} values (one per channel, std > 0), got "
            f"{list(mean)} and {list(std)}"
        )
    info = DatasetInfo(
        name=name,
        num_classes=num_classes,
        channels=channels,
        image_size=(train_images.shape[1], train_images.shape[2]),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        classes=tuple(classes) if classes is not None else tuple(map(str, range(num_classes))),
    )
    return assemble(
        ArrayDataset(train_images, train_labels, info),
        ArrayDataset(test_images, test_labels, info),
        val_size=val_size,
        split_seed=split_seed,
    )


def _builtin_reader(name: str) -> Reader:
    def read(split: str, root: Any, download: bool) -> ArrayDataset:
        return load_split(name, split, root, download)

    return read


for _name in BUILTIN_INFO:
    register_dataset(
        _name, _builtin_reader(_name), train_images=TRAIN_IMAGES[_name],
        doc=f"{_name}: the official files, located or downloaded and verified",
    )  # fmt: skip
DATASETS.add("folder", DatasetEntry("folder", None, None, "an image folder (data.root=DIR)"))
DATASETS.add(
    "imagenet",
    DatasetEntry("imagenet", None, FOLDER_TRAIN_IMAGES["imagenet"],
                 "ILSVRC-2012 as an image folder: data.root=DIR, train/<wnid>/ and val/<wnid>/"),
)  # fmt: skip
DATASETS.add(
    "mini_imagenet",
    DatasetEntry("mini_imagenet", None, FOLDER_TRAIN_IMAGES["mini_imagenet"],
                 "Mini-ImageNet as an image folder: data.root=DIR with images/ and the CSV split"),
)  # fmt: skip
