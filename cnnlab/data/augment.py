"""Batched augmentation on the training device: whole batches, no per-image Python.

Pixel-level ops (pad-crop, flip, PatchShuffle) work on uint8 NHWC images; one fused op then
converts to normalised float in NCHW shape with channels_last strides (the layout
convolutions prefer on CPU and GPU); Cutout and Random Erasing work on that normalised
float, so a fill of 0 is the dataset mean. Every random draw comes from the generator passed
in, which the loader makes per epoch, so a resumed run draws the same augmentations.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from cnnlab.config import AugmentConfig
from cnnlab.errors import UserError


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    # Positions -1, -2 .. map to 1, 2 ..; size, size + 1 .. to size - 2, size - 3 .. (the edge
    # is not repeated, as torch's 'reflect' padding).
    index = index.abs()
    return torch.where(index > size - 1, 2 * (size - 1) - index, index)


def crop_flip(
    images: torch.Tensor,
    padding: int,
    flip: bool,
    generator: torch.Generator,
    reflect: bool = False,
    mirrored: torch.Tensor | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """Randomly crop each uint8 NHWC image from its padded copy (zeros, or the image reflected
    with `reflect`) and flip half of them (or those `mirrored` names, when given).

    The crop is `size` x `size` (None: the image's own size) and its top-left corner is uniform
    over the padded image's positions where it fits (as a pad-then-random-crop does: offsets
    0..2*padding for a crop of the image's size). A crop larger than the image is what
    torchvision's RandomCrop(32, padding=4) does to a 28x28 image. A flip mirrors the crop's
    columns, so both happen in a single gather with no per-image Python.
    """
    n, h, w, _ = images.shape
    dev = images.device
    out_h, out_w = (h, w) if size is None else (size, size)
    if padding == 0 and not flip and (out_h, out_w) == (h, w):
        return images
    if padding and not reflect:
        images = torch.nn.functional.pad(images, (0, 0, padding, padding, padding, padding))
    dy = torch.randint(h + 2 * padding - out_h + 1, (n,), generator=generator, device=dev)
    dx = torch.randint(w + 2 * padding - out_w + 1, (n,), generator=generator, device=dev)
    rows = dy[:, None] + torch.arange(out_h, device=dev)
    cols = torch.arange(out_w, device=dev).expand(n, out_w)
    if flip:
        if mirrored is None:
            mirrored = torch.rand(n, generator=generator, device=dev) < 0.5
        cols = torch.where(mirrored[:, None], cols.flip(1), cols)
    cols = dx[:, None] + cols
    if reflect:  # index the unpadded image: offset back, reflect what falls outside
        rows, cols = _reflect(rows - padding, h), _reflect(cols - padding, w)
    batch = torch.arange(n, device=dev)[:, None, None]
    return images[batch, rows[:, :, None], cols[:, None, :]]


def check_crop(
    size: int | None, padding: int, image_size: tuple[int, int], size_key: str, padding_key: str
) -> None:
    """Refuse a crop of `size` that does not fit the `image_size` image padded by `padding`."""
    if size is not None and size > min(image_size) + 2 * padding:
        raise UserError(
            f"{size_key}={size} does not fit the {image_size[0]}x{image_size[1]} images padded "
            f"by {padding_key}={padding} (at most {min(image_size) + 2 * padding})"
        )


def random_view(
    images: torch.Tensor, size: int | None, padding: int, flip: bool, seed: int
) -> torch.Tensor:
    """Return one random view of each uint8 NHWC image (a `size` crop of the zero-padded image,
    mirrored with p 1/2 under `flip`), drawn from a generator of its own seeded by `seed`: the
    same views for every evaluation of a run, on any device and any number of processes."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + 271_829) % (2**63))
    return crop_flip(images.cpu(), padding, flip, gen, size=size)


def patch_shuffle(
    images: torch.Tensor, size: int, prob: float, generator: torch.Generator
) -> torch.Tensor:
    """PatchShuffle: in each chosen NHWC image, permute the pixels inside every size x size patch.

    Each image is chosen with probability `prob`; each non-overlapping patch gets its own
    random permutation (a pixel moves with all its channels). Rows and columns beyond the last
    whole patch are left as they are.
    """
    n, h, w, c = images.shape
    dev = images.device
    gh, gw, k2 = h // size, w // size, size * size
    core = images[:, : gh * size, : gw * size]
    patches = core.reshape(n, gh, size, gw, size, c).permute(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(n, gh, gw, k2, c)
    keys = torch.rand(n, gh, gw, k2, generator=generator, device=dev)
    chosen = torch.rand(n, generator=generator, device=dev) < prob
    # Sorting random keys gives a uniform permutation; unchosen images sort 0..k2-1 = identity.
    keys = torch.where(chosen[:, None, None, None], keys, torch.arange(k2, device=dev) + 1.0)
    order = keys.argsort(dim=-1)
    shuffled = patches.gather(3, order[..., None].expand(-1, -1, -1, -1, c))
    shuffled = shuffled.reshape(n, gh, gw, size, size, c).permute(0, 1, 3, 2, 4, 5)
    out = images.clone()
    out[:, : gh * size, : gw * size] = shuffled.reshape(n, gh * size, gw * size, c)
    return out


def to_model_input(
    images: torch.Tensor, mean: torch.Tensor, inv_std: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """Turn uint8 NHWC images into normalised NCHW float (channels_last strides)."""
    x = images.to(dtype).mul_(1.0 / 255.0).sub_(mean).mul_(inv_std)
    return x.permute(0, 3, 1, 2)


def _box_mask(
    top: torch.Tensor, left: torch.Tensor, height: torch.Tensor, width: torch.Tensor, h: int, w: int
) -> torch.Tensor:
    """Return (N, H, W) masks of the boxes [top, top+height) x [left, left+width), clipped."""
    rows = torch.arange(h, device=top.device)
    cols = torch.arange(w, device=top.device)
    in_rows = (rows >= top[:, None]) & (rows < (top + height)[:, None])
    in_cols = (cols >= left[:, None]) & (cols < (left + width)[:, None])
    return in_rows[:, :, None] & in_cols[:, None, :]


def cutout(x: torch.Tensor, size: int, prob: float, generator: torch.Generator) -> torch.Tensor:
    """Cutout: zero a size x size square in each chosen NCHW image, the rule of
    hysts/pytorch_image_classification@da2bdcf transforms.py:30-62 (cutout_inside off).

    The centre is uniform over [0, H + o) x [0, W + o) with o = 1 for even sizes (0 for odd),
    the square spans centre - size//2 .. + size, and it is clipped at the borders, so it may
    lie partly outside. Applied to normalised images, 0 is the dataset mean. In place.
    """
    n, _, h, w = x.shape
    dev = x.device
    offset = 1 - size % 2
    cy = torch.randint(h + offset, (n,), generator=generator, device=dev)
    cx = torch.randint(w + offset, (n,), generator=generator, device=dev)
    chosen = torch.rand(n, generator=generator, device=dev) < prob
    side = torch.full((n,), size, device=dev)
    mask = _box_mask(cy - size // 2, cx - size // 2, side, side, h, w) & chosen[:, None, None]
    return x.masked_fill_(mask[:, None], 0.0)


def random_erasing(
    x: torch.Tensor,
    prob: float,
    area: tuple[float, float],
    min_aspect: float,
    attempts: int,
    fill: torch.Tensor | None,
    generator: torch.Generator,
) -> torch.Tensor:
    """Random Erasing: fill a random rectangle of each chosen NCHW image.

    Per attempt (all drawn at once) the area is U(area) of the image and the aspect h/w is
    U(min_aspect, 1/min_aspect); sides are truncated to int; the first attempt that fits
    (h < H and w < W) is used and its top-left corner is uniform where it fits (hysts' rule).
    `fill` is a per-channel value, or None for one U(0, 1) scalar per image (hysts).
    """
    n, c, h, w = x.shape
    dev = x.device
    u = torch.rand(n, attempts, 2, generator=generator, device=dev)
    target = (area[0] + (area[1] - area[0]) * u[..., 0]) * (h * w)
    aspect = min_aspect + (1 / min_aspect - min_aspect) * u[..., 1]
    eh = (target * aspect).sqrt().long()
    ew = (target / aspect).sqrt().long()
    fits = (eh < h) & (ew < w)
    first = fits.int().argmax(dim=1, keepdim=True)  # argmax returns the first fitting attempt
    eh, ew = eh.gather(1, first)[:, 0], ew.gather(1, first)[:, 0]
    corner = torch.rand(n, 2, generator=generator, device=dev)
    top = (corner[:, 0] * (h - eh)).long()
    left = (corner[:, 1] * (w - ew)).long()
    chosen = (torch.rand(n, generator=generator, device=dev) < prob) & fits.any(dim=1)
    mask = (_box_mask(top, left, eh, ew, h, w) & chosen[:, None, None])[:, None]
    if fill is None:
        value = torch.rand(n, 1, 1, 1, generator=generator, device=dev, dtype=x.dtype)
    else:
        value = fill.to(device=dev, dtype=x.dtype).view(1, c, 1, 1)
    return torch.where(mask, value, x)


def alternating_flips(n: int, seed: int, epoch: int, device: torch.device) -> torch.Tensor:
    """Return which of `n` images epoch `epoch` mirrors under alternating flip (airbench94): a
    fixed random half, drawn once from `seed`, in odd epochs, and the other half in even ones,
    so every image is seen both ways every two epochs."""
    gen = torch.Generator(device=device).manual_seed((seed * 1_000_003 + 424_243) % (2**63))
    fixed = torch.rand(n, generator=gen, device=device) < 0.5
    return fixed if epoch % 2 == 1 else ~fixed


@functools.lru_cache(maxsize=8)
def _fill_tensor(fill: tuple[float, ...], device: torch.device) -> torch.Tensor:
    # Built and copied to the device once, not at every step (a host-to-device copy each).
    return torch.tensor(fill, device=device)


@dataclass(frozen=True)
class BatchAugment:
    """The per-image augmentations of a training batch, in order; each off at its default.

    Order: crop+flip, PatchShuffle (uint8 pixels), normalise, Cutout, Random Erasing. With
    `mean_fill` the crop+flip runs on the normalised float instead, so what it pads is 0.
    `erase_fill` None draws one U(0, 1) scalar per image; otherwise it is a per-channel fill.
    """

    crop_padding: int = 0
    crop_size: int | None = None
    reflect: bool = False
    mean_fill: bool = False
    flip: bool = False
    flip_alternating: bool = False
    patch_shuffle_prob: float = 0.0
    patch_shuffle_size: int = 2
    cutout_size: int = 0
    cutout_prob: float = 1.0
    erase_prob: float = 0.0
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_min_aspect: float = 0.3
    erase_attempts: int = 20
    erase_fill: tuple[float, ...] | None = None

    @classmethod
    def from_config(
        cls, cfg: AugmentConfig, mean: tuple[float, ...], image_size: tuple[int, int]
    ) -> BatchAugment:
        """Build from `augment.*`; 'mean' erasing fills with the dataset's per-channel mean."""
        if cfg.patch_shuffle_prob and cfg.patch_shuffle_size > min(image_size):
            raise UserError(
                f"augment.patch_shuffle_size={cfg.patch_shuffle_size} is larger than the "
                f"{image_size[0]}x{image_size[1]} images"
            )
        check_crop(cfg.crop_size, cfg.crop_padding, image_size, "augment.crop_size",
                   "augment.crop_padding")  # fmt: skip
        if cfg.padding_mode == "reflect" and cfg.crop_padding >= min(image_size):
            raise UserError(
                f"augment.padding_mode=reflect needs augment.crop_padding < {min(image_size)} "
                f"(the image's side), got {cfg.crop_padding}"
            )
        if cfg.padding_mode == "mean" and cfg.patch_shuffle_prob:
            raise UserError(
                "augment.padding_mode=mean crops after normalising, PatchShuffle before: "
                "use padding_mode=zeros with augment.patch_shuffle_prob"
            )
        # The official Random Erasing code writes the [0, 1]-scale mean into the *normalised*
        # image; "mean" reproduces that (it is not 0 = the mean after normalisation).
        fill = tuple(mean) if cfg.erase_fill == "mean" else None
        return cls(
            crop_padding=cfg.crop_padding,
            crop_size=cfg.crop_size,
            reflect=cfg.padding_mode == "reflect",
            mean_fill=cfg.padding_mode == "mean",
            flip=cfg.flip,
            flip_alternating=cfg.flip and cfg.flip_mode == "alternating",
            # A stage mask whose first flag (the input image) is off leaves the images alone.
            patch_shuffle_prob=cfg.patch_shuffle_prob * (cfg.patch_shuffle_stages or [True])[0],
            patch_shuffle_size=cfg.patch_shuffle_size,
            cutout_size=cfg.cutout_size,
            cutout_prob=cfg.cutout_prob,
            erase_prob=cfg.erase_prob,
            erase_area=cfg.erase_area,
            erase_min_aspect=cfg.erase_min_aspect,
            erase_attempts=cfg.erase_attempts,
            erase_fill=fill,
        )

    def pixels(
        self,
        images: torch.Tensor,
        generator: torch.Generator,
        mirrored: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply the uint8 NHWC ops (crop, flip, PatchShuffle); `mirrored`, when given, names
        the images to flip (alternating flip) instead of a random half. With `mean_fill` the
        crop and flip wait for `normalised`."""
        if not self.mean_fill:
            images = crop_flip(images, self.crop_padding, self.flip, generator, self.reflect,
                               mirrored, self.crop_size)  # fmt: skip
        if self.patch_shuffle_prob:
            images = patch_shuffle(
                images, self.patch_shuffle_size, self.patch_shuffle_prob, generator
            )
        return images

    def normalised(
        self,
        x: torch.Tensor,
        generator: torch.Generator,
        mirrored: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Apply the ops on normalised NCHW float (with `mean_fill` crop+flip, then Cutout,
        Random Erasing)."""
        if self.mean_fill:  # NCHW with channels_last strides: its NHWC view is contiguous
            nhwc = crop_flip(x.permute(0, 2, 3, 1), self.crop_padding, self.flip, generator,
                             mirrored=mirrored, size=self.crop_size)  # fmt: skip
            x = nhwc.permute(0, 3, 1, 2)
        if self.cutout_size and self.cutout_prob:
            x = cutout(x, self.cutout_size, self.cutout_prob, generator)
        if self.erase_prob:
            fill = _fill_tensor(self.erase_fill, x.device) if self.erase_fill is not None else None
            x = random_erasing(
                x, self.erase_prob, self.erase_area, self.erase_min_aspect,
                self.erase_attempts, fill, generator,
            )  # fmt: skip
        return x
