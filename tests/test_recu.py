"""ReCU: the clamp and its quantile, the sign estimators, the tau schedule, the 1W1A models."""

import math

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.errors import UserError
from cnnlab.methods.recu import tau_schedule
from cnnlab.models.binary import (
    BinaryConv2d,
    binarize_activation,
    recu,
    recu_threshold,
    sign_ste,
    standardize_filters,
)
from cnnlab.registry import build_model
from tests.helpers import SMALL, assert_learned, cli, needs_fashion, read_metrics

# Test error (%) measured at seed 0, fp32 on an AMD EPYC CPU (seeds 0-2: 41.25-44.75 %). At
# batch 64 (48 steps at lr 0.1) seeds spanned 44.25-50.25 % here and another CPU had measured
# 73.5 %: too few steps for a figure that holds from machine to machine.
MEASURED_RECU = 41.25

torch.set_num_threads(1)


def test_standardised_filters_have_zero_mean_and_std_two_root_two():
    w = torch.randn(6, 4, 3, 3) * 0.3 + 0.7
    w1 = standardize_filters(w)
    assert torch.allclose(w1.mean(dim=(1, 2, 3)), torch.zeros(6), atol=1e-5)
    assert torch.allclose(w1.std(dim=(1, 2, 3)), torch.full((6,), 2 * math.sqrt(2)), atol=1e-3)


def test_threshold_is_the_laplace_quantile_at_tau():
    w1 = torch.tensor([[-3.0, 1.0], [2.0, -2.0]])  # mean |w1| = 2
    assert recu_threshold(w1, 0.85).item() == pytest.approx(-2 * math.log(2 - 2 * 0.85))
    assert recu_threshold(w1, 0.99).item() == pytest.approx(2 * math.log(50))
    # For Laplace(0, b) draws, P(|x| > Q(tau)) = 2 (1 - tau).
    laplace = torch.distributions.Laplace(0.0, 2.0).sample((200_000,))
    for tau in (0.85, 0.9, 0.99):
        outside = (laplace.abs() > recu_threshold(laplace, tau)).float().mean().item()
        assert outside == pytest.approx(2 * (1 - tau), abs=0.004)
    with pytest.raises(ValueError, match="tau"):
        recu_threshold(w1, 0.4)


def test_recu_clamps_and_passes_no_gradient_outside_the_clamp():
    w1 = torch.tensor([-5.0, -1.0, 0.5, 1.2, 4.0], requires_grad=True)
    q = recu_threshold(w1, 0.85).item()  # mean|w1| = 2.34 -> Q = 2.34 * ln(1/0.3) = 2.82
    out = recu(w1, 0.85)
    assert out.tolist() == pytest.approx([-q, -1.0, 0.5, 1.2, q])
    out.backward(torch.ones(5))
    assert w1.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


def test_weight_sign_is_straight_through_and_activation_gradient_is_the_polynomial():
    x = torch.tensor([-2.0, -0.5, 0.25, 0.9, 3.0], requires_grad=True)
    y = sign_ste(x)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 5

    a = torch.tensor([[-2.0, -0.5, 0.0, 0.25, 0.9, 1.0, 3.0]], requires_grad=True)
    binarize_activation(a, training=False).sum().backward()
    # d/da ApproxSign = max(0, 2 - 2|a|): a triangle of height 2 on (-1, 1).
    assert a.grad[0].tolist() == pytest.approx([0.0, 1.0, 2.0, 1.5, 0.2, 0.0, 0.0])


def test_training_activation_is_standardised_per_sample_before_the_sign():
    a = torch.tensor([[0.1, 0.2, 0.3, 0.4], [10.0, 20.0, 30.0, 40.0]], requires_grad=True)
    binarize_activation(a, training=True).sum().backward()
    # Sample 2 is sample 1 times 100: the same signs, and gradients 100 times smaller (up to eps).
    assert torch.allclose(a.grad[1] * 100, a.grad[0], rtol=1e-3)
    assert a.grad[0, 0] > 0


def test_tau_schedule_end_points_and_shape():
    assert tau_schedule(0, 600) == pytest.approx(0.85)
    assert tau_schedule(600, 600) == pytest.approx(0.99)
    assert tau_schedule(0, 10, 0.6, 0.9) == pytest.approx(0.6)
    assert tau_schedule(10, 10, 0.6, 0.9) == pytest.approx(0.9)
    taus = [tau_schedule(e, 600) for e in range(601)]
    steps = [b - a for a, b in zip(taus, taus[1:])]
    assert all(s > 0 for s in steps) and steps[-1] > steps[0]  # rising, faster at the end
    a = 0.14 / (math.e - 1)
    assert tau_schedule(300, 600) == pytest.approx(a * math.exp(0.5) + 0.85 - a)


def test_binary_conv_forward_ignores_tau_but_its_gradient_does_not():
    torch.manual_seed(0)
    conv = BinaryConv2d(4, 6)
    x = torch.randn(2, 4, 5, 5)
    conv.eval()
    y85 = conv(x)
    conv.tau = 0.99
    assert torch.equal(conv(x), y85)  # the clamp never flips a sign
    conv.train()
    grads = {}
    for tau in (0.6, 0.99, None):
        conv.tau = tau
        conv.weight.grad = None
        conv(x).sum().backward()
        grads[tau] = conv.weight.grad.clone()
    assert not torch.allclose(grads[0.6], grads[None])
    assert not torch.allclose(grads[0.6], grads[0.99])
    # The forward is conv(sign(x), +-1 weights) * alpha.
    conv.eval()
    ref = torch.nn.functional.conv2d(torch.sign(x), torch.sign(conv.standardized_weight()),
                                     padding=1) * conv.alpha  # fmt: skip
    assert torch.allclose(conv(x), ref, atol=1e-5)


# Parameter counts derived by hand (CIFAR-10: 3 input channels, 10 classes): the FP stem conv
# and its BN; per binary conv in*out*9 weights + out scales (alpha) + 2*out for its BN; the
# head's BatchNorm1d (2*C) and Linear (C*10 + 10). Shortcuts have no parameters. resnet20_1w1a
# is resnet20 (269,722) + 672 alphas + 128 for BatchNorm1d(64) = 270,522.
def _block_convs(pairs):
    return sum(i * o * 9 + o + 2 * o for i, o in pairs)


RESNET20 = 432 + 32 + _block_convs(
    [(16, 16)] * 6 + [(16, 32)] + [(32, 32)] * 5 + [(32, 64)] + [(64, 64)] * 5
) + 128 + 650  # fmt: skip
RESNET18 = 3 * 64 * 9 + 128 + _block_convs(
    [(64, 64)] * 4 + [(64, 128)] + [(128, 128)] * 3 + [(128, 256)] + [(256, 256)] * 3
    + [(256, 512)] + [(512, 512)] * 3
) + 1024 + 5130  # fmt: skip
VGG_SMALL = 3 * 128 * 9 + 256 + _block_convs(
    [(128, 128), (128, 256), (256, 256), (256, 512), (512, 512)]
) + 512 * 16 * 10 + 10  # fmt: skip


@pytest.mark.parametrize(
    ("name", "by_hand", "total"),
    [
        ("resnet20_1w1a", RESNET20, 270_522),
        ("resnet18_1w1a", RESNET18, 11_005_002),
        ("vgg_small_1w1a", VGG_SMALL, 4_661_770),
    ],
)
def test_param_counts_by_hand(name, by_hand, total):
    with torch.device("meta"):
        model = build_model(name)
    assert sum(p.numel() for p in model.parameters()) == by_hand == total


@pytest.mark.parametrize("name", ["resnet20_1w1a", "resnet18_1w1a", "vgg_small_1w1a"])
@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32)])
def test_binary_models_forward_backward_at_both_sizes(name, channels, size):
    torch.manual_seed(0)
    small = {"resnet20_1w1a": {"base_width": 4}, "resnet18_1w1a": {"base_width": 4},
             "vgg_small_1w1a": {"width": 8}}[name]  # fmt: skip
    model = build_model(name, in_channels=channels, num_classes=7, **small)
    out = model(torch.randn(3, channels, size, size))
    assert out.shape == (3, 7)
    out.square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


def test_binary_section_is_refused_for_a_full_precision_model(tmp_path):
    from cnnlab.run.training import config_callbacks

    with pytest.raises(UserError, match="binary models"):
        config_callbacks(load_config(None, ["model.name=resnet20", "binary.recu=false"]))
    with pytest.raises(UserError, match="tau_min"):
        load_config(None, ["binary.tau_min=0.99", "binary.tau_max=0.9"])


@needs_fashion
def test_short_fashion_mnist_training_of_resnet20_1w1a_learns(tmp_path):
    run = tmp_path / "run"
    args = [*SMALL, "model.name=resnet20_1w1a", "data.train_limit=1024", "train.epochs=3",
            "train.batch_size=32", "optim.lr=0.05", "schedule.name=cosine",
            "schedule.peak_epoch=null", "train.label_smoothing=0"]  # fmt: skip
    assert cli("train", "--out", str(run), *args) == 0  # 96 steps
    rows = read_metrics(run)
    # Chance is 90 %.
    assert_learned(rows[-1]["test_error"], measured=MEASURED_RECU, chance=90.0)
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    taus = [r["recu_tau"] for r in rows]
    assert taus[0] == pytest.approx(0.85) and taus[0] < taus[1] < taus[2] < 0.99
    assert all(0 < r["probe_clamped_weights"] < 1 for r in rows)
