"""Weight EMA (evaluated wherever the weights are), BatchNorm-momentum policies and flip
test-time augmentation."""

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.config import load_config
from cnnlab.data.loader import InMemoryLoader
from cnnlab.engine.evaluate import evaluate, predict
from cnnlab.engine.numerics import Numerics
from cnnlab.engine.tensorboard import TensorBoardWriter, tensorboard_available
from cnnlab.methods.bn_momentum import BNMomentum
from cnnlab.methods.ema import WeightEMA
from cnnlab.methods.probes import ProbeCallback
from cnnlab.run.training import config_callbacks
from tests.helpers import TINY_CPU, needs_fashion, read_metrics


def bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(48, 4))


def test_ema_follows_the_formula_and_survives_a_checkpoint():
    net = bn_net()
    trainer = SimpleNamespace(model=net)
    ema = WeightEMA(0.9)
    ema.on_train_start(trainer)
    start = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    net.train()(torch.randn(4, 1, 6, 6))  # moves the running stats and the batch counter
    ema.on_step_end(trainer, 1, None)
    now = net.state_dict()
    for key, value in ema.model.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.9 * start[key] + 0.1 * now[key]), key
        else:
            assert torch.equal(value, now[key]), key
    assert not any(p.requires_grad for p in ema.model.parameters())

    saved = ema.state_dict()
    again = WeightEMA(0.9)
    again.load_state_dict(saved)
    again.on_train_start(trainer)
    assert all(torch.equal(a, b) for a, b in zip(saved["weights"].values(),
                                                 again.model.state_dict().values()))  # fmt: skip


def test_dynamic_bn_momentum_is_the_epoch_average_and_resets():
    net = bn_net().train()
    bn = net[1]
    trainer = SimpleNamespace(model=net)
    policy = BNMomentum("dynamic")
    policy.on_train_start(trainer)
    # torch's own cumulative average (momentum=None), which reads the counter on the host.
    reference = bn_net().train()
    reference[1].momentum = None
    torch.manual_seed(1)
    batches = [torch.randn(8, 1, 6, 6) * (i + 1) + i for i in range(3)]
    for epoch in (1, 2):
        policy.on_epoch_start(trainer, epoch)
        reference[1].num_batches_tracked.zero_()
        means, variances = [], []
        for x in batches[: 4 - epoch]:
            features = net[0](x)
            means.append(features.mean((0, 2, 3)))
            variances.append(features.var((0, 2, 3), unbiased=True))
            net(x)
            reference(x)
            policy.on_step_end(trainer, 0, None)
        # momentum 1/(1+n) before batch n: the running stats are plain averages over the epoch.
        assert torch.allclose(bn.running_mean, torch.stack(means).mean(0), atol=1e-5)
        assert torch.allclose(bn.running_var, torch.stack(variances).mean(0), atol=1e-4)
        assert bn.num_batches_tracked.item() == len(means)
        # The host-set factor is the very float torch computes: same statistics, bit for bit.
        assert torch.equal(bn.running_mean, reference[1].running_mean)
        assert torch.equal(bn.running_var, reference[1].running_var)


def test_fixed_bn_momentum_is_set_on_every_batchnorm():
    net = nn.Sequential(bn_net(), nn.BatchNorm1d(4))
    BNMomentum(0.01).on_train_start(SimpleNamespace(model=net))
    assert [
        m.momentum for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ] == [
        0.01,
        0.01,
    ]


def test_config_switches_the_callbacks_on():
    # Probes are on by default; TensorBoard joins wherever its package is installed.
    writer = [TensorBoardWriter] if tensorboard_available() else []
    assert [type(cb) for cb in config_callbacks(load_config())] == [ProbeCallback, *writer]
    cfg = load_config(None, ["bn.momentum=dynamic", "ema.decay=0.99"])
    kinds = [type(cb) for cb in config_callbacks(cfg)]
    assert kinds == [BNMomentum, WeightEMA, ProbeCallback, *writer]
    assert [type(cb) for cb in config_callbacks(load_config(None, ["probes.enabled=false"]))] == [
        *writer
    ]


def test_flip_tta_averages_the_logits_of_image_and_mirror():
    net = bn_net().eval()
    x = torch.randn(5, 1, 6, 6)
    with torch.no_grad():
        expected = (net(x) + net(x.flip(3))) / 2
        assert torch.allclose(predict(net, x, "flip"), expected)
        assert torch.equal(predict(net, x, "none"), net(x))
    images = torch.randint(0, 255, (40, 6, 6, 1), dtype=torch.uint8)
    labels = torch.randint(4, (40,))
    loader = InMemoryLoader(images, labels, (0.5,), (0.5,), 16, torch.device("cpu"), train=False)
    flip = evaluate(net, loader, Numerics(), torch.device("cpu"), tta="flip")
    x = (images.float() / 255 - 0.5).div(0.5).permute(0, 3, 1, 2)
    with torch.no_grad():
        wrong = ((net(x) + net(x.flip(3))).argmax(1) != labels).float().mean().item()
    assert flip["error"] == pytest.approx(100 * wrong)


def test_flip_shift_tta_weighs_the_image_half_and_its_two_diagonal_shifts_a_quarter_each():
    net = bn_net().eval()
    x = torch.randn(3, 1, 6, 6)
    padded = torch.nn.functional.pad(x, (1, 1, 1, 1), mode="reflect")
    # The first shifted view is the image moved one pixel down and right.
    assert torch.equal(padded[:, :, :6, :6][:, :, 1:, 1:], x[:, :, :5, :5])
    views = [x, padded[:, :, :6, :6], padded[:, :, 2:, 2:]]
    with torch.no_grad():
        flips = [predict(net, v, "flip") for v in views]
        expected = flips[0] / 2 + (flips[1] + flips[2]) / 4
        assert torch.allclose(predict(net, x, "flip_shift"), expected, atol=1e-6)
        assert not torch.allclose(predict(net, x, "flip_shift"), flips[0], atol=1e-4)


def test_the_cli_offers_every_tta_mode_the_config_accepts():
    from typing import get_args

    from cnnlab.cli import TTA_MODES
    from cnnlab.config import EvalConfig

    assert TTA_MODES == get_args(EvalConfig.model_fields["tta"].annotation)


@needs_fashion
@pytest.mark.parametrize(
    "view",
    [
        ["eval.test=false"],  # tuning: judged on the validation split alone
        ["eval.random_crop_size=24"],  # val, test and the test split as it is (test_plain)
    ],
)
def test_ema_is_evaluated_on_every_split_the_epoch_evaluates(tmp_path, view):
    args = [*TINY_CPU, "train.epochs=1", "data.val_size=64", "ema.decay=0.5", *view]
    cnnlab.train(None, overrides=args, out=tmp_path / "run")
    rows = read_metrics(tmp_path / "run")
    raw = {k for k in rows[-1] if k.startswith(("val_", "test_")) and "per_s" not in k}
    ema = {k.removeprefix("ema_") for k in rows[-1] if k.startswith("ema_") and "per_s" not in k}
    assert "val_error" in raw and ema == raw
