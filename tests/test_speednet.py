"""SpeedNet, the speedrun's small net: its layout, counts and options."""

import pytest
import torch

from cnnlab.analysis.profile import count_flops, count_params
from cnnlab.errors import UserError
from cnnlab.registry import build_model


def test_param_count_by_hand():
    model = build_model("speednet", widths=(2, 3, 4), residual=(True, False), in_channels=1)
    # stem 1->2 conv 18 + BN 4; stage 2->3 conv 54 + BN 6; residual pair 2 x (81 + 6);
    # stage 3->4 conv 108 + BN 8; bias-free classifier 4 x 10.
    assert count_params(model) == 18 + 4 + 54 + 6 + 2 * (81 + 6) + 108 + 8 + 40


def test_the_registered_default_is_the_speedrun_net():
    model = build_model("speednet", in_channels=1)
    # 24/48/96/192 with pools before the widening convs and one residual pair at 96 channels:
    # half of preact_resnet20's 62 MFLOPs on a 28x28 image.
    assert count_params(model) == 386_856
    assert count_flops(model, (1, 28, 28)) == 30_036_480


@pytest.mark.parametrize("size", [28, 32])
def test_logits_for_both_small_image_sizes(size):
    model = build_model("speednet", in_channels=1, num_classes=7)
    assert model(torch.randn(2, 1, size, size)).shape == (2, 7)


def test_pooling_before_the_widening_conv_costs_a_quarter_there():
    after = count_flops(build_model("speednet", pool="after", in_channels=1), (1, 28, 28))
    before = count_flops(build_model("speednet", pool="before", in_channels=1), (1, 28, 28))
    assert before < 0.8 * after


@pytest.mark.parametrize(
    "options, message",
    [
        ({"residual": (True,)}, "one flag per stage"),
        ({"widths": (32,), "residual": ()}, "at least one stage"),
        ({"pool": "inside"}, "pool must be"),
    ],
)
def test_bad_options_are_clear_errors(options, message):
    with pytest.raises(UserError, match=message):
        build_model("speednet", **options)
