"""`cnnlab models`: counted on meta tensors (no weights allocated or initialised), each net's
input size said, FLOPs with units."""

from __future__ import annotations

import pytest

from cnnlab.commands import with_unit
from cnnlab.registry import ModelEntry, list_models, model_entry
from tests.helpers import IMAGENET_FAMILIES, cli


@pytest.fixture
def built(monkeypatch):
    # The device of every net the command builds.
    devices = []
    real = ModelEntry.build

    def build(self, **options):
        model = real(self, **options)
        devices.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(ModelEntry, "build", build)
    monkeypatch.setenv("COLUMNS", "400")
    return devices


def test_models_are_counted_without_weights_and_say_their_input_size(capsys, built):
    assert cli("models", "resnet[25]0", "--flops") == 0
    text = capsys.readouterr().out
    assert built == ["meta", "meta"]
    lines = {line.split()[1]: line for line in text.splitlines() if "resnet" in line}
    # resnet50 at 1000 classes: torchvision's 25,557,032 parameters and 4.09 G multiply-adds.
    assert "224x224 (ImageNet)" in lines["resnet50"] and "25.56 M" in lines["resnet50"]
    assert "8.18 G" in lines["resnet50"]
    assert "32x32 (CIFAR)" in lines["resnet20"] and "0.27 M" in lines["resnet20"]
    assert "81.1 M" in lines["resnet20"]
    assert "224x224 nets: 1000 classes" in text and "32x32 nets: 10 classes" in text


def test_meta_counts_equal_real_ones(capsys, built):
    assert cli("models", "resnet20", "--flops", "--classes", "7") == 0
    meta = capsys.readouterr().out.splitlines()
    from cnnlab.analysis.profile import count_flops, count_params
    from cnnlab.registry import build_model

    real = build_model("resnet20", in_channels=3, num_classes=7)
    row = next(line for line in meta if " resnet20 " in line)
    assert f"{count_params(real) / 1e6:.2f} M" in row
    assert with_unit(count_flops(real, (3, 32, 32))) in row


def test_the_imagenet_sized_families_say_so():
    for name in list_models():
        entry = model_entry(name)
        assert (entry.image_size == 224) == (entry.factory.__name__ in IMAGENET_FAMILIES), name


@pytest.mark.parametrize(
    "count, text",
    [
        (62.0e6, "62.0 M"),
        (1.82e9, "1.82 G"),
        (626_403_328, "626 M"),
        (512, "512"),
        (3.5e3, "3.50 k"),
        (999.9e6, "1.00 G"),  # three digits of 999.9 M would read 1000 M
        (99.97e6, "100 M"),
    ],
)
def test_flops_carry_units(count, text):
    assert with_unit(count) == text


def test_a_meta_model_holds_no_memory():
    from cnnlab.analysis.profile import shape_only
    from cnnlab.registry import build_model

    model = shape_only(build_model, "vgg16", num_classes=1000)
    assert all(p.is_meta for p in model.parameters())
