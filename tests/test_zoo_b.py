"""ResNeXt-29, Shake-Shake-26 and the ImageNet-size families: sizes, shapes, shake mixing."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.models.dense_blocks import DenseUnit
from cnnlab.models.imagenet import ImageNetDenseNet, ImageNetResNet, ImageNetVGG
from cnnlab.models.resnext import CifarResNeXt
from cnnlab.models.shake_shake import (
    ShakeBlock,
    ShakeShakeMix,
    ShakeShakeNet,
    shake_coefficients,
)
from cnnlab.registry import build_model, list_models

torch.set_num_threads(1)


def n_params(name: str, **options) -> int:
    # Built on the meta device: shapes only, so even VGG-19 costs milliseconds.
    with torch.device("meta"):
        model = build_model(name, **options)
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------- parameter counts, full size

# Counts at the paper's precision (millions, one decimal), CIFAR-10 head.
PAPER_M = {
    "resnext29_8x64d": 34.4,  # Xie et al. 2017, Table 7
    # Gastaldi 2017 (arXiv 1705.07485). The stored copies of the paper and of the official
    # README that could be searched show the error tables only, not these sizes; the 2x32d
    # count is confirmed exactly by osmr/imgclsmob below.
    "shake_shake26_2x32d": 2.9,
    "shake_shake26_2x64d": 11.7,
    "shake_shake26_2x96d": 26.2,
}

# Exact counts, 1000 classes: torchvision's documented `num_params` for each weights enum
# (pytorch.org/vision/stable/models/generated/torchvision.models.<name>.html).
TORCHVISION = {
    "resnet18": 11_689_512,  # 11.7M
    "resnet34": 21_797_672,  # 21.8M
    "resnet50": 25_557_032,  # 25.6M
    "resnet101": 44_549_160,  # 44.5M
    "resnet152": 60_192_808,  # 60.2M
    "resnext50_32x4d": 25_028_904,  # 25.0M
    "densenet121": 7_978_856,  # 8.0M
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,  # 138.4M
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
}


@pytest.mark.parametrize("name", sorted(PAPER_M))
def test_cifar_param_counts_match_papers(name):
    assert round(n_params(name) / 1e6, 1) == PAPER_M[name]


@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_imagenet_param_counts_match_torchvision(name):
    assert n_params(name) == TORCHVISION[name]


@pytest.mark.parametrize(
    "name", ["resnext50_32x4d_gn", "vgg11_gn", "vgg13_gn", "vgg16_gn", "vgg19_gn"]
)
def test_gn_variants_have_the_bn_count(name):
    # No published count for the GN models; GroupNorm carries the same per-channel scale and
    # shift as BatchNorm, so each must equal its BN twin's torchvision count.
    bn_twin = name.replace("_gn", "_bn") if name.startswith("vgg") else "resnext50_32x4d"
    assert n_params(name) == TORCHVISION[bn_twin]


def test_shake_shake_2x32d_exact_count():
    # osmr/imgclsmob README, Shake-Shake-ResNet-26-2x32d (CIFAR-10): 2,923,162.
    assert n_params("shake_shake26_2x32d") == 2_923_162


def test_resnext29_16x64d_count_and_the_papers_rounding():
    n = n_params("resnext29_16x64d")
    # osmr/imgclsmob README, ResNeXt-29 (16x64d) on CIFAR-10: 68,155,210 parameters; our
    # structure also follows the official Torch code (facebookresearch/ResNeXt
    # models/resnext.lua, bias-free convs, 1x1+BN projections).
    assert n == 68_155_210
    # Xie et al. Table 7 prints 68.1M, although 68.155M rounds to 68.2M: the paper appears to
    # truncate (34.427M -> 34.4M is consistent with both). We pin the exact count above rather
    # than loosen the comparison.
    assert int(n / 1e5) / 10 == 68.1


def _resnext29_formula(card: int, width: int, classes: int = 10) -> int:
    """Hand count of a CIFAR ResNeXt-29: 3 stages x 3 bottlenecks, BN = 2 params/channel."""
    total = 3 * 64 * 9 + 2 * 64  # stem conv + BN
    in_ch = 64
    for stage in range(3):
        inner, out = card * width * 2**stage, 256 * 2**stage
        for _ in range(3):
            total += in_ch * inner + inner * (inner // card) * 9 + inner * out
            total += 2 * (2 * inner + out)
            if in_ch != out:
                total += in_ch * out + 2 * out
            in_ch = out
    return total + 1024 * classes + classes


def test_resnext29_4x64d_count_by_hand():
    # The paper lists no 4x64d count; the hand formula reproduces the two published sizes
    # and then checks 4x64d independently of the module code.
    assert round(_resnext29_formula(8, 64) / 1e6, 1) == 34.4
    assert _resnext29_formula(16, 64) == 68_155_210
    assert n_params("resnext29_4x64d") == _resnext29_formula(4, 64) == 17_562_442


def test_imagenet_defaults_and_registry_names():
    for name in ["resnet18", "resnext50_32x4d", "vgg16_bn", "densenet121"]:
        assert name in list_models()
    # CIFAR ResNets keep their names; the ImageNet ones do not clash with them.
    assert {"resnet20", "resnet110", "resnet18", "resnet50"} <= set(list_models("resnet*"))
    assert n_params("resnet18", num_classes=10) == TORCHVISION["resnet18"] - 990 * 513


# ---------------------------------------------------------------- forward / backward, small


def _check_train_and_eval(model: nn.Module, shape: tuple[int, ...], classes: int) -> None:
    x = torch.randn(2, *shape)
    model.train()
    out = model(x)
    assert out.shape == (2, classes)
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


CIFAR_SMALL = {
    "resnext": lambda **kw: CifarResNeXt(cardinality=2, base_width=4, stem_width=8, **kw),
    "shake_shake": lambda **kw: ShakeShakeNet(base_width=8, stem_width=8, **kw),
}


@pytest.mark.parametrize("family", sorted(CIFAR_SMALL))
@pytest.mark.parametrize("norm", ["bn", "gn", "none"])
@pytest.mark.parametrize("shape,classes", [((1, 28, 28), 10), ((3, 32, 32), 100)])
def test_cifar_families_forward_backward(family, norm, shape, classes):
    torch.manual_seed(0)
    model = CIFAR_SMALL[family](in_channels=shape[0], num_classes=classes, norm=norm)
    _check_train_and_eval(model, shape, classes)


def test_resnext_se_and_erase_relu():
    model = CifarResNeXt(cardinality=2, base_width=4, stem_width=8, se=True, erase_relu=True)
    assert all(isinstance(b.out_relu, nn.Identity) for b in model.stages)
    _check_train_and_eval(model, (3, 32, 32), 10)
    # Ratio 1/3 of 3 blocks: only the last block of each stage loses its ReLU.
    partial = CifarResNeXt(cardinality=2, base_width=4, erase_relu=True, erase_relu_ratio=0.34)
    erased = [isinstance(b.out_relu, nn.Identity) for b in partial.stages]
    assert erased == [False, False, True] * 3


IMAGENET_SMALL = [
    ("resnet18", {}),
    ("resnet18", {"norm": "gn"}),
    ("resnet18", {"norm": "none"}),
    ("resnet18", {"se": True, "erase_relu": True, "zero_init_residual": True}),
    ("resnext50_32x4d", {}),
    ("resnext50_32x4d_gn", {}),
    ("densenet121", {"erase_relu": True}),
    ("vgg11_bn", {"erase_relu": True}),
]


@pytest.mark.parametrize("name,options", IMAGENET_SMALL)
def test_imagenet_families_forward_backward_at_64(name, options):
    torch.manual_seed(0)
    model = build_model(name, num_classes=200, **options)  # Tiny ImageNet size
    _check_train_and_eval(model, (3, 64, 64), 200)


def test_imagenet_resnet_at_224_eval():
    model = build_model("resnet18").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_imagenet_erase_relu_and_zero_init_placement():
    net = ImageNetResNet(depth=18, erase_relu=True, erase_relu_ratio=0.5, zero_init_residual=True)
    # 2 blocks per stage, round(0.5 * 2) = 1: the last block of each stage is erased.
    assert [isinstance(b.out_relu, nn.Identity) for b in net.stages] == [False, True] * 4
    assert all(torch.count_nonzero(b.branch[-1].weight) == 0 for b in net.stages)
    with torch.device("meta"):  # structure only; skips initialising the 4096-wide head
        vgg = ImageNetVGG(depth=11, erase_relu=True)
    relus = [m for m in vgg.features if isinstance(m, nn.ReLU)]
    assert len(relus) == 8 - 5  # one ReLU (the last before each of the 5 pools) erased
    dense = ImageNetDenseNet(block_config=(2, 2), erase_relu=True)
    units = [m for m in dense.features if isinstance(m, DenseUnit)]
    # Unit layers: norm, ReLU, conv1x1, norm, ReLU (erased), conv3x3.
    assert len(units) == 4 and all(isinstance(u.branch[4], nn.Identity) for u in units)


@pytest.mark.parametrize(
    "name,options",
    [
        ("shake_shake26_2x32d", {"shake_level": "pixel"}),
        ("shake_shake26_2x32d", {"shake_backward": "random"}),
        ("resnext29_8x64d", {"norm": "layer"}),
        ("resnext29_8x64d", {"depth": 30}),
        ("resnet50", {"zero_init_residual": True, "norm": "none"}),
        ("vgg16", {"dropout": 1.0}),
        ("densenet121", {"erase_relu": True, "erase_relu_ratio": 2.0}),
    ],
)
def test_invalid_options_are_user_errors(name, options):
    with pytest.raises(UserError):
        build_model(name, **options)


# ---------------------------------------------------------------- shake-shake mixing


def test_mix_forward_uses_alpha_and_backward_uses_beta():
    x1 = torch.tensor([1.0, 2.0]).view(2, 1, 1, 1).requires_grad_()
    x2 = torch.tensor([10.0, 20.0]).view(2, 1, 1, 1).requires_grad_()
    alpha = torch.tensor([0.25, 0.75]).view(2, 1, 1, 1)
    beta = torch.tensor([0.9, 0.1]).view(2, 1, 1, 1)
    y = ShakeShakeMix.apply(x1, x2, alpha, beta)
    # Per image: 0.25*1 + 0.75*10 = 7.75 and 0.75*2 + 0.25*20 = 6.5.
    assert torch.allclose(y.flatten(), torch.tensor([7.75, 6.5]))
    y.backward(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
    # d/dx1 = beta * g, d/dx2 = (1 - beta) * g, not alpha.
    assert torch.allclose(x1.grad.flatten(), torch.tensor([0.9, 0.2]))
    assert torch.allclose(x2.grad.flatten(), torch.tensor([0.1, 1.8]))


def test_shake_coefficients_modes_and_levels():
    x = torch.zeros(5, 3, 4, 4)
    torch.manual_seed(1)
    alpha, beta = shake_coefficients(x, "shake", "shake", "image")
    assert alpha.shape == beta.shape == (5, 1, 1, 1)
    assert len(set(alpha.flatten().tolist())) == 5 and not torch.equal(alpha, beta)
    torch.manual_seed(1)
    again, _ = shake_coefficients(x, "shake", "shake", "image")
    assert torch.equal(alpha, again)  # global RNG: seeding repeats the draw
    alpha, beta = shake_coefficients(x, "shake", "keep", "batch")
    assert alpha.shape == (1, 1, 1, 1) and beta is alpha
    alpha, beta = shake_coefficients(x, "even", "even", "image")
    assert torch.all(alpha == 0.5) and torch.all(beta == 0.5)


def test_shake_block_mixes_per_image_in_training_and_evenly_in_eval():
    torch.manual_seed(0)
    block = ShakeBlock(4, 4, 1, "none", ("shake", "shake", "image"))
    x = torch.randn(3, 4, 6, 6)
    with torch.no_grad():
        b1, b2 = block.branch1(x), block.branch2(x)
        torch.manual_seed(7)
        out = block(x)
        torch.manual_seed(7)
        alpha = torch.rand(3, 1, 1, 1)  # the same draw the block made
        assert torch.allclose(out, x + alpha * b1 + (1 - alpha) * b2, atol=1e-6)
        torch.manual_seed(8)
        assert not torch.allclose(block(x), out)  # a new draw mixes differently
        block.eval()
        assert torch.allclose(block(x), x + 0.5 * (b1 + b2), atol=1e-6)


def test_shake_shake_training_is_random_but_seeded():
    net = ShakeShakeNet(base_width=8, stem_width=8, norm="none")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.manual_seed(3)
        first = net(x)
        torch.manual_seed(3)
        assert torch.equal(net(x), first)
        assert not torch.allclose(net(x), first)
