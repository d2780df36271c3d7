"""Init policies of the official Torch7 codes: each option builds the distributions its source
draws (BN scales, conv fan, classifier), and the defaults keep cnnlab's own init."""

import math

import pytest
import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.registry import build_model


def _norms(model):
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def _std_ratio(conv, fan):
    return conv.weight.std().item() / math.sqrt(2.0 / fan)


def test_wrn_official_init_uniform_bn_scales_and_torch_linear_with_zero_bias():
    # szagoruyko/wide-residual-networks@ae6d0d0 models/utils.lua:3-31 (MSRinit fan_in, FCinit
    # zeroes the bias, model:reset() redraws BN scales U(0, 1)).
    torch.manual_seed(0)
    net = build_model("wrn16_4", norm_init="uniform", classifier_init="default_zero_bias")
    scales = torch.cat([m.weight.detach() for m in _norms(net)])
    assert scales.min() >= 0 and scales.max() <= 1
    assert abs(scales.mean().item() - 0.5) < 0.03 and scales.std().item() > 0.25
    assert all(torch.all(m.bias == 0) for m in _norms(net))
    bound = 1 / math.sqrt(net.fc.in_features)
    assert torch.all(net.fc.bias == 0) and net.fc.weight.abs().max() <= bound
    assert net.fc.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert _std_ratio(net.stem, 27) == pytest.approx(1.0, rel=0.15)


def test_gcr_init_fan_in_convs_branch_bn_near_one_others_uniform_torch_linear():
    # gcr/torch-residual-networks@f0d0a17 residual-layers.lua:53-59, 87 and train-cifar.lua:68-84.
    torch.manual_seed(0)
    net = build_model(
        "resnet20", conv_init="fan_in", norm_init="uniform_mid_normal", classifier_init="default"
    )
    for block in net.stages:
        mid, last = block.branch[1].weight.detach(), block.branch[4].weight.detach()
        assert (mid - 1).abs().max() < 0.01 and mid.std().item() > 0
        assert last.min() >= 0 and last.max() <= 1 and last.std().item() > 0.15
    stem = net.stem[1].weight.detach()
    assert stem.min() >= 0 and stem.max() <= 1 and stem.std().item() > 0.15
    widening = net.stages[3].branch[0]  # 16 -> 32 channels: fan_in 144, fan_out 288
    assert _std_ratio(widening, 9 * 16) == pytest.approx(1.0, rel=0.1)
    bound = 1 / math.sqrt(64)
    assert net.fc.bias.abs().max() <= bound and net.fc.bias.abs().min() > 0
    assert net.fc.weight.abs().max() <= bound


def test_nr_resnet_classifier_kaiming_fan_out_weight_with_torch_default_bias():
    # joe-siyuan-qiao/NeuralRejuvenation-CVPR19@8f1f2aa models/cifar/resnet.py:152-155 draws the
    # 1x1-conv classifier's weight N(0, 2 / num_classes) and leaves its bias at nn.Conv2d's.
    torch.manual_seed(0)
    net = build_model("resnet164", classifier_init="kaiming_default_bias", num_classes=100)
    assert net.fc.weight.std().item() == pytest.approx(math.sqrt(2 / 100), rel=0.05)
    bound = 1 / math.sqrt(256)
    assert net.fc.bias.abs().max() <= bound and net.fc.bias.abs().min() > 0


def test_default_init_is_unchanged_ones_and_fan_out():
    torch.manual_seed(0)
    net = build_model("resnet20")
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in _norms(net))
    assert _std_ratio(net.stages[3].branch[0], 9 * 32) == pytest.approx(1.0, rel=0.1)
    assert torch.all(net.fc.bias == 0)


@pytest.mark.parametrize(
    ("model", "key", "value"),
    [("resnet20", "norm_init", "unifrom"), ("resnet20", "conv_init", "fanin"),
     ("wrn16_4", "norm_init", "torch")],
)  # fmt: skip
def test_unknown_init_policy_is_one_line_naming_the_choices(model, key, value):
    with pytest.raises(UserError, match=rf"{key} must be one of .*, got '{value}'") as err:
        build_model(model, **{key: value})
    assert "\n" not in str(err.value)


def test_wrn_mid_normal_draws_the_norm_between_each_units_convs_near_one():
    torch.manual_seed(0)
    net = build_model("wrn16_4", norm_init="uniform_mid_normal")
    for unit in net.stages:
        assert (unit.norm2.weight - 1).abs().max() < 0.01
        assert unit.norm1.weight.min() >= 0 and unit.norm1.weight.std().item() > 0.15


def test_gcr_early_init_draws_every_bn_scale_near_one():
    # gcr/torch-residual-networks train-cifar.lua@fec67c0:84-94, the init of the model-size runs.
    torch.manual_seed(0)
    net = build_model("resnet20", conv_init="fan_in", norm_init="normal", classifier_init="default")
    scales = torch.cat([m.weight.detach() for m in _norms(net)])
    assert (scales - 1).abs().max() < 0.01 and scales.std().item() > 0.001


def test_nr_imagenet_resnet_classifier_is_normal_0_01_with_zero_bias():
    # joe-siyuan-qiao/NeuralRejuvenation-CVPR19@8f1f2aa models/imagenet/resnet.py:151-160.
    torch.manual_seed(0)
    net = build_model("resnet18", fc_init_std=0.01, num_classes=1000)
    assert net.fc.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(net.fc.bias == 0)
    with pytest.raises(UserError, match="fc_init_std must be positive"):
        build_model("resnet18", fc_init_std=0.0)
