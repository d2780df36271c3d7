"""A small image folder of real JPEG and PNG files: colour-coded classes, odd sizes, one
grayscale image and (optionally) one corrupt file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Each class is a dominant colour, so a tiny network separates them within a few epochs.
COLOURS = {"blue": (40, 60, 200), "green": (40, 180, 60), "red": (210, 50, 40)}
CORRUPT = "broken.jpg"


def _picture(colour: tuple[int, int, int], rng: np.random.Generator) -> Image.Image:
    w, h = (int(v) for v in rng.integers(21, 97, size=2))  # odd, uneven sizes
    base = np.array(colour, dtype=np.float32)
    pixels = base + rng.normal(0, 35, size=(h, w, 3))
    # A darker band at a random place, so the images are not flat colour fields.
    top = int(rng.integers(0, h // 2))
    pixels[top : top + h // 4] *= 0.5
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def make_image_folder(
    root: Path,
    per_class: int = 16,
    val_per_class: int = 5,
    corrupt: bool = True,
    seed: int = 0,
) -> Path:
    """Write root/train/<class>/ and root/val/<class>/ (alternating .jpg and .png); return root."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        for name, colour in COLOURS.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                image = _picture(colour, rng)
                if i % 2:
                    image.save(folder / f"{name}_{i:03d}.png")
                else:
                    image.save(folder / f"{name}_{i:03d}.jpg", quality=90)
    gray = _picture(COLOURS["green"], rng).convert("L")
    gray.save(root / "train" / "green" / "green_gray.jpg")
    if corrupt:
        (root / "train" / "red" / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root


def make_imagenet_folder(root: Path, per_class: int = 4, val_per_class: int = 1) -> Path:
    """Write ILSVRC-2012's layout in miniature: root/train/<wnid>/<wnid>_<n>.JPEG and
    root/val/<wnid>/ILSVRC2012_val_<8 digits>.JPEG (the val folder as `cnnlab data
    prepare-imagenet-val` arranges it), three classes of small, odd-sized JPEGs; return root."""
    rng = np.random.default_rng(1)
    number = 0
    for wnid, colour in zip(("n01440764", "n01443537", "n01484850"), COLOURS.values()):
        for split, count in (("train", per_class), ("val", val_per_class)):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                number += 1
                name = (
                    f"{wnid}_{i}.JPEG" if split == "train" else f"ILSVRC2012_val_{number:08d}.JPEG"
                )
                _picture(colour, rng).save(folder / name, format="JPEG", quality=90)
    return root
