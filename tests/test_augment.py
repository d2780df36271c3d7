"""Batched crop and flip: the output equals a hand-made crop of the padded image."""

import pytest
import torch

from cnnlab.config import AugmentConfig
from cnnlab.data.augment import BatchAugment, crop_flip, to_model_input
from cnnlab.data.loader import InMemoryLoader
from cnnlab.errors import UserError


def _images(n=16, h=6, w=5, c=2):
    return torch.randint(1, 255, (n, h, w, c), dtype=torch.uint8)


def test_each_output_is_a_crop_of_the_zero_padded_image_maybe_mirrored():
    imgs, pad = _images(), 2
    out = crop_flip(imgs, pad, flip=True, generator=torch.Generator().manual_seed(3))
    padded = torch.nn.functional.pad(imgs, (0, 0, pad, pad, pad, pad))
    flips = 0
    for i in range(len(imgs)):
        crops = {
            (dy, dx, f)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for f in (False, True)
            if torch.equal(
                out[i],
                padded[i, dy : dy + 6, dx : dx + 5].flip(1)
                if f
                else padded[i, dy : dy + 6, dx : dx + 5],
            )
        }
        assert crops, f"image {i} is not a crop of its padded copy"
        flips += all(f for _, _, f in crops)
    assert 0 < flips < len(imgs)


def test_no_padding_no_flip_is_identity_and_seeded_is_repeatable():
    imgs = _images()
    assert torch.equal(crop_flip(imgs, 0, False, torch.Generator()), imgs)
    a = crop_flip(imgs, 4, True, torch.Generator().manual_seed(1))
    b = crop_flip(imgs, 4, True, torch.Generator().manual_seed(1))
    c = crop_flip(imgs, 4, True, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_normalisation_and_layout():
    imgs = torch.full((2, 3, 3, 3), 255, dtype=torch.uint8)
    mean, std = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.25, 0.5, 1.0])
    x = to_model_input(imgs, mean, 1 / std, torch.float32)
    assert x.shape == (2, 3, 3, 3)
    assert torch.allclose(x[0, :, 0, 0], torch.tensor([2.0, 1.0, 0.5]))
    assert x.is_contiguous(memory_format=torch.channels_last)


def test_loader_epochs_depend_only_on_seed_and_epoch():
    imgs, labels = _images(100, 8, 8, 1), torch.arange(100)
    kw = dict(mean=(0.5,), std=(0.5,), batch_size=32, device=torch.device("cpu"), train=True,
              augment=BatchAugment(crop_padding=2, flip=True), seed=7)  # fmt: skip
    a, b = InMemoryLoader(imgs, labels, **kw), InMemoryLoader(imgs, labels, **kw)
    assert len(a) == 3  # the ragged last batch is dropped when training
    e2a = [x.labels for x in a.epoch(2)]
    e2b = [x.labels for x in b.epoch(2)]
    e3 = [x.labels for x in a.epoch(3)]
    assert all(torch.equal(x, y) for x, y in zip(e2a, e2b))
    assert not all(torch.equal(x, y) for x, y in zip(e2a, e3))
    test = InMemoryLoader(imgs, labels, **{**kw, "train": False})
    assert torch.equal(torch.cat([x.labels for x in test.epoch(0)]), labels)


def test_reflect_padding_crops_torchs_reflect_padded_image():
    imgs, pad = _images(), 2
    out = crop_flip(imgs, pad, flip=False, generator=torch.Generator().manual_seed(3),
                    reflect=True)  # fmt: skip
    nchw = imgs.permute(0, 3, 1, 2).float()
    padded = torch.nn.functional.pad(nchw, (pad,) * 4, mode="reflect").permute(0, 2, 3, 1)
    for i in range(len(imgs)):
        assert any(
            torch.equal(out[i].float(), padded[i, dy : dy + 6, dx : dx + 5])
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
        ), f"image {i} is not a crop of its reflect-padded copy"
    # Reflection leaves no black border: every pixel comes from the image (all >= 1).
    assert out.min() >= 1


def test_alternating_flip_mirrors_each_image_in_every_other_epoch():
    n = 64
    # Every image is a ramp rising to the right (0 .. 4): a mirrored one falls. Labels name them.
    imgs = torch.arange(5, dtype=torch.uint8).view(1, 1, 5, 1).expand(n, 3, 5, 1)
    kw = dict(mean=(0.5,), std=(0.5,), batch_size=16, device=torch.device("cpu"), train=True,
              augment=BatchAugment(flip=True, flip_alternating=True), seed=7)  # fmt: skip
    loader = InMemoryLoader(imgs.contiguous(), torch.arange(n), **kw)

    def mirrored(epoch: int) -> torch.Tensor:
        flags = torch.zeros(n, dtype=torch.bool)
        for batch in loader.epoch(epoch):
            flags[batch.labels] = batch.images[:, 0, 0, 0] > batch.images[:, 0, 0, -1]
        return flags

    first, second, third = mirrored(1), mirrored(2), mirrored(3)
    assert 0 < first.sum() < n  # a random part of the set, not all or none
    assert torch.equal(second, ~first) and torch.equal(third, first)


def test_reflect_padding_wider_than_the_image_is_refused_in_one_line():
    cfg = AugmentConfig(crop_padding=8, padding_mode="reflect")
    with pytest.raises(UserError, match=r"crop_padding < 8 \(the image's side\), got 8"):
        BatchAugment.from_config(cfg, (0.5,), (8, 8))
    assert BatchAugment.from_config(cfg, (0.5,), (9, 9)).reflect


def test_mean_padding_fills_with_the_normalisation_mean_at_the_zero_padding_crop_positions():
    # gcr/torch-residual-networks@f0d0a17 data/cifar-dataset.lua:54-71 shifts already-normalised
    # images into a zeroed tensor: what the shift uncovers is 0, i.e. the mean, not black.
    imgs = _images(n=32, h=6, w=6, c=3)
    mean, inv_std = torch.tensor([0.4, 0.5, 0.6]), torch.tensor([4.0, 5.0, 2.0])

    def run(mode):
        aug = BatchAugment.from_config(
            AugmentConfig(crop_padding=3, flip=True, padding_mode=mode), (0.4, 0.5, 0.6), (6, 6)
        )
        gen = torch.Generator().manual_seed(7)
        raw = aug.pixels(imgs, gen)
        return aug.normalised(to_model_input(raw, mean, inv_std, torch.float32), gen)

    zeros, filled = run("zeros"), run("mean")
    black = (-mean * inv_std).view(1, 3, 1, 1).expand_as(zeros)
    uncovered = torch.isclose(zeros, black).all(dim=1, keepdim=True).expand_as(zeros)
    assert uncovered.any() and not uncovered.all()
    assert torch.equal(filled[uncovered], torch.zeros(int(uncovered.sum())))
    assert torch.allclose(filled[~uncovered], zeros[~uncovered])
    assert filled.is_contiguous(memory_format=torch.channels_last)


def test_mean_padding_with_patch_shuffle_is_refused_in_one_line():
    cfg = AugmentConfig(padding_mode="mean", patch_shuffle_prob=0.5)
    with pytest.raises(UserError, match="padding_mode=mean crops after normalising"):
        BatchAugment.from_config(cfg, (0.5,), (8, 8))


def test_sampling_with_replacement_draws_repeats_seeded_and_refuses_several_processes():
    # gcr/torch-residual-networks@f0d0a17 data/cifar-dataset.lua:83-92: each batch's indices
    # are (torch.rand(batch) * size):long() + 1, drawn with replacement.
    imgs, labels = _images(200, 4, 4, 1), torch.arange(200)
    kw = dict(mean=(0.5,), std=(0.5,), batch_size=50, device=torch.device("cpu"), train=True,
              seed=7, replacement=True)  # fmt: skip
    a, b = InMemoryLoader(imgs, labels, **kw), InMemoryLoader(imgs, labels, **kw)
    drawn = torch.cat([x.labels for x in a.epoch(1)])
    assert len(drawn) == 200 and len(set(drawn.tolist())) < 180  # e^-1 of them missed
    assert torch.equal(drawn, torch.cat([x.labels for x in b.epoch(1)]))
    assert torch.equal(drawn, a.epoch_indices(1))
    shuffled = InMemoryLoader(imgs, labels, **{**kw, "replacement": False})
    assert sorted(torch.cat([x.labels for x in shuffled.epoch(1)]).tolist()) == list(range(200))
    with pytest.raises(UserError, match="train.sampling=replacement runs in one process"):
        InMemoryLoader(imgs, labels, **{**kw, "world": 2})
