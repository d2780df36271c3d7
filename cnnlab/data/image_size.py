"""`data.image_size: auto` for image folders: the images' own size when they share one.

A folder of 32x32 PNGs trained at ImageNet's 224 costs ~50x the compute for no gain, so the
default looks at the images first. Only headers are read (Pillow opens lazily), for an evenly
spaced sample of the training files: an image of another size that the sample missed is still
resized by the loader like any other, so sampling can make a run slower, never wrong.
"""

from __future__ import annotations

from cnnlab.data.folder import Samples

DEFAULT_IMAGE_SIZE = 224  # ImageNet's training crop, for folders of mixed sizes
SAMPLE = 256  # headers read to decide


def auto_image_size(samples: Samples) -> tuple[int, str]:
    """Return the size to train at and why: the common size of the sampled images when they
    are all the same square size, else 224."""
    from PIL import Image, UnidentifiedImageError

    n = len(samples)
    if n == 0:
        return DEFAULT_IMAGE_SIZE, "no training images to look at"
    step = max(1, n // SAMPLE)
    sizes = set()
    for path in samples.paths[::step][:SAMPLE]:
        try:
            with Image.open(path) as image:
                sizes.add(image.size)
        except (OSError, UnidentifiedImageError, ValueError):
            continue  # unreadable files are the loader's to report
        if len(sizes) > 1:
            break
    looked = min(n, SAMPLE)
    if len(sizes) == 1:
        ((w, h),) = sizes
        if w == h and w >= 8:
            return w, f"all {looked} sampled training images are {w}x{h}"
        return DEFAULT_IMAGE_SIZE, f"the images are {w}x{h}, not square: {DEFAULT_IMAGE_SIZE}"
    if not sizes:
        return DEFAULT_IMAGE_SIZE, "no sampled image could be read"
    return DEFAULT_IMAGE_SIZE, f"the images differ in size: {DEFAULT_IMAGE_SIZE}"
