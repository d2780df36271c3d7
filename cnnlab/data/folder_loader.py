"""Batches from an image folder: Pillow decodes and crops in DataLoader worker processes; the
uint8 batch then goes to the device, where the same batched augmentations as for in-memory
sets run (flip, PatchShuffle, Cutout, Random Erasing, Mixup/CutMix), and out come the same
`Batch` objects, so the trainer does not care where images come from.

Per image, in the worker: training takes a random resized crop (Inception-style: area
U(crop_scale) of the image, aspect ratio in [3/4, 4/3], as torchvision's RandomResizedCrop)
resized to image_size, or with `train_crop=resize` the eval view (then augment.crop_padding's
pad-and-crop runs on the device); evaluation resizes the shorter side to eval_resize and takes
the centre image_size square. With `lighting_std`, each training crop then gets AlexNet-style
PCA lighting noise as ReCU's loader adds it. JPEGs decode at a reduced scale (Pillow's draft
mode, 1/2..1/8) whenever the crop still has at least image_size pixels, which saves most of the
decode time on large photos. Each image's crop (and noise) is drawn from a generator seeded by
(seed, epoch, index), so batches do not depend on which worker decoded them and a resumed run
repeats an epoch.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from cnnlab.data.augment import BatchAugment, to_model_input
from cnnlab.data.folder import Samples
from cnnlab.data.image_file import open_image, to_eight_bit
from cnnlab.data.loader import (
    Batch,
    BatchLoader,
    epoch_generator,
    epoch_rng,
    eval_shard,
    rank_slice,
)
from cnnlab.data.mixing import BatchMixer
from cnnlab.errors import UserError

ASPECT = (3 / 4, 4 / 3)
# The eigenvalues and eigenvectors (columns) of ImageNet's RGB covariance on the [0, 1] scale,
# as ReCU's Lighting holds them (z-hXu/ReCU@9a73bed imagenet/dataset/imagenet.py:13-20).
PCA_EIGVAL = np.array([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = np.array(
    [[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]]
)


@dataclass(frozen=True)
class ImageView:
    """How a worker turns a file into an image_size x image_size uint8 array."""

    image_size: int
    eval_resize: int
    random_crop: bool  # random resized crop (training) or resize + centre crop
    crop_scale: tuple[float, float] = (0.08, 1.0)
    gray: bool = False
    decoder: str = "pil"
    lighting_std: float = 0.0

    @property
    def random(self) -> bool:
        """Return whether the view draws random numbers (a random crop or lighting noise)."""
        return self.random_crop or self.lighting_std > 0


def random_resized_box(
    width: int, height: int, scale: tuple[float, float], rng: np.random.Generator
) -> tuple[float, float, float, float]:
    """Return (left, top, right, bottom) of a random crop of area U(scale) and aspect in
    [3/4, 4/3] (log-uniform); after 10 misses, the centre crop clamped to that aspect range."""
    area = width * height
    log_low, log_high = math.log(ASPECT[0]), math.log(ASPECT[1])
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(log_low, log_high))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    ratio = width / height
    if ratio < ASPECT[0]:
        w, h = width, round(width / ASPECT[0])
    elif ratio > ASPECT[1]:
        w, h = round(height * ASPECT[1]), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def centre_box(
    width: int, height: int, resize: int, size: int
) -> tuple[float, float, float, float]:
    """Return the box, in the image's own pixels, that 'resize the shorter side to `resize`,
    then take the centre size x size square' keeps."""
    side = size * min(width, height) / resize
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def _open_torchvision(path: str, gray: bool):  # noqa: ANN202 - a PIL image
    from torchvision.io import ImageReadMode, decode_image, read_file

    mode = ImageReadMode.GRAY if gray else ImageReadMode.RGB
    pixels = decode_image(read_file(path), mode=mode).permute(1, 2, 0).numpy()
    return Image.fromarray(pixels[..., 0] if gray else pixels)


def decode_view(path: str, view: ImageView, rng: np.random.Generator | None) -> np.ndarray:
    """Decode `path` and return its (S, S, C) uint8 view; `rng` drives the random crop."""
    # Reads the header only: an empty file or a bomb is refused before any decoder runs.
    with open_image(path) as pil:
        image = None
        if view.decoder == "torchvision" and path.lower().endswith((".jpg", ".jpeg", ".png")):
            try:
                image = _open_torchvision(path, view.gray)
            except Exception:  # noqa: BLE001 - let Pillow decode it and name the real problem
                image = None
        return view_pixels(to_eight_bit(pil) if image is None else image, view, rng)


def view_pixels(image: Image.Image, view: ImageView, rng: np.random.Generator | None) -> np.ndarray:
    """Return the (S, S, C) uint8 view of an opened PIL image; `rng` drives the random crop."""
    mode = "L" if view.gray else "RGB"
    width, height = image.size
    size = view.image_size
    if view.random_crop:
        box = random_resized_box(width, height, view.crop_scale, rng)
    else:
        box = centre_box(width, height, view.eval_resize, size)
    # JPEG draft: decode at 1/2, 1/4 or 1/8 scale while the box keeps >= size pixels a side.
    box_w, box_h = box[2] - box[0], box[3] - box[1]
    image.draft(mode, (math.ceil(width * size / box_w), math.ceil(height * size / box_h)))
    sx, sy = width / image.size[0], height / image.size[1]
    box = (box[0] / sx, box[1] / sy, box[2] / sx, box[3] / sy)
    if image.mode != mode:
        image = image.convert(mode)
    image = image.resize((size, size), Image.BILINEAR, box=box)
    pixels = np.array(image, dtype=np.uint8)  # a writable copy for torch.from_numpy
    if view.lighting_std:
        pixels = lighting_noise(pixels, view.lighting_std, rng)
    return pixels[..., None] if pixels.ndim == 2 else pixels


def lighting_noise(pixels: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Add one PCA lighting shift per channel to (H, W, 3) uint8 `pixels`, as ReCU's Lighting
    does: alpha ~ N(0, std^2) per component (float32), shift = eigvec @ (alpha * eigval) added to
    the 0-255 values, clipped to [0, 255] and truncated to uint8. On that scale the shift stays
    well below one level, so the truncation lowers a channel by one wherever its shift is
    negative and leaves it otherwise (imagenet.py:32-46)."""
    alpha = (rng.standard_normal(3) * std).astype(np.float32)
    shift = PCA_EIGVEC @ (alpha * PCA_EIGVAL)
    return np.clip(pixels + shift, 0, 255).astype(np.uint8)


class PathTable:
    """File paths packed in one byte buffer (a list of a million str objects would be copied
    page by page into every worker as their reference counts change)."""

    def __init__(self, paths: list[str]) -> None:
        encoded = [p.encode() for p in paths]
        self.offsets = np.cumsum([0] + [len(e) for e in encoded], dtype=np.int64)
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        """Return the number of paths."""
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        """Return path `i`."""
        return self.buffer[self.offsets[i] : self.offsets[i + 1]].tobytes().decode()


class FolderImages(Dataset):
    """Decodes one image per (index, epoch) key; an unreadable file gives None and the reason."""

    def __init__(self, paths: PathTable, labels: np.ndarray, view: ImageView, seed: int) -> None:
        self.paths = paths
        self.labels = labels
        self.view = view
        self.seed = seed

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> tuple:
        """Return (pixels or None, label, index, error text or None)."""
        index, epoch = key
        rng = None
        if self.view.random:
            rng = np.random.default_rng([self.seed % 2**64, epoch, index, 3])
        try:
            pixels = decode_view(self.paths[index], self.view, rng)
        except Exception as exc:  # noqa: BLE001 - decoders raise many types for a bad file
            return None, int(self.labels[index]), index, f"{type(exc).__name__}: {exc}"
        return torch.from_numpy(pixels), int(self.labels[index]), index, None


def collate(items: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, str]]]:
    """Stack the decoded images of a batch; list the (index, reason) of those that failed."""
    good = [it for it in items if it[0] is not None]
    bad = [(it[2], it[3]) for it in items if it[0] is None]
    if good:
        images = torch.stack([it[0] for it in good])
    else:
        images = torch.empty(0, dtype=torch.uint8)
    labels = torch.tensor([it[1] for it in good], dtype=torch.long)
    return images, labels, bad


class EpochBatches(Sampler):
    """Yields each batch as a list of (index, epoch) keys: the training order of epoch e comes
    from (seed, e) and rank r takes its slice of every global batch; evaluation reads the
    rank's every-world-th image in order."""

    def __init__(
        self, n: int, batch_size: int, train: bool, seed: int, rank: int, world: int
    ) -> None:
        self.n, self.batch_size, self.train = n, batch_size, train
        self.seed, self.rank, self.world = seed, rank, world
        self.epoch = 0

    def __len__(self) -> int:
        """Return this rank's batches per epoch."""
        if self.train:
            return self.n // self.batch_size
        return -(-len(eval_shard(self.n, self.rank, self.world)) // self.batch_size)

    def indices(self, epoch: int) -> list[list[int]]:
        """Return this rank's batches of epoch `epoch` as lists of image indices."""
        if not self.train:
            shard = list(eval_shard(self.n, self.rank, self.world))
            return [shard[i : i + self.batch_size] for i in range(0, len(shard), self.batch_size)]
        gen = epoch_generator(self.seed, epoch, torch.device("cpu"))
        order = torch.randperm(self.n, generator=gen).tolist()
        return [
            order[rank_slice(i, self.batch_size, self.rank, self.world)] for i in range(len(self))
        ]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        """Yield the batches of the epoch set in `self.epoch`."""
        for batch in self.indices(self.epoch):
            yield [(i, self.epoch) for i in batch]


class FolderLoader(BatchLoader):
    """Training or evaluation batches of an image folder, same interface as InMemoryLoader."""

    def __init__(
        self,
        samples: Samples,
        view: ImageView,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        batch_size: int,
        device: torch.device,
        train: bool,
        augment: BatchAugment | None = None,
        mixer: BatchMixer | None = None,
        seed: int = 0,
        workers: int = 2,
        bad_images: str = "fail",
        rank: int = 0,
        world: int = 1,
        dtype: torch.dtype = torch.float32,
        warn: Callable[[str], None] | None = None,
        still_view: ImageView | None = None,
    ) -> None:
        super().__init__(mean, std, batch_size, device, train, augment, mixer, seed, dtype, rank,
                         world)  # fmt: skip
        self.paths = PathTable(samples.paths)
        self.num_images = len(samples)
        self.bad_images = bad_images
        self.skipped: dict[str, str] = {}
        self.notes: list[str] = []
        self.warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self.sampler = EpochBatches(len(samples), batch_size, train, seed, rank, world)
        self.dataset = FolderImages(self.paths, samples.labels, view, seed)
        # Unaugmented images of this split (fixed_images) use the evaluation view.
        self.still = FolderImages(self.paths, samples.labels, still_view or view, seed)
        self.loader = DataLoader(
            self.dataset,
            batch_sampler=self.sampler,
            num_workers=workers,
            collate_fn=collate,
            pin_memory=device.type == "cuda",
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers > 0 else None,
        )

    def __len__(self) -> int:
        """Return this rank's batches per epoch (training drops the ragged last batch)."""
        return len(self.sampler)

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """Return the indices of the images this rank trains on in epoch `epoch`."""
        return torch.tensor([i for b in self.sampler.indices(epoch) for i in b], dtype=torch.long)

    def fixed_images(self, index: torch.Tensor) -> torch.Tensor:
        """Return images `index` decoded with the evaluation view, normalised NCHW, not
        augmented (e.g. a probe batch); decoded here, in this process."""
        images, _, bad = collate([self.still[(int(i), 0)] for i in index])
        self._check(bad)
        images = images.to(self.device)
        return to_model_input(images, self.mean, self.inv_std, self.dtype)

    def take_notes(self) -> list[str]:
        """Return (and forget) the lines about skipped images since the last call."""
        notes, self.notes = self.notes, []
        return notes

    def _check(self, bad: list[tuple[int, str]]) -> None:
        for index, reason in bad:
            path = self.paths[index]
            if self.bad_images == "fail":
                raise UserError(
                    f"{path}: cannot read this image ({reason}); remove or replace it, or set "
                    "data.bad_images=skip to leave unreadable images out"
                )
            if path not in self.skipped:
                self.skipped[path] = reason
                line = f"skipped unreadable image {path} ({reason})"
                self.notes.append(line)
                self.warn(f"cnnlab: warning: {line}")

    def epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield the batches of epoch `epoch` (augmented and mixed on the device when training)."""
        self.sampler.epoch = epoch
        gen = epoch_generator(self.seed, epoch, self.device, self.rank + 1)
        rng = epoch_rng(self.seed, epoch, self.rank)
        for images, labels, bad in self.loader:
            self._check(bad)
            if len(labels) == 0:
                raise UserError(f"every image of a batch in epoch {epoch} is unreadable")
            images = images.to(self.device, non_blocking=True)
            labels = labels.to(self.device, non_blocking=True)
            if not self.train:
                yield Batch(to_model_input(images, self.mean, self.inv_std, self.dtype), labels)
                continue
            raw = self.augment.pixels(images, gen)
            x = to_model_input(raw, self.mean, self.inv_std, self.dtype)
            x = self.augment.normalised(x, gen)
            targets = None
            if self.mixer is not None:
                x, targets = self.mixer(x, labels, rng)
            yield Batch(x, labels, targets)
