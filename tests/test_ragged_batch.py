"""train.drop_last=false: the last, smaller batch of each epoch is trained on too (a PyTorch
DataLoader's default, which ReCU's CIFAR loader keeps: 196 steps of 256 and 80 images)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.config import AugmentConfig, TrainConfig, load_config
from cnnlab.data.loader import InMemoryLoader
from cnnlab.data.pipeline import make_loaders
from cnnlab.errors import UserError


def _loader(drop_last: bool) -> InMemoryLoader:
    images = torch.zeros(10, 4, 4, 1, dtype=torch.uint8)
    labels = torch.arange(10)  # each image's label is its index
    return InMemoryLoader(images, labels, (0.5,), (0.25,), 4, torch.device("cpu"), train=True,
                          drop_last=drop_last)  # fmt: skip


def test_every_image_is_trained_on_once_per_epoch_with_the_ragged_batch_last():
    batches = list(_loader(drop_last=False).epoch(1))
    assert [len(b.labels) for b in batches] == [4, 4, 2] and len(_loader(False)) == 3
    assert sorted(torch.cat([b.labels for b in batches]).tolist()) == list(range(10))
    # The default drops it: two full batches, the same first eight images in the same order.
    dropped = list(_loader(drop_last=True).epoch(1))
    assert [len(b.labels) for b in dropped] == [4, 4] and len(_loader(True)) == 2
    assert torch.equal(
        torch.cat([b.labels for b in dropped]), torch.cat([b.labels for b in batches[:2]])
    )


def test_a_run_takes_the_ragged_step_and_counts_its_images():
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (10, 4, 4, 1), generator=g, dtype=torch.uint8)
    labels = torch.randint(0, 2, (10,), generator=g)
    data = cnnlab.datasets.from_tensors(images, labels, images, labels, mean=[0.5], std=[0.25])
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 2))
    with torch.no_grad():  # predicts class 0 for every image, throughout (lr ~ 0)
        model[1].weight.zero_()
        model[1].bias.copy_(torch.tensor([10.0, 0.0]))
    settings = dict(device="cpu", precision="fp32", channels_last=False, optim={"lr": 1e-12})
    trainer = cnnlab.Trainer(model, data, epochs=2, batch_size=4, drop_last=False, **settings)
    summary = trainer.fit()
    assert summary["steps"] == 6
    # The training error is over the 10 images seen (not 3 x 4).
    expected = 100.0 * (1 - (labels == 0).sum().item() / 10)
    assert [row["train_error"] for row in trainer.history] == pytest.approx([expected] * 2)


def test_the_ragged_batch_is_refused_where_it_cannot_work():
    with pytest.raises(UserError, match=r"train\.drop_last=false works on in-memory datasets only"):
        load_config(None, ["data.name=folder", "data.root=/nowhere", "train.drop_last=false"])
    images = torch.zeros(10, 4, 4, 1, dtype=torch.uint8)
    data = cnnlab.datasets.from_tensors(images, torch.arange(10) % 2, images, torch.arange(10) % 2,
                                        mean=[0.5], std=[0.25])  # fmt: skip
    train = TrainConfig(batch_size=4, drop_last=False)
    with pytest.raises(
        UserError, match="one process only: a ragged last batch does not split over 2"
    ):
        make_loaders(data, train, AugmentConfig(), torch.device("cpu"), rank=0, world=2)
