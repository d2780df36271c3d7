"""The ImageNet networks of the published rows: pinned parameter counts, and outputs equal to the
official model code's with the same weights where that code is at hand.

The equivalence tests import the authors' files from checkouts named by environment variables
(CNNLAB_RECU_SOURCE: z-hXu/ReCU at 9a73bed; CNNLAB_NR_SOURCE:
joe-siyuan-qiao/NeuralRejuvenation-CVPR19 at 8f1f2aa), so the suite needs no copy of them; they
are skipped without them.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from cnnlab.models.binary import set_tau
from cnnlab.registry import build_model

torch.set_num_threads(1)


def n_params(name: str, **options: object) -> int:
    """Count a registered variant's parameters on the meta device."""
    with torch.device("meta"):
        model = build_model(name, **options)
    return sum(p.numel() for p in model.parameters())


# Counts with 1000 classes. ReCU's: its own resnet.py files built with these weights (the
# equivalence tests below), the ReCU paper states none. NR's README gives counts after
# rejuvenation only (11.9M / 21.9M / 26.4M / 46.6M / 8.22M / 36.4M); before it, NR's ResNets
# are torchvision's (11.7M ... 44.5M, torchvision's documented num_params).
COUNTS = [
    ("resnet18_1w1a_imagenet", 11_694_376),
    ("resnet34_1w1a_imagenet", 21_806_248),
    ("resnet18_1w1a_two_stage", 11_708_264),
    ("resnet34_1w1a_two_stage", 21_834_984),
    ("resnet18_nr", 11_689_512),
    ("resnet34_nr", 21_797_672),
    ("resnet50_nr", 25_557_032),
    ("resnet101_nr", 44_549_160),
    ("densenet121_nr", 7_915_688),
    ("vgg16_nr", 20_550_568),
    ("vgg16_gn", 138_365_992),
    ("resnext50_32x4d_gn", 25_028_904),
]


@pytest.mark.parametrize(("name", "count"), COUNTS)
def test_imagenet_row_networks_have_their_pinned_counts(name, count):
    assert n_params(name) == count


def test_nr_resnets_differ_from_torchvision_only_in_the_classifier_init():
    torch.manual_seed(0)
    nr, tv = build_model("resnet18_nr"), build_model("resnet18")
    assert [p.shape for p in nr.parameters()] == [p.shape for p in tv.parameters()]
    assert torch.all(nr.fc.bias == 0) and tv.fc.bias.abs().sum() > 0
    assert 0.009 < nr.fc.weight.std().item() < 0.011


def test_recu_imagenet_net_starts_with_tiny_bn_scales():
    # ReCU imagenet/models_imagenet/resnet.py:89-91: BatchNorm2d scales 1e-8, BatchNorm1d untouched.
    model = build_model("resnet18_1w1a_imagenet")
    scales = [m.weight for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert all(torch.all(w == 1e-8) for w in scales)
    assert torch.all(model.head[2].weight == 1)


def _load(path: Path, name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _official_recu(folder: str, arch: str) -> torch.nn.Module:
    """Build ReCU's `arch` from `<source>/<folder>` without running its argument parser."""
    root = Path(os.environ["CNNLAB_RECU_SOURCE"]) / folder
    saved = {k: sys.modules.get(k) for k in ("utils", "utils.options", "modules", "resnet_src")}
    try:
        # binarized_modules.py imports `args` from utils.options (which parses sys.argv).
        sys.modules["utils"] = types.ModuleType("utils")
        sys.modules["utils.options"] = types.SimpleNamespace(args=None)
        binarized = _load(root / "modules" / "binarized_modules.py", "modules")
        binarized.__all__ = [n for n in dir(binarized) if not n.startswith("_")]
        return getattr(_load(root / "models_imagenet" / "resnet.py", "resnet_src"), arch)()
    finally:
        for key, value in saved.items():
            if value is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = value


def _copy_weights(official: torch.nn.Module, ours: torch.nn.Module) -> None:
    """Copy the official state in registration order (the official `tau` buffers aside)."""
    theirs = [v for k, v in official.state_dict().items() if not k.endswith("tau")]
    mine = ours.state_dict()
    assert [tuple(v.shape) for v in theirs] == [tuple(v.shape) for v in mine.values()]
    ours.load_state_dict(dict(zip(mine, theirs, strict=True)))


needs_recu = pytest.mark.skipif(
    "CNNLAB_RECU_SOURCE" not in os.environ, reason="set CNNLAB_RECU_SOURCE to a ReCU checkout"
)


@needs_recu
@pytest.mark.parametrize(
    ("folder", "arch", "name"),
    [
        ("imagenet", "resnet18_1w1a", "resnet18_1w1a_imagenet"),
        ("imagenet", "resnet34_1w1a", "resnet34_1w1a_imagenet"),
        ("imagenet_two-stage", "resnet18_1w1a", "resnet18_1w1a_two_stage"),
    ],
)
def test_recu_imagenet_nets_equal_the_official_code(folder, arch, name):
    torch.manual_seed(0)
    official, ours = _official_recu(folder, arch), build_model(name)
    assert sum(p.numel() for p in official.parameters()) == n_params(name)
    # Random BN scales and shifts so that every layer's arithmetic shows in the output.
    for m in official.modules():
        if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.BatchNorm1d)):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    _copy_weights(official, ours)
    tau = 0.9
    for m in official.modules():
        if hasattr(m, "tau"):
            m.tau = torch.tensor(tau)
    set_tau(ours, tau)
    x = torch.randn(2, 3, 224, 224)  # the one-stage head pools a fixed 7x7 map
    for training in (True, False):
        official.train(training)
        ours.train(training)
        assert torch.allclose(ours(x), official(x), atol=1e-5, rtol=1e-4)


needs_nr = pytest.mark.skipif(
    "CNNLAB_NR_SOURCE" not in os.environ,
    reason="set CNNLAB_NR_SOURCE to a NeuralRejuvenation-CVPR19 checkout",
)
NR_STATE = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _official_nr(module: str, arch: str) -> torch.nn.Module:
    """Build NR's `arch` from `<source>/models/imagenet/<module>.py` (package `models`)."""
    sys.path.insert(0, os.environ["CNNLAB_NR_SOURCE"])
    try:
        return getattr(importlib.import_module(f"models.imagenet.{module}"), arch)()
    finally:
        sys.path.pop(0)
        for key in [k for k in sys.modules if k == "models" or k.startswith("models.")]:
            del sys.modules[key]


@needs_nr
@pytest.mark.parametrize(
    ("module", "arch", "name"),
    [
        ("resnet", "resnet18_nr", "resnet18_nr"),
        ("resnet", "resnet50_nr", "resnet50_nr"),
        ("vgg", "vgg_nr", "vgg16_nr"),
        ("densenet", "densenet121_nr", "densenet121_nr"),
    ],
)
def test_nr_imagenet_nets_equal_the_official_code(module, arch, name):
    torch.manual_seed(0)
    official, ours = _official_nr(module, arch), build_model(name)
    assert sum(p.numel() for p in official.parameters()) == n_params(name)
    for m in official.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.5, 1.5)
            torch.nn.init.uniform_(m.bias, -0.2, 0.2)
    # NR's units carry bookkeeping buffers (live masks, sizes); the weights and BN state come in
    # the same order as cnnlab's, the 1x1-conv classifier as a linear map.
    theirs = [v for k, v in official.state_dict().items() if k.rsplit(".", 1)[-1] in NR_STATE]
    mine = ours.state_dict()
    copied = {k: v.reshape(w.shape) for (k, w), v in zip(mine.items(), theirs, strict=True)}
    ours.load_state_dict(copied)
    x = torch.randn(2, 3, 64, 64)
    for training in (True, False):
        official.train(training)
        ours.train(training)
        # NR applies its classifier before the global average pool (imagenet.py:361-362).
        expected = official(x).mean(dim=(-2, -1)).flatten(1)
        # float32 rounding relative to the logits' scale (DenseNet's reach 1e4 with random BN)
        assert (ours(x) - expected).abs().max() <= 1e-5 * expected.abs().max()
