"""Opening one image file safely: empty files, decompression bombs, 16-bit and float pixels.

Pillow reads most odd files fine (CMYK JPEGs, palette PNGs with transparency, RGBA), and
`convert` turns them into RGB or L. Three cases need care before that:
- an empty file: Pillow's "cannot identify image file" hides the plain cause;
- a decompression bomb, a small file declaring a huge image: Pillow refuses those over twice
  Image.MAX_IMAGE_PIXELS (89.5 M pixels) but between 1x and 2x it only warns, then decodes
  (100 M pixels took 2.6 s and 700 MB here); cnnlab refuses from 1x;
- 16-bit grayscale (mode I;16 or I): Pillow's convert to L or RGB clips every value above 255,
  so a 16-bit photo becomes a white square; cnnlab keeps the top 8 bits instead;
- float images (mode F, e.g. TIFF): taken to lie in [0, 1] and scaled to 0..255.
Training (data/folder_loader.py) and `cnnlab predict` both decode through here, so a file
gives the model the same pixels in both.
"""

from __future__ import annotations

import os
import warnings

import numpy as np
from PIL import Image

SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def open_image(path: str) -> Image.Image:
    """Open `path` with Pillow (lazily); raise ValueError for an empty file or a bomb."""
    if os.path.getsize(path) == 0:
        raise ValueError("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
            raise ValueError(f"refused as a possible decompression bomb: {exc}") from None


def to_eight_bit(image: Image.Image) -> Image.Image:
    """Return a 16-bit (top 8 bits) or float ([0, 1] scaled) gray `image` as 8-bit L; other
    modes unchanged."""
    if image.mode == "F":
        pixels = np.rint(np.clip(np.asarray(image, dtype=np.float64), 0.0, 1.0) * 255)
    elif image.mode in SIXTEEN_BIT:
        pixels = np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8
    else:
        return image
    return Image.fromarray(pixels.astype(np.uint8), mode="L")
