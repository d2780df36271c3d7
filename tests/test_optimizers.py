"""Optimizers: each builds and steps; the no-decay group; the config keys each one takes."""

import pytest
import torch
from torch import nn

from cnnlab.config import OPTIMIZER_KEYS, OptimConfig, ScheduleConfig, load_config
from cnnlab.engine.losses import soft_target_cross_entropy
from cnnlab.engine.optim import OPTIMIZERS, Schedule, build_optimizer, param_groups
from cnnlab.errors import UserError
from cnnlab.registry import build_model


def tiny_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, bias=False), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
        nn.Linear(4 * 6 * 6, 3),
    )  # fmt: skip


@pytest.mark.parametrize("name", sorted(OPTIMIZER_KEYS))
def test_each_optimizer_builds_and_steps(name):
    assert set(OPTIMIZER_KEYS) == set(OPTIMIZERS)
    net = tiny_net()
    opt = build_optimizer(net, OptimConfig(name=name, lr=0.01))
    assert type(opt) is OPTIMIZERS[name]
    before = [p.detach().clone() for p in net.parameters()]
    x, y = torch.randn(8, 1, 8, 8), torch.randint(3, (8,))
    for _ in range(2):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_optimizer_specific_keys_reach_the_optimizer():
    net = tiny_net()
    cases = {
        "sgd": ({"momentum": 0.5, "nesterov": False}, {"momentum": 0.5, "nesterov": False}),
        "adam": ({"betas": (0.8, 0.99), "eps": 1e-6}, {"betas": (0.8, 0.99), "eps": 1e-6}),
        "adamw": ({}, {"betas": (0.9, 0.999), "eps": 1e-8}),
        "rmsprop": ({"alpha": 0.9}, {"alpha": 0.9, "momentum": 0.0, "eps": 1e-8}),
        "adagrad": ({"eps": 1e-3}, {"eps": 1e-3}),
        "adadelta": ({"rho": 0.3}, {"rho": 0.3, "eps": 1e-6}),
    }
    for name, (given, expected) in cases.items():
        group = build_optimizer(net, OptimConfig(name=name, lr=0.2, **given)).param_groups[0]
        assert group["lr"] == 0.2
        for key, value in expected.items():
            assert group[key] == pytest.approx(value), (name, key)


def test_no_decay_bn_bias_exempts_norm_weights_and_every_bias():
    model = build_model("preact_resnet20", in_channels=1, base_width=8)
    decay, no_decay = param_groups(model, 5e-4, no_decay_bn_bias=True)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    norms = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.BatchNorm2d)
        for p in m.parameters(recurse=False)
    }
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert exempt == {n for i, n in names.items() if i in norms or n.endswith("bias")}
    assert "fc.bias" in exempt and "fc.weight" not in exempt
    assert all(p.ndim == 4 or names[id(p)] == "fc.weight" for p in decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(names)
    # Off: one group holding everything, decayed.
    (single,) = param_groups(model, 5e-4, no_decay_bn_bias=False)
    assert len(single["params"]) == len(names)


def test_no_decay_group_really_skips_decay():
    net = tiny_net()
    cfg = OptimConfig(lr=0.1, weight_decay=0.5, no_decay_bn_bias=True, momentum=0, nesterov=False)
    opt = build_optimizer(net, cfg)
    conv, bias, bn_weight = net[0].weight, net[4].bias, net[1].weight
    before = [t.detach().clone() for t in (conv, bias, bn_weight)]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()  # zero gradients: only weight decay could move a parameter
    assert torch.equal(bias, before[1]) and torch.equal(bn_weight, before[2])
    assert torch.allclose(conv, before[0] * (1 - 0.1 * 0.5))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["optim.name=adam", "optim.rho=0.3"], "optim.rho is not used by adam (only by adadelta)"),
        (["optim.nesterov=true", "optim.name=adamw"], "optim.nesterov is not used by adamw"),
        (["optim.name=adam", "optim.betas=[0.9,1.0]"], "config key 'optim.betas.1'"),
        (["optim.name=rmsprop", "optim.alpha=1.5"], "config key 'optim.alpha'"),
        (["optim.name=adagrad", "optim.eps=0"], "config key 'optim.eps'"),
        (["optim.name=lamb"], "config key 'optim.name'"),
        (["optim.momentum=0"], "optim.nesterov=true needs optim.momentum > 0"),
    ],
)
def test_bad_optimizer_keys_are_named(overrides, message):
    with pytest.raises(UserError) as err:
        load_config(None, overrides)
    assert message in str(err.value)


def test_switching_optimizer_needs_no_other_edit():
    cfg = load_config(None, ["optim.name=adamw", "optim.weight_decay=0.05"])
    assert cfg.optim.options() == {"betas": (0.9, 0.999), "eps": 1e-8}
    assert load_config(None).optim.options() == {"momentum": 0.9, "nesterov": True}


def test_soft_target_cross_entropy_matches_torch_and_composes_with_smoothing():
    torch.manual_seed(1)
    logits, labels = torch.randn(16, 5), torch.randint(5, (16,))
    onehot = nn.functional.one_hot(labels, 5).float()
    for eps in (0.0, 0.1):
        hard = soft_target_cross_entropy(logits, labels, eps)
        soft = soft_target_cross_entropy(logits, onehot, eps)
        ref = nn.functional.cross_entropy(logits, labels, label_smoothing=eps)
        assert hard == pytest.approx(ref.item(), rel=1e-6)
        assert soft == pytest.approx(ref.item(), rel=1e-5)
    # A 0.3/0.7 mixture is the same mixture of the two losses (CE is linear in the target).
    other = labels.roll(1)
    mixed = 0.3 * onehot + 0.7 * nn.functional.one_hot(other, 5).float()
    expect = 0.3 * soft_target_cross_entropy(logits, labels, 0.1) + 0.7 * (
        soft_target_cross_entropy(logits, other, 0.1)
    )
    assert soft_target_cross_entropy(logits, mixed, 0.1) == pytest.approx(expect.item(), rel=1e-5)


def test_norm_lr_scale_steps_norm_layers_faster_with_the_same_decay_per_step():
    net = tiny_net()
    cfg = OptimConfig(lr=0.1, weight_decay=0.5, norm_lr_scale=64, momentum=0, nesterov=False)
    opt = build_optimizer(net, cfg)
    plain, norm = opt.param_groups
    assert {id(p) for p in norm["params"]} == {id(net[1].weight), id(net[1].bias)}
    assert norm["weight_decay"] == 0.5 / 64 and plain["weight_decay"] == 0.5
    Schedule(ScheduleConfig(name="constant"), 1, 1, base_lr=0.1).apply(opt, 0)
    assert plain["lr"] == 0.1 and norm["lr"] == pytest.approx(6.4)
    # With no gradient, a step is the decay alone: lr x decay = 0.05 for both groups.
    conv, shift = net[0].weight, net[1].bias
    with torch.no_grad():
        shift.fill_(1.0)
    before = [conv.detach().clone(), shift.detach().clone()]
    conv.grad, shift.grad = torch.zeros_like(conv), torch.zeros_like(shift)
    opt.step()
    assert torch.allclose(conv, before[0] * (1 - 0.05))
    assert torch.allclose(shift, before[1] * (1 - 0.05))
