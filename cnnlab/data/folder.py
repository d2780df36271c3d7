"""Image-folder datasets: find the images and their classes (no decoding happens here).

Layouts under `data.root`, tried in this order:

1. Mini-ImageNet CSV split: `images/` (flat) beside `train.csv` / `val.csv` / `test.csv`
   (`filename,label` rows, Ravi & Larochelle). Its splits are class-disjoint (few-shot), so
   for classification all rows are pooled and `data.test_fraction` of each class is held out.
2. `train/` (`data.train_dir`) holding one subfolder per class, images anywhere below it
   (Tiny ImageNet's `train/<wnid>/images/` works), and the test split from:
   - `data.test_fraction`: a seeded, per-class fraction of train/ (test_dir is not read), or
   - `val/` (`data.test_dir`): class subfolders (ImageNet after `cnnlab data
     prepare-imagenet-val`), or Tiny ImageNet's `val/images/` + `val/val_annotations.txt`,
     read as it is.
3. `root` itself holding class subfolders, with `data.test_fraction` set.

Classes are the train class folders' names in sorted order (label k = k-th name). An image is
a file whose extension Pillow registers (.jpg, .jpeg, .png, .bmp, .gif, .tif, .webp, ...);
hidden files (.DS_Store, ._x.jpg) are skipped. A class folder with no images is an error.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cnnlab.config import DataConfig
from cnnlab.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# One channel: the average of ImageNet's channel statistics.
IMAGENET_GRAY_MEAN = (0.449,)
IMAGENET_GRAY_STD = (0.226,)
CSV_SPLITS = ("train.csv", "val.csv", "test.csv")


@dataclass
class Samples:
    """A list of image files with int64 labels (class indices)."""

    paths: list[str]
    labels: np.ndarray

    def __len__(self) -> int:
        """Return the number of images."""
        return len(self.paths)

    def subset(self, index: np.ndarray) -> Samples:
        """Return the samples at positions `index` (in that order)."""
        return Samples([self.paths[i] for i in index], self.labels[index])


@dataclass
class FolderSplits:
    """The train and test samples of an image folder, its class names and how it was laid out."""

    train: Samples
    test: Samples
    classes: tuple[str, ...]
    layout: str


def image_extensions() -> tuple[str, ...]:
    """Return the file extensions Pillow can open (lower case, with the dot), sorted."""
    from PIL import Image

    return tuple(sorted(Image.registered_extensions()))


def _is_image(name: str, extensions: frozenset[str]) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in extensions


def _images_below(folder: Path, extensions: frozenset[str]) -> list[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f, extensions)]
    return found


def _class_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise UserError(
            f"{folder}: holds no class subfolders; expected {folder}/<class name>/<image files>"
        )
    return dirs


def scan_class_folders(
    folder: Path, classes: tuple[str, ...] | None = None
) -> tuple[tuple[str, ...], Samples]:
    """Return the class names and samples of a class-per-subfolder tree.

    With `classes` given (a test split), each subfolder must be one of them and keeps that
    class's label; otherwise the sorted subfolder names become the classes.
    """
    extensions = frozenset(image_extensions())
    dirs = _class_dirs(folder)
    names = tuple(d.name for d in dirs)
    if classes is None:
        classes = names
    index = {c: k for k, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    for d in dirs:
        if d.name not in index:
            raise UserError(
                f"{d}: class '{d.name}' is not among the {len(classes)} training classes"
            )
        found = _images_below(d, extensions)
        if not found:
            raise UserError(
                f"{d}: class folder holds no images (looked for .jpg, .jpeg, .png, .bmp, "
                ".webp or another format Pillow reads); remove the folder or add its images"
            )
        paths += found
        labels += [index[d.name]] * len(found)
    return classes, Samples(paths, np.asarray(labels, dtype=np.int64))


def read_tiny_imagenet_val(folder: Path, classes: tuple[str, ...]) -> Samples:
    """Read Tiny ImageNet's val/: images/<file> labelled by val_annotations.txt (tab-separated
    file, wnid, box)."""
    notes = folder / "val_annotations.txt"
    index = {c: k for k, c in enumerate(classes)}
    paths, labels = [], []
    for number, line in enumerate(notes.read_text().splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2:
            raise UserError(f"{notes}:{number}: expected 'file<TAB>wnid<TAB>...', got {line!r}")
        name, wnid = fields[0].strip(), fields[1].strip()
        if wnid not in index:
            raise UserError(f"{notes}:{number}: class '{wnid}' is not a training class")
        path = folder / "images" / name
        if not path.is_file():
            raise UserError(f"{notes}:{number}: {path} does not exist")
        paths.append(str(path))
        labels.append(index[wnid])
    if not paths:
        raise UserError(f"{notes}: lists no images")
    return Samples(paths, np.asarray(labels, dtype=np.int64))


def read_csv_split(root: Path) -> tuple[tuple[str, ...], Samples]:
    """Read a Mini-ImageNet CSV layout: images/ plus train/val/test.csv rows `filename,label`;
    the rows of every CSV present are pooled (classes sorted by label)."""
    rows: list[tuple[str, str]] = []
    for name in CSV_SPLITS:
        path = root / name
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            for number, row in enumerate(csv.reader(f), 1):
                if not row or (number == 1 and [c.strip() for c in row] == ["filename", "label"]):
                    continue
                if len(row) != 2:
                    raise UserError(f"{path}:{number}: expected 'filename,label', got {row}")
                rows.append((row[0].strip(), row[1].strip()))
    if not rows:
        raise UserError(f"{root}: its CSV files ({', '.join(CSV_SPLITS)}) list no images")
    classes = tuple(sorted({label for _, label in rows}))
    index = {c: k for k, c in enumerate(classes)}
    paths = [str(root / "images" / f) for f, _ in rows]
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise UserError(f"{missing[0]}: listed in {root}'s CSV files but missing "
                        f"({len(missing)} such files)")  # fmt: skip
    labels = np.asarray([index[label] for _, label in rows], dtype=np.int64)
    return classes, Samples(paths, labels)


def stratified_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Return (keep, held) positions: a seeded `fraction` of each class held out (at least one
    image of every class with two or more), both sorted."""
    rng = np.random.default_rng([seed % 2**64, 2])
    keep, held = [], []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        members = members[rng.permutation(len(members))]
        count = round(fraction * len(members))
        count = min(max(count, 1 if len(members) > 1 else 0), len(members) - 1)
        held.append(members[:count])
        keep.append(members[count:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def _split_off_test(
    classes: tuple[str, ...], samples: Samples, cfg: DataConfig, layout: str
) -> FolderSplits:
    keep, held = stratified_split(samples.labels, cfg.test_fraction, cfg.split_seed)
    layout += f"; test split: {cfg.test_fraction:g} of each class (seed {cfg.split_seed})"
    return FolderSplits(samples.subset(keep), samples.subset(held), classes, layout)


def load_folder_splits(cfg: DataConfig) -> FolderSplits:
    """Find the train and test images of the image folder `cfg.root` (see the module doc)."""
    if not cfg.root:
        raise UserError(
            f"data.name={cfg.name} reads an image folder: set data.root=DIR "
            "(ImageNet: DIR/train/<wnid>/ and DIR/val/<wnid>/; Mini-ImageNet: DIR/images/ "
            "beside DIR/train.csv, val.csv, test.csv)"
        )
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"data.root: {root} is not a folder")
    if (root / "images").is_dir() and any((root / n).is_file() for n in CSV_SPLITS):
        if cfg.test_fraction is None:
            raise UserError(
                f"{root} is a Mini-ImageNet CSV split (images/ + CSV files) whose splits share no "
                "class; set data.test_fraction (e.g. 0.1667 = 100 of 600 per class) to hold out "
                "part of every class as the test split"
            )
        classes, samples = read_csv_split(root)
        return _split_off_test(classes, samples, cfg, f"{root}: Mini-ImageNet CSV split")
    train_dir = root / cfg.train_dir
    if not train_dir.is_dir():
        if cfg.test_fraction is None:
            raise UserError(
                f"{root} has no {cfg.train_dir}/ folder: arrange {cfg.train_dir}/<class>/ and "
                f"{cfg.test_dir}/<class>/, or set data.test_fraction to split the class "
                f"folders of {root} itself"
            )
        classes, samples = scan_class_folders(root)
        return _split_off_test(classes, samples, cfg, f"{root}: class folders")
    classes, train = scan_class_folders(train_dir)
    if cfg.test_fraction is not None:
        return _split_off_test(classes, train, cfg, f"{train_dir}: class folders")
    test_dir = root / cfg.test_dir
    if (test_dir / "val_annotations.txt").is_file() and (test_dir / "images").is_dir():
        test = read_tiny_imagenet_val(test_dir, classes)
        layout = f"{train_dir}: class folders; {test_dir}: Tiny ImageNet annotations"
    elif test_dir.is_dir():
        _, test = scan_class_folders(test_dir, classes)
        layout = f"{train_dir} and {test_dir}: class folders"
    else:
        raise UserError(
            f"{root} has no {cfg.test_dir}/ folder for the test split: add "
            f"{cfg.test_dir}/<class>/ (data.test_dir names another folder) or set "
            "data.test_fraction to hold out part of the training images"
        )
    return FolderSplits(train, test, classes, layout)


def folder_size(cfg: DataConfig) -> int:
    """Return how many training images the folder holds (before val_size and train_limit)."""
    return len(load_folder_splits(cfg).train)
