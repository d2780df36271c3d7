"""From the data config to loaders: read the split, hold out validation, limit, batch.

In-memory sets (MNIST, Fashion-MNIST, CIFAR) become InMemoryLoaders; image folders
(`data.name=folder`, `imagenet`, `mini_imagenet`) become FolderLoaders (data/folder.py finds the
files, data/folder_loader.py decodes them).
Both yield the same Batch objects. Under DDP every rank builds its own loaders for its shard.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch

from cnnlab.config import AugmentConfig, Config, DataConfig, EvalConfig, TrainConfig
from cnnlab.data.augment import BatchAugment, check_crop, random_view
from cnnlab.data.datasets import (
    Splits,
    dataset_entry,
    first,
    load,
    normalised_as,
    split_validation,
)
from cnnlab.data.folder import (
    IMAGENET_GRAY_MEAN,
    IMAGENET_GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    Samples,
    folder_size,
    load_folder_splits,
)
from cnnlab.data.folder_loader import FolderLoader, ImageView
from cnnlab.data.image_size import auto_image_size
from cnnlab.data.loader import InMemoryLoader
from cnnlab.data.mixing import BatchMixer
from cnnlab.data.sources import DATASETS as BUILTIN_INFO
from cnnlab.data.sources import ArrayDataset, DatasetInfo, dataset_info
from cnnlab.errors import UserError

Loader = InMemoryLoader | FolderLoader
CROP_RATIO = 0.875  # eval: resize the shorter side to image_size / 0.875, take the centre


@dataclass
class DataBundle:
    """The loaders of one run; `val` is None unless data.val_size > 0, `test` when
    eval.test=false (then the test split is not even read). `test_plain` is the test split as
    it is when `test` shows a random view of each image (eval.random_crop_size ...), else None."""

    train: Loader
    val: Loader | None
    test: Loader | None
    info: DatasetInfo
    description: str = ""  # where the images came from, for the run's log
    test_plain: Loader | None = None


def _held_out(n: int, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    # The same seeded permutation as split_validation, on positions.
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    return np.sort(order[: n - count]), np.sort(order[n - count :])


def _registered_folder_size(d: DataConfig) -> int:
    """Return the training images of a named image folder from its registered size, without the
    folder: all of them, less data.test_fraction of each class (classes taken as equal)."""
    total = dataset_entry(d.name).train_images
    if d.test_fraction is None:
        return total
    classes = dataset_info(d.name).num_classes
    per_class = total // classes
    held = min(max(round(d.test_fraction * per_class), 1), per_class - 1)
    return total - classes * held


def train_images(cfg: Config) -> int:
    """Return how many training images a run of `cfg` uses (image folders are listed, not read;
    a named one without data.root counts as its registered size)."""
    d = cfg.data
    if d.is_image_folder():
        total = folder_size(d) if d.root else _registered_folder_size(d)
    else:
        total = dataset_entry(d.name).train_images
        if total is None:  # a user's dataset that does not declare its size: count it
            total = len(load_split_of(cfg, "train"))
    n = total - d.val_size
    if n <= 0:
        raise UserError(f"data.val_size={d.val_size} leaves no training images (the set has "
                        f"{total})")  # fmt: skip
    return min(n, d.train_limit) if d.train_limit is not None else n


def steps_per_epoch(cfg: Config) -> int:
    """Return the optimizer steps per epoch of `cfg` (the ragged last batch counts only under
    train.drop_last=false)."""
    images, batch = train_images(cfg), cfg.train.batch_size
    steps = images // batch if cfg.train.drop_last else -(-images // batch)
    if steps == 0:
        raise UserError(
            f"train.batch_size={cfg.train.batch_size} is larger than the training set "
            f"({train_images(cfg)} images); lower it or raise data.train_limit"
        )
    return steps


def _fixed_size(d: DataConfig) -> int:
    if d.image_size == "auto":
        raise ValueError("data.image_size=auto must be resolved first (with_image_size)")
    return d.image_size


def with_image_size(d: DataConfig, samples: Samples) -> tuple[DataConfig, str]:
    """Return `d` with data.image_size resolved ('auto': from the training images) and a line
    for the run's log saying what was chosen and why."""
    if d.image_size != "auto":
        return d, f"image size {d.image_size} (data.image_size)"
    size, why = auto_image_size(samples)
    return d.model_copy(update={"image_size": size}), f"image size {size} (auto: {why})"


def folder_info(d: DataConfig, classes: tuple[str, ...]) -> DatasetInfo:
    """Return the DatasetInfo of an image folder (ImageNet statistics unless data.mean/std)."""
    gray = d.color == "gray"
    size = _fixed_size(d)
    info = DatasetInfo(
        name=d.name,
        num_classes=len(classes),
        channels=1 if gray else 3,
        image_size=(size, size),
        mean=IMAGENET_GRAY_MEAN if gray else IMAGENET_MEAN,
        std=IMAGENET_GRAY_STD if gray else IMAGENET_STD,
        classes=classes,
    )
    return normalised_as(info, d.mean, d.std)


def run_info(
    d: DataConfig, classes: tuple[str, ...] | None = None, image_size: int | None = None
) -> DatasetInfo:
    """Return the DatasetInfo a run of data config `d` trained with (channels, size,
    normalisation, class names) without reading images where it can: an image folder's class
    names are `classes` when given, else listed from the folder, and its size `image_size`
    (what data.image_size=auto chose, kept in the checkpoint) when given, else chosen again."""
    if d.is_image_folder():
        if d.image_size == "auto":
            if image_size is not None:
                d = d.model_copy(update={"image_size": image_size})
            else:
                d, _ = with_image_size(d, load_folder_splits(d).train)
        return folder_info(d, classes if classes is not None else load_folder_splits(d).classes)
    known = BUILTIN_INFO.get(d.name)
    if known is None:  # a user's registered dataset says what it is only when read
        known = dataset_entry(d.name).read("train", d.root, d.download).info
    info = normalised_as(known, d.mean, d.std)
    return replace(info, classes=classes) if classes is not None else info


def folder_view(d: DataConfig, train: bool) -> ImageView:
    """Return how the workers cut images for training (`train`) or evaluation."""
    size = _fixed_size(d)
    resize = d.eval_resize or round(size / CROP_RATIO)
    if resize < size:
        raise UserError(f"data.eval_resize={resize} is smaller than data.image_size={size}")
    if d.decoder == "torchvision":
        try:
            import torchvision.io  # noqa: F401
        except ImportError:
            raise UserError(
                "data.decoder=torchvision needs torchvision installed; use data.decoder=pil"
            ) from None
    random_crop = train and d.train_crop == "random_resized"
    return ImageView(
        image_size=size,
        eval_resize=resize if not train else size,
        random_crop=random_crop,
        crop_scale=d.crop_scale,
        gray=d.color == "gray",
        decoder=d.decoder,
        lighting_std=d.lighting_std if train else 0.0,
    )


def _limit_samples(samples: Samples, limit: int | None, seed: int) -> Samples:
    # Folder lists are sorted by class, so "the first N" would be a few classes: take a seeded
    # random N instead (kept in list order).
    if limit is None or limit >= len(samples):
        return samples
    keep = np.sort(np.random.default_rng([seed % 2**64, 3]).permutation(len(samples))[:limit])
    return samples.subset(keep)


def check_batch(b: int, n: int, world: int) -> None:
    """Refuse a global batch `b` that does not split over `world` processes or exceeds the `n`
    training images."""
    if b % world:
        raise UserError(
            f"train.batch_size={b} is the global batch and must split evenly over the "
            f"{world} processes; use a multiple of {world}"
        )
    if n < b:
        raise UserError(
            f"train.batch_size={b} is larger than the training set "
            f"({n} images); lower it or raise data.train_limit"
        )


def _build_folder(
    cfg: Config, device: torch.device, rank: int, world: int, warn: Callable[[str], None] | None
) -> DataBundle:
    splits = load_folder_splits(cfg.data)
    d, size_note = with_image_size(cfg.data, splits.train)
    train, test = splits.train, splits.test
    val = None
    if d.val_size:
        if d.val_size >= len(train):
            raise UserError(
                f"data.val_size={d.val_size} leaves no training images (the set has {len(train)})"
            )
        keep, held = _held_out(len(train), d.val_size, d.split_seed)
        train, val = train.subset(keep), train.subset(held)
    train = _limit_samples(train, d.train_limit, d.split_seed)
    test = _limit_samples(test, d.test_limit, d.split_seed)
    check_batch(cfg.train.batch_size, len(train), world)
    info = folder_info(d, splits.classes)
    augment = BatchAugment.from_config(cfg.augment, info.mean, info.image_size)
    if augment.flip_alternating:
        raise UserError("augment.flip_mode=alternating works on in-memory datasets only")
    if cfg.eval.random_view():
        raise UserError("eval.random_crop_size / random_flip work on in-memory datasets only")
    if cfg.train.sampling != "shuffle":
        raise UserError("train.sampling=replacement works on in-memory datasets only")
    if d.train_crop == "random_resized":  # the random resized crop replaces the padded crop
        augment = replace(augment, crop_padding=0, crop_size=None)
    mixer = BatchMixer.from_config(cfg.augment, info.num_classes)

    def loader(samples: Samples, train: bool) -> FolderLoader:
        return FolderLoader(
            samples, folder_view(d, train), info.mean, info.std,
            cfg.train.batch_size if train else cfg.train.eval_batch_size, device, train=train,
            augment=augment if train else None, mixer=mixer if train else None,
            seed=cfg.train.seed, workers=d.workers, bad_images=d.bad_images,
            rank=rank, world=world, warn=warn, still_view=folder_view(d, False),
        )  # fmt: skip

    tested = len(test) if cfg.eval.test else "no"
    sizes = f"{len(train)} train, {len(val) if val else 0} val, {tested} test images"
    return DataBundle(
        train=loader(train, True),
        val=loader(val, False) if val is not None else None,
        test=loader(test, False) if cfg.eval.test else None,
        info=info,
        description=f"{splits.layout}; {len(splits.classes)} classes; {sizes}; {size_note}",
    )


def build_data(
    cfg: Config,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    warn: Callable[[str], None] | None = None,
) -> DataBundle:
    """Return train/val/test loaders for `cfg` (rank `rank`'s shards of them under DDP)."""
    if cfg.data.is_image_folder():
        return _build_folder(cfg, device, rank, world, warn)
    d = cfg.data
    splits = load(
        d.name, d.root, download=d.download, val_size=d.val_size, split_seed=d.split_seed,
        train_limit=d.train_limit, test_limit=d.test_limit, mean=d.mean, std=d.std,
        test=cfg.eval.test,
    )  # fmt: skip
    check_batch(cfg.train.batch_size, len(splits.train), world)
    return make_loaders(splits, cfg.train, cfg.augment, device, rank, world, cfg.eval)


def make_loaders(
    splits: Splits,
    train: TrainConfig,
    augment: AugmentConfig,
    device: torch.device,
    rank: int = 0,
    world: int = 1,
    evaluation: EvalConfig | None = None,
) -> DataBundle:
    """Return in-memory loaders over `splits`: batches of train.batch_size (eval_batch_size for
    evaluation), `augment` on the training batches, order and draws seeded by train.seed;
    val and test through `evaluation`'s random view when it has one."""
    info = splits.info
    if not train.drop_last and world > 1:
        raise UserError(
            "train.drop_last=false works with one process only: a ragged last batch does not "
            f"split over {world} processes"
        )
    batch_augment = BatchAugment.from_config(augment, info.mean, info.image_size)
    mixer = BatchMixer.from_config(augment, info.num_classes)
    view = evaluation is not None and evaluation.random_view()
    if view:
        check_crop(evaluation.random_crop_size, evaluation.random_crop_padding, info.image_size,
                   "eval.random_crop_size", "eval.random_crop_padding")  # fmt: skip

    def loader(ds: ArrayDataset, training: bool, viewed: bool = view) -> InMemoryLoader:
        images = ds.images
        if viewed and not training:
            images = random_view(images, evaluation.random_crop_size,
                                 evaluation.random_crop_padding, evaluation.random_flip,
                                 train.seed)  # fmt: skip
        return InMemoryLoader(
            images, ds.labels, info.mean, info.std,
            train.batch_size if training else train.eval_batch_size, device, train=training,
            drop_last=train.drop_last,
            augment=batch_augment if training else None, mixer=mixer if training else None,
            seed=train.seed, rank=rank, world=world,
            replacement=training and train.sampling == "replacement",
        )  # fmt: skip

    test = splits.test
    return DataBundle(
        train=loader(splits.train, True),
        val=loader(splits.val, False) if splits.val is not None else None,
        test=loader(test, False) if test is not None else None,
        info=info,
        description=splits.description,
        test_plain=loader(test, False, viewed=False) if view and test is not None else None,
    )


def load_split_of(
    cfg: Config, split: str, name: str | None = None, root: str | None = None
) -> ArrayDataset:
    """Return split 'train' or 'test' of the run's dataset (or of dataset `name` in `root`)."""
    name = name or cfg.data.name
    entry = dataset_entry(name)
    if entry.read is None:
        raise UserError(f"dataset '{name}' is not an in-memory dataset")
    return entry.read(split, root or (cfg.data.root if name == cfg.data.name else None), True)


def eval_loader(
    cfg: Config,
    split: str,
    device: torch.device,
    name: str | None = None,
    root: str | None = None,
    limit: int | None = None,
) -> tuple[Loader, DatasetInfo]:
    """Return an evaluation loader over split 'test', 'train' or 'val' of the run's dataset (or
    of dataset `name` in `root`), normalised as the run was; what `cnnlab eval` reads. With
    `limit`, only the split's first `limit` images (of an image folder, a seeded random
    `limit`, as data.test_limit takes them).

    'val' is the run's own held-out validation split (data.val_size, data.split_seed) and
    'train' what remains of the training set beside it, so a model can be judged without
    touching the test set."""
    d = cfg.data
    name = name or d.name
    if split == "val" and (name != d.name or not d.val_size):
        raise UserError(
            "--split val needs the run's own dataset and a run trained with data.val_size > 0"
        )
    if dataset_entry(name).read is None:  # an image folder
        fields = d.model_dump() if d.name == name else {"name": name}
        fields["root"] = root or fields.get("root")
        if not fields["root"]:
            raise UserError("evaluating on an image folder needs --data-root DIR")
        splits = load_folder_splits(DataConfig(**fields))
        d, _ = with_image_size(DataConfig(**fields), splits.train)
        samples = splits.test if split == "test" else splits.train
        if split != "test" and d.val_size:
            keep, held = _held_out(len(samples), d.val_size, d.split_seed)
            samples = samples.subset(held if split == "val" else keep)
        samples = _limit_samples(samples, limit, d.split_seed)
        info = folder_info(d, splits.classes)
        loader = FolderLoader(
            samples, folder_view(d, False), info.mean, info.std, cfg.train.eval_batch_size,
            device, train=False, workers=d.workers, bad_images=d.bad_images,
        )  # fmt: skip
        return loader, info
    data = load_split_of(cfg, "test" if split == "test" else "train", name, root)
    if split != "test" and name == d.name and d.val_size:
        kept, held = split_validation(data, d.val_size, d.split_seed)
        data = held if split == "val" else kept
    data = first(data, limit)
    info = normalised_as(data.info, d.mean, d.std) if name == d.name else data.info
    loader = InMemoryLoader(
        data.images, data.labels, info.mean, info.std, cfg.train.eval_batch_size, device,
        train=False,
    )  # fmt: skip
    return loader, info
