"""Images/s of the image-folder loader: decode + crop in DataLoader workers, then the batched
device-side steps (flip, normalise), with no model. Generates its own folder of JPEGs first.

    python benchmarks/folder_throughput.py [--images 1000] [--workers 1 2 4] [--size 224]
        [--width 500 --height 375] [--keep DIR] [--set data.lighting_std=0.1 ...]

One line per worker count, on the same generated folder.

The default photos are 500x375, the typical ImageNet size; they are noise plus gradients, so
they compress like photos rather than like flat colour.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from cnnlab.config import load_config
from cnnlab.data.pipeline import build_data


def make_folder(root: Path, images: int, width: int, height: int, classes: int = 10) -> None:
    """Write `images` JPEGs spread over `classes` class folders of train/ and a copy in val/."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, width)[None, :, None] * np.ones((height, 1, 3))
    for split in ("train", "val"):
        for k in range(classes):
            (root / split / f"class{k:02d}").mkdir(parents=True, exist_ok=True)
    for i in range(images):
        noise = rng.normal(0, 40, size=(-(-height // 4), -(-width // 4), 3))
        noise = noise.repeat(4, 0).repeat(4, 1)[:height, :width]
        pixels = np.clip(ramp * rng.uniform(0.3, 1.0) + noise, 0, 255).astype(np.uint8)
        path = root / "train" / f"class{i % classes:02d}" / f"img{i:06d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        if i < images // 5:
            os.link(path, root / "val" / path.parent.name / path.name)


def rate(loader: object, epochs: int = 2) -> float:
    """Images/s over `epochs` epochs after one warm-up epoch (worker start-up excluded)."""
    for _ in loader.epoch(0):
        pass
    seen, start = 0, time.perf_counter()
    for e in range(1, epochs + 1):
        for batch in loader.epoch(e):
            seen += len(batch.labels)
    return seen / (time.perf_counter() - start)


def cpu_rate(dataset: object, count: int = 200) -> float:
    """Images decoded and cropped per CPU-second of this process (one core's capacity, which
    other jobs on a shared machine do not lower the way they lower wall-clock rates)."""
    start = time.process_time()
    for i in range(count):
        dataset[(i % len(dataset), 1)]
    return count / (time.process_time() - start)


def main() -> None:
    """Generate the folder and print train and eval images/s."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--workers", type=int, nargs="+", default=[2])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--width", type=int, default=500)
    ap.add_argument("--height", type=int, default=375)
    ap.add_argument("--keep", type=Path, help="generate into (or reuse) this folder")
    ap.add_argument("--set", nargs="*", default=[], help="config overrides, e.g. a recipe's view")
    args = ap.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        if not (root / "train").is_dir():
            start = time.perf_counter()
            make_folder(root, args.images, args.width, args.height)
            print(f"generated {args.images} {args.width}x{args.height} JPEGs in "
                  f"{time.perf_counter() - start:.0f}s")  # fmt: skip
        for workers in args.workers:
            cfg = load_config(None, [
                "data.name=folder", f"data.root={root}", f"data.image_size={args.size}",
                f"data.workers={workers}", "train.batch_size=64", "train.eval_batch_size=64",
                *args.set,
            ])  # fmt: skip
            data = build_data(cfg, torch.device("cpu"))
            if workers == args.workers[0]:
                train, test = cpu_rate(data.train.dataset), cpu_rate(data.test.dataset)
                print(f"per core: train view {train:.0f}, eval view {test:.0f} images per "
                      "CPU-second", flush=True)  # fmt: skip
            train, test = rate(data.train), rate(data.test)
            print(f"workers={workers} size={args.size}: train (random resized crop + flip) "
                  f"{train:.0f} images/s, eval (resize {round(args.size / 0.875)} + centre "
                  f"crop) {test:.0f} images/s", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
