"""Numerics: exact input layout, and 'auto' choosing the measured fastest without side effects."""

import json

import pytest
import torch

from cnnlab.engine import numerics as num
from cnnlab.engine.numerics import Numerics, choose_numerics
from cnnlab.models.preact import PreactResNet
from tests.helpers import TINY_CPU, cli


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
def test_layout_gives_the_exact_strides_of_the_format(channels_last, channels):
    # A 1-channel batch from the NHWC loader has channels-last strides that also count as
    # contiguous; a conv fed the layout its weights do not have can be hundreds of times slower.
    n = Numerics("fp32", channels_last)
    canonical = torch.empty(4, channels, 6, 5, memory_format=n.memory_format).stride()
    for x in (torch.randn(4, 6, 5, channels).permute(0, 3, 1, 2), torch.randn(4, channels, 6, 5)):
        out = n.layout(x)
        assert out.stride() == canonical
        assert torch.equal(out, x)


def test_auto_picks_the_fastest_measured_and_caches_it(monkeypatch, tmp_path):
    monkeypatch.setattr(num, "CACHE_FILE", tmp_path / "numerics.json")
    # As on a GPU, where channels_last is among the candidates.
    monkeypatch.setattr(num, "channels_last_candidates", lambda device: [False, True])
    speeds = {"fp32": 100.0, "fp32+channels_last": 300.0, "bf16": 50.0, "bf16+channels_last": 60.0}
    calls = []

    def fake_speed(model, candidate, shape, device):
        calls.append(candidate.label)
        return speeds[candidate.label]

    monkeypatch.setattr(num, "_images_per_second", fake_speed)
    model = PreactResNet(depth=8, in_channels=1, base_width=4)
    args = (model, "tiny", (1, 28, 28), 128, torch.device("cpu"), "auto", "auto")
    chosen = choose_numerics(*args)
    assert (chosen.precision, chosen.channels_last) == ("fp32", True)
    assert chosen.measured == speeds and sorted(calls) == sorted(speeds)
    again = choose_numerics(*args)
    assert again == chosen and len(calls) == 4  # the second call reads the cache
    fixed = choose_numerics(*args[:5], "bf16", False)
    assert (fixed.precision, fixed.channels_last, fixed.measured) == ("bf16", False, {})


def test_auto_on_the_cpu_times_no_channels_last():
    # channels_last crashed now and then in torch 2.13's CPU convolutions: never chosen blindly.
    assert num.channels_last_candidates(torch.device("cpu")) == [False]
    assert num.channels_last_candidates(torch.device("cuda")) == [False, True]


def test_measuring_does_not_disturb_the_model_or_the_rng(monkeypatch, tmp_path):
    monkeypatch.setattr(num, "CACHE_FILE", tmp_path / "numerics.json")
    model = PreactResNet(depth=8, in_channels=1, base_width=4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    chosen = choose_numerics(model, "tiny", (1, 28, 28), 8, torch.device("cpu"), "auto", "auto")
    assert set(chosen.measured) == {"fp32", "bf16"}  # it did time both candidates
    assert torch.equal(torch.rand(3), expected)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_compile_auto_keeps_the_faster_of_compiled_and_eager_steps_and_caches_it(
    monkeypatch, tmp_path
):
    monkeypatch.setattr(num, "CACHE_FILE", tmp_path / "numerics.json")
    calls = []

    def fake_speed(model, candidate, shape, device, compiled=False):
        calls.append(compiled)
        return {False: 171.0, True: 318.0}[compiled]

    monkeypatch.setattr(num, "_images_per_second", fake_speed)
    model = PreactResNet(depth=8, in_channels=1, base_width=4)
    args = (model, "tiny", (1, 32, 32), 128, torch.device("cpu"))
    chosen = num.choose_compile(Numerics("bf16"), "auto", *args)
    assert chosen.compile and chosen.compile_measured == {"eager": 171.0, "compiled": 318.0}
    assert chosen.precision == "bf16" and sorted(calls) == [False, True]
    assert num.choose_compile(Numerics("bf16"), "auto", *args) == chosen and len(calls) == 2
    # Set explicitly, nothing is timed.
    assert not num.choose_compile(Numerics("bf16"), False, *args).compile
    assert num.choose_compile(Numerics("bf16"), True, *args).compile and len(calls) == 2


def test_a_run_with_compile_auto_records_its_choice(monkeypatch, tmp_path):
    # Eager measured faster here, so the short run needs no compilation.
    monkeypatch.setattr(
        num, "_images_per_second",
        lambda model, candidate, shape, device, compiled=False: 50.0 if compiled else 90.0,
    )  # fmt: skip
    out = tmp_path / "run"
    assert cli("train", "--out", str(out), *TINY_CPU, "train.epochs=1", "train.compile=auto") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["compile"] is False
    assert summary["numerics"]["compile_measured"] == {"eager": 90.0, "compiled": 50.0}
    assert "'compile_measured': {'eager': 90.0, 'compiled': 50.0}" in (out / "log.txt").read_text()
