"""fp16/bf16 training with its scaler, torch.compile, per-epoch intervals and the sync-free step:
what runs on the CPU is tested here; the CUDA-only checks skip without a GPU."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import cnnlab
from cnnlab.datasets import from_tensors
from cnnlab.engine.checkpoint import load_checkpoint
from cnnlab.engine.sync_count import SyncCounter
from cnnlab.engine.trainer import Trainer
from cnnlab.methods.probes import ProbeCallback, ProbesSettings


def easy_data(val_size: int = 0):
    """512 training and 128 test 12x12 RGB images, 4 classes told apart by their colour."""
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 4, (640,), generator=g)
    colour = torch.rand(4, 1, 1, 3, generator=g) * 255
    noise = torch.rand(640, 12, 12, 3, generator=g) * 60
    images = (colour[labels] * 0.7 + noise).clamp(0, 255).to(torch.uint8)
    return from_tensors(images[:512], labels[:512], images[512:], labels[512:],
                        mean=[0.5] * 3, std=[0.25] * 3, val_size=val_size)  # fmt: skip


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 4),
    )  # fmt: skip


class Stop(Exception):
    """Ends a run the way a kill would: between epochs, after the last checkpoint."""


class KillAt(cnnlab.Callback):
    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_epoch_start(self, trainer, epoch):
        if epoch == self.epoch:
            raise Stop


def settings(**extra):
    base = dict(epochs=3, batch_size=64, seed=0, channels_last=False, optim={"lr": 0.2})
    return {**base, **extra}


def whole_and_resumed(tmp_path, kill_at: int = 2, data=easy_data, **extra):
    """Train uninterrupted, and killed before epoch `kill_at` then resumed; return both
    last.pt states."""
    kw = settings(**extra)
    Trainer(tiny_net(), data(), run_dir=tmp_path / "whole", **kw).fit()
    with pytest.raises(Stop):
        Trainer(tiny_net(), data(), run_dir=tmp_path / "killed", callbacks=[KillAt(kill_at)],
                **kw).fit()  # fmt: skip
    Trainer(tiny_net(), data(), run_dir=tmp_path / "killed", resume=True, **kw).fit()
    return load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(
        tmp_path / "killed" / "last.pt"
    )


def same_weights(a, b) -> bool:
    return all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_half_precisions_learn_on_the_cpu(precision):
    summary = Trainer(tiny_net(), easy_data(), **settings(precision=precision)).fit()
    assert summary["numerics"]["precision"] == precision
    # ln 4 = 1.39 at chance; measured 0.07 in fp32 and both half precisions here.
    assert summary["final"]["train_loss"] < 0.5
    assert summary["final"]["test_error"] < 20.0


def test_fp16_keeps_its_scaler_in_the_checkpoint_and_resumes_bit_for_bit(tmp_path):
    whole, resumed = whole_and_resumed(tmp_path, precision="fp16")
    assert same_weights(whole, resumed)
    # The scaler's growth tracker counts the steps since its last change: 3 epochs of 8 steps,
    # so the resumed run continued the saved one rather than starting a new scaler.
    assert whole["scaler"] == resumed["scaler"]
    assert resumed["scaler"]["_growth_tracker"] == 24
    assert load_checkpoint(tmp_path / "whole" / "last.pt")["numerics"]["precision"] == "fp16"


def test_compiled_run_learns_and_resumes_like_an_uncompiled_one(tmp_path):
    # fp32 both: precision=auto measures per machine and may pick bf16 for one of the two.
    compiled, compiled_resumed = whole_and_resumed(tmp_path / "c", compile=True, precision="fp32")
    _, plain_resumed = whole_and_resumed(tmp_path / "p", compile=False, precision="fp32")
    summary = json.loads((tmp_path / "c" / "whole" / "summary.json").read_text())
    assert summary["compile"] is True
    assert summary["final"]["train_loss"] < 0.5
    # Same process, same generated kernels: a killed-and-resumed compiled run is the compiled
    # run bit for bit. Inductor's kernels sum in another order than eager's, so against the
    # uncompiled run only closeness holds (measured: losses equal to 3e-7 after 24 steps).
    assert same_weights(compiled, compiled_resumed)
    for key, value in plain_resumed["model"].items():
        if value.is_floating_point():
            assert torch.allclose(compiled_resumed["model"][key], value, atol=1e-4), key


def test_checkpoint_interval_loses_at_most_that_many_epochs_and_still_resumes_exactly(tmp_path):
    # checkpoint_every=2: a kill before epoch 2 finds no checkpoint, so the run restarts.
    whole, resumed = whole_and_resumed(tmp_path, kill_at=2, precision="fp32", checkpoint_every=2)
    assert same_weights(whole, resumed)
    log = (tmp_path / "killed" / "log.txt").read_text()
    assert "resumed after" not in log
    # A kill before epoch 3 resumes from epoch 2's checkpoint.
    whole, resumed = whole_and_resumed(tmp_path / "b", kill_at=3, precision="fp32",
                                       checkpoint_every=2)  # fmt: skip
    assert same_weights(whole, resumed)
    assert "resumed after epoch 2" in (tmp_path / "b" / "killed" / "log.txt").read_text()


def test_best_pt_only_with_a_validation_split(tmp_path):
    kw = settings(precision="fp32", epochs=2)
    Trainer(tiny_net(), easy_data(), run_dir=tmp_path / "noval", **kw).fit()
    assert not (tmp_path / "noval" / "best.pt").exists()
    with pytest.raises(cnnlab.UserError, match="use last.pt"):
        load_checkpoint(tmp_path / "noval" / "best.pt")
    Trainer(tiny_net(), easy_data(val_size=64), run_dir=tmp_path / "val", **kw).fit()
    best = load_checkpoint(tmp_path / "val" / "best.pt")
    assert best["best"]["chosen_by"] == "val"


def test_probes_and_plots_follow_their_intervals(tmp_path):
    probes = ProbeCallback(ProbesSettings(every=2))
    kw = settings(precision="fp32", plot_every=5)
    Trainer(tiny_net(), easy_data(), run_dir=tmp_path, callbacks=[probes], **kw).fit()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert ["probe_dead_relu" in row for row in rows] == [False, True, True]  # 2 and the last
    assert (tmp_path / "curves.png").exists()  # the last epoch always plots


def test_summary_and_log_record_the_backend_policy(tmp_path):
    Trainer(tiny_net(), easy_data(), run_dir=tmp_path, **settings(precision="fp32", epochs=1)).fit()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert {"cudnn_benchmark", "tf32_matmul", "tf32_cudnn", "deterministic"} <= set(
        summary["backends"]
    )
    assert "backends: {" in (tmp_path / "log.txt").read_text()


@pytest.mark.needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_steps_do_not_sync_the_host(precision):
    """Budget: no sync in a step, except the loss check (every 25 steps and the epoch's last
    step) and the first step, which also starts the epoch's data order; those take <= 3.
    With bn.momentum dynamic and erase_fill mean, the two per-step syncs this replaced."""
    from cnnlab.methods.bn_momentum import BNMomentum

    counter = SyncCounter()
    kw = settings(precision=precision, epochs=2, device="cuda",
                  augment={"erase_prob": 0.5, "erase_fill": "mean"})  # fmt: skip
    Trainer(tiny_net(), easy_data(), callbacks=[BNMomentum("dynamic"), counter], **kw).fit()
    first, *inner, last = counter.per_step
    assert inner == [0] * len(inner), counter.per_step
    assert first <= 3 and last <= 3, counter.per_step


@pytest.mark.needs_cuda
def test_checkpoint_keeps_only_the_current_devices_cuda_rng():
    from cnnlab.engine.checkpoint import rng_state, set_rng_state

    state = rng_state()
    assert isinstance(state["cuda"], torch.Tensor)
    set_rng_state({**state, "cuda": [state["cuda"]]})  # the older every-device list loads too


def test_deterministic_pooling_changes_no_value_and_the_run_reports_determinism(tmp_path):
    from cnnlab.engine.backends import GlobalAvgPool, deterministic_pooling
    from cnnlab.registry import build_model

    torch.manual_seed(0)
    model = build_model("preact_resnet20", in_channels=1, base_width=4)
    x = torch.randn(4, 1, 28, 28)
    before = model(x)
    assert deterministic_pooling(model) == 1
    assert any(isinstance(m, GlobalAvgPool) for m in model.modules())
    assert torch.allclose(model(x), before, atol=1e-6)

    try:
        kw = settings(precision="fp32", epochs=1, deterministic=True)
        Trainer(tiny_net(), easy_data(), run_dir=tmp_path, **kw).fit()
        backends = json.loads((tmp_path / "summary.json").read_text())["backends"]
        assert backends["deterministic"] and backends["cudnn_deterministic"]
        assert backends["cublas_workspace"]
    finally:  # process-wide settings: leave them as the other tests expect
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
