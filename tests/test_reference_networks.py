"""The networks that produced reference rows: pinned counts, dropout placement, ReCU init."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.errors import UserError
from cnnlab.models.densenet import DenseNet
from cnnlab.models.preact import PreactResNet
from cnnlab.models.pyramidnet import PyramidNet
from cnnlab.models.resnet import CifarResNet
from cnnlab.models.resnext import CifarResNeXt
from cnnlab.models.shake_shake import ShakeShakeNet
from cnnlab.models.vgg import CifarVGG
from cnnlab.models.wrn import WideBlock, WideResNet
from cnnlab.registry import build_model

torch.set_num_threads(1)


def n_params(name: str, **options: object) -> int:
    """Count a registered variant's parameters on the meta device."""
    with torch.device("meta"):
        model = build_model(name, **options)
    return sum(p.numel() for p in model.parameters())


# Exact counts of hysts' own models/*.py (pytorch_image_classification at 72f898b; the model
# files are unchanged to da2bdcf; built with torch 2.13 from the repository's files):
# resnet_preact.Network(base_channels=16, bottleneck, depth 164) and base_channels=64 on 1x28x28
# (depth 20 / 50), densenet.Network (basic, depth 100, growth 12, compression 1.0),
# pyramidnet.Network (bottleneck, depth 164, alpha 270), shake_shake.Network (depth 26,
# base_channels 32), vgg.Network (configs/vgg.json), resnext.Network (depth 29, 4x64d) and
# resnet.Network (basic, depth 110). With these options, and hysts' weights loaded, the nets
# give hysts' outputs exactly.
HYSTS_SHAKE = {"stem_width": 32, "stem_relu": True, "head_relu": False}
HYSTS_COUNTS = [
    ("preact_resnet164_hysts", {}, 1_619_290),
    ("preact_resnet20", {"widen": 4, "channel_plan": "hysts", "in_channels": 1}, 4_325_834),
    ("preact_resnet50", {"widen": 4, "channel_plan": "hysts", "in_channels": 1}, 12_076_234),
    ("densenet100_k12", {"stem_width": 24}, 7_083_538),
    ("pyramidnet164_bottleneck_a270", {"stem_width": 64}, 27_218_517),
    ("shake_shake26_2x32d", HYSTS_SHAKE, 2_932_266),
    ("vgg15_bn", {"one_relu_per_stage": True}, 14_728_266),
    ("resnext29_4x64d", {}, 17_562_442),
    ("resnet110", {"shortcut_kind": "B"}, 1_730_714),
]


@pytest.mark.parametrize(("name", "options", "count"), HYSTS_COUNTS)
def test_hysts_networks_match_hysts_code(name, options, count):
    assert n_params(name, **options) == count


def test_the_papers_networks_differ_from_hysts():
    # He et al.'s preact-164 (64/128/256 outputs) is the paper's 1.7M; hysts' has 16 in stage 1.
    assert round(n_params("preact_resnet164") / 1e6, 1) == 1.7
    assert n_params("preact_resnet164") != n_params("preact_resnet164_hysts")
    # Huang et al.'s DenseNet-100 (k=12) has a 16-channel stem: the paper's 7.0M.
    assert round(n_params("densenet100_k12") / 1e6, 1) == 7.0


def test_hysts_widening_keeps_the_stem_width_through_stage_one():
    model = PreactResNet(depth=20, widen=4, channel_plan="hysts", in_channels=1)
    assert model.stem.out_channels == 64
    assert all(isinstance(b.shortcut, nn.Identity) for b in list(model.stages)[:3])
    he = PreactResNet(depth=20, widen=4, in_channels=1)
    assert he.stem.out_channels == 16 and not isinstance(he.stages[0].shortcut, nn.Identity)


def _dropout_input(position: str) -> tuple[type, bool]:
    """Return (type of the layer feeding the dropout, whether it feeds conv2) in one unit."""
    block = WideBlock(4, 4, 1, "bn", 0.5, False, position)
    seen: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append(m)) for m in block.children()]
    block(torch.randn(2, 4, 6, 6))
    for h in hooks:
        h.remove()
    at = seen.index(block.drop)
    return type(seen[at - 1]), seen[at + 1] is block.conv2


def test_hysts_vgg_keeps_one_relu_per_stage():
    # hysts' _make_stage adds every ReLU under the name 'relu': the first stays, later adds
    # replace it in place, so each of the five stages has one ReLU, after its first conv.
    def relus(model: nn.Module) -> int:
        return sum(isinstance(m, nn.ReLU) for m in model.modules())

    with torch.device("meta"):
        assert relus(build_model("vgg15_bn")) == 13
        hysts = build_model("vgg15_bn", one_relu_per_stage=True)
    assert relus(hysts) == 5
    assert [type(m) for m in hysts.features[:7]] == [
        nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.Conv2d, nn.BatchNorm2d, nn.Identity, nn.MaxPool2d
    ]  # fmt: skip
    with pytest.raises(UserError, match="one_relu_per_stage"):
        build_model("vgg15_bn", one_relu_per_stage=True, erase_relu=True)


def test_hysts_shake_shake_relus_its_stem_and_pools_the_last_sum_as_it_is():
    torch.manual_seed(0)
    small = {"depth": 8, "base_width": 8}
    gastaldi = ShakeShakeNet(**small).eval()
    hysts = ShakeShakeNet(**small, stem_width=8, stem_relu=True, head_relu=False).eval()
    x = torch.randn(2, 3, 16, 16)
    assert gastaldi.stem(x).min() < 0 <= hysts.stem(x).min()
    assert isinstance(gastaldi.head[0], nn.ReLU)
    assert not any(isinstance(m, nn.ReLU) for m in hysts.head)
    with torch.no_grad():
        assert hysts.head(hysts.stages(hysts.stem(x))).min() < 0


def test_wrn_dropout_placements():
    # Official wide-resnet.lua: BN, ReLU, Dropout, conv2. hysts' wrn.py: conv1, dropout, bn2.
    assert _dropout_input("before_conv2") == (nn.ReLU, True)
    assert _dropout_input("after_conv1") == (nn.Conv2d, False)
    assert build_model("wrn28_10_dropout").stages[0].dropout_first is False


def test_recu_classifier_keeps_pytorchs_linear_init():
    # ReCU's _weights_init touches nn.Conv2d only: PyTorch's Linear init draws the weights
    # from U(-1/sqrt(in), 1/sqrt(in)) and a non-zero bias, which Kaiming normal never gives.
    torch.manual_seed(0)
    for name in ("resnet20_1w1a", "resnet18_1w1a"):
        fc = build_model(name).fc
        bound = 1 / fc.in_features**0.5
        assert fc.weight.abs().max() <= bound
        assert fc.bias.abs().max() > 0


# Small members of each family that takes model.classifier_init.
CLASSIFIER_INIT_FAMILIES = {
    "preact": lambda **o: PreactResNet(depth=8, **o),
    "resnet": lambda **o: CifarResNet(depth=8, **o),
    "densenet": lambda **o: DenseNet(depth=10, growth=4, **o),
    "pyramidnet": lambda **o: PyramidNet(depth=8, alpha=12, **o),
    "resnext": lambda **o: CifarResNeXt(depth=11, cardinality=2, base_width=4, stem_width=8, **o),
    "shake_shake": lambda **o: ShakeShakeNet(depth=8, base_width=8, stem_width=8, **o),
    "vgg": lambda **o: CifarVGG(layout=(8, "M", 16), **o),
    "wrn": lambda **o: WideResNet(depth=10, widen=1, **o),
}


@pytest.mark.parametrize("family", sorted(CLASSIFIER_INIT_FAMILIES))
def test_default_zero_bias_starts_the_classifier_as_hysts_did(family):
    # hysts' initialize_weights (e.g. models/resnet_preact.py:9-16 at 72f898b) zeroes the
    # Linear bias and keeps nn.Linear's U(-1/sqrt(in), 1/sqrt(in)) weight; every other layer
    # starts exactly as under the default "kaiming" (same seed, same draws).
    build = CLASSIFIER_INIT_FAMILIES[family]
    torch.manual_seed(0)
    kaiming = build().state_dict()
    torch.manual_seed(0)
    model = build(classifier_init="default_zero_bias")
    fc = model.fc
    assert torch.count_nonzero(fc.bias) == 0
    assert fc.weight.abs().max() <= 1 / fc.in_features**0.5
    assert not torch.equal(fc.weight, kaiming["fc.weight"])
    for key, value in model.state_dict().items():
        if not key.startswith("fc."):
            assert torch.equal(value, kaiming[key]), key


def test_precision_auto_keeps_binary_nets_in_fp32(monkeypatch):
    # ReCU's code is fp32, and bf16 flips binary signs. 'auto' must not even time bf16.
    from cnnlab.engine import numerics

    def no_timing(*args, **kwargs):
        raise AssertionError("a binary net under precision=auto must not be timed")

    monkeypatch.setattr(numerics, "_images_per_second", no_timing)
    model = build_model("resnet20_1w1a")
    cpu = torch.device("cpu")
    chosen = numerics.choose_numerics(model, "k", (3, 32, 32), 8, cpu, "auto", "auto")
    assert chosen.precision == "fp32"
    # An explicit choice is still honoured.
    assert numerics.choose_numerics(model, "k", (3, 32, 32), 8, cpu, "bf16", False).precision == (
        "bf16"
    )
