"""airbench94's net: its published size and layout, the whitening filters set from the training
images and frozen, and the GPU speedrun recipe trained end to end on a tiny CIFAR-shaped set."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.analysis.profile import count_params
from cnnlab.config import RECIPES_DIR
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.models.airbench import WHITEN_EPS, whitening_filters
from cnnlab.registry import build_model

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SPEEDRUN = RECIPES_DIR / "cifar10" / "speedrun_gpu.yaml"


def test_parameter_count_is_airbench94s():
    model = build_model("airbench94")
    # By hand from airbench94.py's make_net: whitening 24x3x2x2 + 24 bias; per group conv1,
    # conv2 and two BNs (scale + shift); linear 256x10.
    whiten = 24 * 3 * 4 + 24
    groups = sum(9 * i * o + 9 * o * o + 4 * o for i, o in [(24, 64), (64, 256), (256, 256)])
    assert whiten + groups + 256 * 10 == 1_972_792 == sum(p.numel() for p in model.parameters())
    # Trained: all but the whitening weights (288) and the BN scales (2 x (64 + 256 + 256)).
    assert count_params(model) == 1_972_792 - 288 - 1152 == 1_971_352


def test_layout_and_batchnorm_settings():
    model = build_model("airbench94")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [bn.num_features for bn in bns] == [64, 64, 256, 256, 256, 256]
    assert all(bn.eps == 1e-12 and bn.momentum == pytest.approx(0.4) for bn in bns)
    assert all(not bn.weight.requires_grad and bn.bias.requires_grad for bn in bns)
    assert sum(isinstance(m, nn.GELU) for m in model.modules()) == 7
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs[0].kernel_size == (2, 2) and convs[0].padding == (0, 0)
    assert convs[0].bias is not None and all(c.bias is None for c in convs[1:])
    assert not convs[0].weight.requires_grad
    # Identity-initialised 3x3 convs: the first in_channels filters are a centred delta.
    w = convs[2].weight  # 64 -> 64
    assert torch.equal(w[:, :, 1, 1], torch.eye(64)) and w[:, :, 0].abs().sum() == 0
    assert model.fc.bias is None and model.logit_scale == pytest.approx(1 / 9)
    x = torch.randn(3, 3, 32, 32)
    unscaled = model.fc(model.features(model.whiten(x)))
    assert torch.allclose(model(x), unscaled / 9)


def _structured_images(n: int, seed: int = 0) -> torch.Tensor:
    """NCHW images with correlated channels and neighbouring pixels, like natural images."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.avg_pool2d(torch.randn(n, 1, 34, 34, generator=g), 3, 1)
    return base * torch.tensor([1.0, 0.8, 0.5])[:, None, None] + 0.3 * torch.randn(
        n, 3, 32, 32, generator=g
    )


def test_whitening_filters_are_the_patch_pca_of_the_images():
    images = _structured_images(64)
    filters = whitening_filters(images, 2)
    assert filters.shape == (24, 3, 2, 2) and torch.equal(filters[12:], -filters[:12])
    # Independently, as airbench94.py does it: every 2x2 patch (tensor.unfold), flattened as
    # (channel, row, column), uncentred covariance. Eigenvectors V, eigenvalues L: the filters
    # are L^-1/2 V^T, so W^T W = (C + eps I)^-1 whatever the eigenvectors' signs and order.
    patches = images.unfold(2, 2, 1).unfold(3, 2, 1).permute(0, 2, 3, 1, 4, 5).reshape(-1, 12)
    cov = patches.double().T @ patches.double() / len(patches)
    w = filters[:12].reshape(12, 12).double()
    assert torch.allclose(w.T @ w, torch.linalg.inv(cov + WHITEN_EPS * torch.eye(12)), rtol=1e-6)
    # Largest eigenvalue first: the filters' norms 1/sqrt(l + eps) grow down the list.
    norms = w.norm(dim=1)
    assert torch.all(norms[1:] >= norms[:-1])
    # The whitened patches are decorrelated, each with variance l / (l + eps) (about 1).
    out = patches.double() @ w.T
    out_cov = out.T @ out / len(out)
    assert torch.allclose(out_cov, torch.diag(out_cov.diag()), atol=1e-6)
    assert torch.all(out_cov.diag() > 0.9)


def _tiny_cifar(root: Path, per_batch: int) -> Path:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from throughput import write_cifar10
    finally:
        sys.path.remove(str(BENCHMARKS))
    write_cifar10(root, learnable=True, per_batch=per_batch)
    return root


def test_trainer_sets_the_whitening_from_training_images_and_it_stays_frozen(tmp_path):
    g = torch.Generator().manual_seed(0)
    train = torch.randint(0, 256, (96, 32, 32, 3), dtype=torch.uint8, generator=g)
    test = torch.randint(0, 256, (32, 32, 32, 3), dtype=torch.uint8, generator=g)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    data = cnnlab.datasets.from_tensors(
        train, torch.arange(96) % 10, test, torch.arange(32) % 10, mean=mean, std=std
    )
    torch.manual_seed(0)
    model = build_model("airbench94", width=8)
    model.init_images = 40  # the first 40 of the 96 training images
    before = model.whiten.weight.clone()
    trainer = cnnlab.Trainer(model, data, epochs=1, batch_size=32, precision="fp32",
                             optim={"lr": 0.1}, run_dir=tmp_path / "run")  # fmt: skip
    trainer.fit()
    x = (train[:40].float() / 255 - torch.tensor(mean)) / torch.tensor(std)
    expected = whitening_filters(x.permute(0, 3, 1, 2), 2).float()
    assert not torch.allclose(before, expected)
    # Equal to the patch PCA of those images after 3 training steps: set once, then frozen.
    assert torch.allclose(model.whiten.weight, expected, atol=1e-5)
    assert "initialised from the first 40 training images" in (tmp_path / "run/log.txt").read_text()
    saved = load_checkpoint(tmp_path / "run" / "last.pt")["model"]["whiten.weight"]
    assert torch.equal(saved, model.whiten.weight)


def test_speedrun_recipe_learns_a_tiny_cifar_shaped_set(tmp_path):
    root = _tiny_cifar(tmp_path / "data", per_batch=200)  # 1,000 training, 200 test images
    summary = cnnlab.train(SPEEDRUN, out=tmp_path / "run", overrides=[
        f"data.root={root}", "train.epochs=3", "train.eval_every=3", "train.batch_size=100",
        "train.precision=fp32", "train.channels_last=false", "model.width=16",
        "schedule.peak_epoch=0.7", "lookahead.start_epoch=1",  # lookahead in epochs 2-3
        "freeze.after_epochs=1",  # the whitening bias frozen in epochs 2-3
    ])  # fmt: skip
    assert summary["model"] == "airbench94" and summary["epochs"] == 3
    # Chance is 90 % error; each class is a fixed colour pattern under heavy noise.
    assert summary["final"]["test_error"] < 10, summary["final"]
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "initialised from the first 1000 training images" in log
