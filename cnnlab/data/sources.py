"""Real dataset readers (IDX for MNIST/Fashion-MNIST, CIFAR python batches) and their table."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cnnlab.data.download import (
    IDX_FILES,
    PICKLE_LAYOUT,
    REMOTE,
    SPLITS,
    download_dir,
    fetch,
    idx_path,
    locate,
    missing_files,
    pickle_folder,
    search_path,
)
from cnnlab.data.folder import IMAGENET_MEAN, IMAGENET_STD
from cnnlab.errors import UserError, closest

__all__ = [
    "DATASETS",
    "TRAIN_IMAGES",
    "ArrayDataset",
    "DatasetInfo",
    "dataset_info",
    "load_split",
    "locate",
]


@dataclass(frozen=True)
class DatasetInfo:
    """What a model and the augmentations need to know about a dataset."""

    name: str
    num_classes: int
    channels: int
    image_size: tuple[int, int]  # (H, W)
    mean: tuple[float, ...]  # per channel, on the [0, 1] scale
    std: tuple[float, ...]
    classes: tuple[str, ...]


@dataclass
class ArrayDataset:
    """A whole split in memory: uint8 images (N, H, W, C) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    info: DatasetInfo

    def __len__(self) -> int:
        """Return the number of examples."""
        return len(self.labels)


_FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat")
_FASHION += ("Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_CIFAR10 = ("airplane", "automobile", "bird", "cat", "deer")
_CIFAR10 += ("dog", "frog", "horse", "ship", "truck")
# The fine label names of cifar-100-python/meta, in label order (alphabetical).
_CIFAR100 = tuple(
    """apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy bridge bus
    butterfly camel can castle caterpillar cattle chair chimpanzee clock cloud cockroach couch
    crab crocodile cup dinosaur dolphin elephant flatfish forest fox girl hamster house kangaroo
    keyboard lamp lawn_mower leopard lion lizard lobster man maple_tree motorcycle mountain mouse
    mushroom oak_tree orange orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy
    porcupine possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper
    snail snake spider squirrel streetcar sunflower sweet_pepper table tank telephone television
    tiger tractor train trout tulip turtle wardrobe whale willow_tree wolf woman worm""".split()
)

# mean/std: per-channel pixel statistics of the train split on the [0, 1] scale (Fashion-MNIST
# measured on the Debian copy: 0.28604, 0.35302).
DATASETS: dict[str, DatasetInfo] = {
    "fashion_mnist": DatasetInfo("fashion_mnist", 10, 1, (28, 28), (0.2860,), (0.3530,), _FASHION),
    "mnist": DatasetInfo(
        "mnist", 10, 1, (28, 28), (0.1307,), (0.3081,), tuple(str(i) for i in range(10))
    ),
    "cifar10": DatasetInfo(
        "cifar10", 10, 3, (32, 32), (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), _CIFAR10
    ),
    "cifar100": DatasetInfo(
        "cifar100", 100, 3, (32, 32), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), _CIFAR100
    ),
}

# Images in each train split, so a schedule can be laid out without reading the files.
TRAIN_IMAGES: dict[str, int] = {
    "fashion_mnist": 60000,
    "mnist": 60000,
    "cifar10": 50000,
    "cifar100": 50000,
}

# Image-folder datasets known by name: what a model is built for before the folder is read
# (its class names come from the folder). ILSVRC-2012 holds 1,281,167 training images in 1000
# class folders; Mini-ImageNet (Vinyals et al.; Ravi & Larochelle's CSV split) 600 84x84 images
# in each of 100 classes, pooled from its three CSV files.
FOLDER_DATASETS: dict[str, DatasetInfo] = {
    "imagenet": DatasetInfo("imagenet", 1000, 3, (224, 224), IMAGENET_MEAN, IMAGENET_STD, ()),
    "mini_imagenet": DatasetInfo(
        "mini_imagenet", 100, 3, (84, 84), IMAGENET_MEAN, IMAGENET_STD, ()
    ),
}
FOLDER_TRAIN_IMAGES: dict[str, int] = {"imagenet": 1_281_167, "mini_imagenet": 60_000}


def dataset_info(name: str) -> DatasetInfo:
    """Return the table entry of dataset `name` (an in-memory set or a named image folder)."""
    known = DATASETS | FOLDER_DATASETS
    if name not in known:
        raise UserError(f"unknown dataset '{name}'{closest(name, known)}; known: {sorted(known)}")
    return known[name]


def load_split(
    name: str, split: str, root: str | os.PathLike | None = None, download: bool = True
) -> ArrayDataset:
    """Load split 'train' or 'test' of `name`, downloading it only when no copy is found."""
    info = dataset_info(name)
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}'{closest(split, SPLITS)}; use 'train' or 'test'")
    folder = locate(name, root, split)
    if folder is None and not download:
        raise UserError(_not_found(name, split, root))
    if folder is None:
        folder = fetch(name, root)
    if name in PICKLE_LAYOUT:
        images, labels = _read_pickles(name, folder, split, info)
    else:
        images, labels = _read_idx_split(folder, split, info)
    return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), info)


def _not_found(name: str, split: str, root: str | os.PathLike | None) -> str:
    folders = search_path(name, root)
    msg = f"{name}: no {split} files found (looked in {', '.join(map(str, folders))})"
    # A folder holding part of the files is most likely the one the user meant: name the gaps.
    total = len(PICKLE_LAYOUT[name].splits[split] if name in PICKLE_LAYOUT else IDX_FILES[split])
    for d in folders:
        missing = missing_files(name, d, split)
        if len(missing) < total:
            return f"{msg}; {d} lacks {', '.join(map(str, missing))}"
    files = ", ".join(REMOTE[name].files)
    return f"{msg}; put {files} in one of them, or allow download to {download_dir(name, root)}"


# ---------------------------------------------------------------- IDX (MNIST, Fashion-MNIST)


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    if path.suffix != ".gz":
        return raw
    try:
        return gzip.decompress(raw)
    except EOFError:
        raise UserError(f"{path}: corrupt gzip: the file ends early (truncated?)") from None
    except (OSError, zlib.error) as e:  # BadGzipFile (bad header, CRC error) is an OSError
        raise UserError(f"{path}: corrupt gzip: {e}") from None


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Read an unsigned-byte IDX file with `ndim` dims (3: images, 1: labels), checking it."""
    kind = "images" if ndim == 3 else "labels"
    data = _read_bytes(path)
    header = 4 + 4 * ndim
    if len(data) < header:
        raise UserError(f"{path}: truncated: {len(data)} bytes, less than an IDX {kind} header")
    magic = int.from_bytes(data[:4], "big")
    if magic != 0x800 | ndim:
        hint = "; the file is gzipped, name it .gz" if data[:2] == b"\x1f\x8b" else ""
        raise UserError(
            f"{path}: bad magic 0x{magic:08x}, expected 0x{0x800 | ndim:08x} (IDX {kind}){hint}"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    need, held = int(np.prod(dims)), len(data) - header
    if need != held:
        what = f"{dims[0]} images of {dims[1]}x{dims[2]}" if ndim == 3 else f"{dims[0]} labels"
        state = "truncated" if held < need else "too long"
        unit = "pixels" if ndim == 3 else "labels"
        raise UserError(
            f"{path}: {state}: header says {what} but the file holds {held} bytes of {unit}"
        )
    if dims[0] == 0:
        raise UserError(f"{path}: holds no {kind}")
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims)


def _read_idx_split(folder: Path, split: str, info: DatasetInfo) -> tuple[np.ndarray, np.ndarray]:
    paths = []
    for stem in IDX_FILES[split]:
        path = idx_path(folder, stem)
        if path is None:
            raise UserError(f"{folder / stem}: missing (neither it nor {stem}.gz exists)")
        paths.append(path)
    images, labels = read_idx(paths[0], 3), read_idx(paths[1], 1)
    if images.shape[1:] != info.image_size:
        h, w = images.shape[1:]
        raise UserError(
            f"{paths[0]}: images are {h}x{w}, expected {info.image_size} for {info.name}"
        )
    if len(labels) != len(images):
        raise UserError(
            f"{paths[1]}: holds {len(labels)} labels but {paths[0]} holds {len(images)} images"
        )
    _check_labels(paths[1], labels, info.num_classes)
    # One copy: frombuffer views are read-only, and torch wants writable, contiguous memory.
    return images[..., None].copy(), labels.astype(np.int64)


def _check_labels(path: Path, labels: np.ndarray, num_classes: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise UserError(
            f"{path}: label {int(labels[i])} at index {i} is out of range 0..{num_classes - 1}"
            f" ({bad.size} such labels)"
        )


# ---------------------------------------------------------------- CIFAR python batches


class _BatchUnpickler(pickle.Unpickler):
    # The batches are pickles, and a pickle can run any code it names; these files may come
    # from a mirror, so only what a dict of numpy arrays and lists needs is allowed.
    ALLOWED = {
        ("_codecs", "encode"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }

    def find_class(self, module: str, name: str) -> object:
        """Resolve only the allowed globals."""
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(
    path: Path, label_key: str, info: DatasetInfo
) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR python batch: images (N, H, W, C) uint8 and labels (N,) int64."""
    try:
        with path.open("rb") as f:
            batch = _BatchUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise UserError(f"{path}: missing") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read: {e.strerror or e}") from None
    except Exception as e:  # unpickling a damaged file can raise almost any exception type
        raise UserError(f"{path}: cannot unpickle ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR batch: holds a {type(batch).__name__}, not a dict")

    def get(key: str) -> object:
        # The original files were pickled by Python 2, so their keys load as bytes.
        for k in (key.encode(), key):
            if k in batch:
                return batch[k]
        raise UserError(f"{path}: missing key '{key}' (has {sorted(map(str, batch))})")

    data, labels = get("data"), get(label_key)
    c, (h, w) = info.channels, info.image_size
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise UserError(f"{path}: 'data' is not a 2-d uint8 array")
    if data.shape[1] != c * h * w:
        raise UserError(f"{path}: 'data' rows hold {data.shape[1]} bytes, expected {c * h * w}")
    try:
        labels = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"{path}: '{label_key}' is not a list of integers") from None
    if labels.shape != (len(data),):
        raise UserError(f"{path}: holds {labels.size} '{label_key}' but {len(data)} images")
    _check_labels(path, labels, info.num_classes)
    # Rows are channel-major (all R, then G, then B); we keep images channel-last.
    return data.reshape(-1, c, h, w).transpose(0, 2, 3, 1), labels


def _read_pickles(
    name: str, folder: Path, split: str, info: DatasetInfo
) -> tuple[np.ndarray, np.ndarray]:
    batch_dir = pickle_folder(name, folder, split)
    label_key = "fine_labels" if name == "cifar100" else "labels"
    parts = [
        read_cifar_batch(batch_dir / f, label_key, info) for f in PICKLE_LAYOUT[name].splits[split]
    ]
    images = np.ascontiguousarray(np.concatenate([p[0] for p in parts]))
    return images, np.concatenate([p[1] for p in parts])
