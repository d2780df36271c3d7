"""The CUDA paths' set-up: the run's device made current, the backend policy and its report,
the numerics cache key, the benchmarks' device and policy, PatchShuffle's stream across
devices, the speedrun recipe's per-epoch work. What exists on the CPU is tested here on the
CPU; the rest carries needs_cuda (skipped without a GPU)."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import pytest
import torch

from cnnlab.config import load_config
from cnnlab.engine import backends, numerics
from cnnlab.engine.backends import apply_backend_policy
from cnnlab.engine.checkpoint import load_checkpoint, save_checkpoint
from cnnlab.engine.trainer import Trainer
from cnnlab.methods.patch_shuffle_features import FeaturePatchShuffle
from cnnlab.registry import build_model
from tests.test_gpu_paths import KillAt, Stop, easy_data, settings, tiny_net

CPU = torch.device("cpu")


@pytest.fixture
def restore_backends():
    """The backend globals are process-wide: leave them as the other tests expect."""
    before = (torch.backends.cudnn.benchmark, torch.are_deterministic_algorithms_enabled(),
              torch.backends.cudnn.deterministic)  # fmt: skip
    yield
    torch.backends.cudnn.benchmark = before[0]
    torch.use_deterministic_algorithms(before[1])
    torch.backends.cudnn.deterministic = before[2]


def test_a_cuda_run_makes_its_device_the_current_one(monkeypatch, restore_backends):
    # CUDA events, RNG states and device-less allocations go to the current device: a run on
    # cuda:1 must not record its clock on cuda:0's stream or save cuda:0's RNG.
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    apply_backend_policy(torch.device("cuda:1"), True, None, False)
    assert current == [torch.device("cuda:1")]
    apply_backend_policy(CPU, True, None, False)
    assert current == [torch.device("cuda:1")]  # a CPU run leaves CUDA alone


@pytest.mark.parametrize("cuda_started", [False, True])
def test_cublas_workspace_is_reported_in_force_only_when_set_before_cuda(
    monkeypatch, restore_backends, cuda_started
):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.setattr(backends, "_late_cublas_workspace", False)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: cuda_started)
    state = apply_backend_policy(CPU, True, None, True)
    if cuda_started:
        assert state["cublas_workspace"].startswith(":4096:8 (set after CUDA started")
    else:
        assert state["cublas_workspace"] == ":4096:8"
    # A value the user set before starting the process is in force as it is.
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    monkeypatch.setattr(backends, "_late_cublas_workspace", False)
    assert apply_backend_policy(CPU, True, None, True)["cublas_workspace"] == ":16:8"


def test_the_cuda_numerics_cache_key_follows_the_backend_settings(restore_backends):
    cuda = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    with_benchmark = numerics._backend_key(cuda)
    torch.backends.cudnn.benchmark = False
    assert numerics._backend_key(cuda) != with_benchmark
    torch.use_deterministic_algorithms(True, warn_only=True)
    assert any(k == "deterministic=True" for k in numerics._backend_key(cuda))
    assert numerics._backend_key(CPU) == []  # CPU keys as before: cached verdicts still apply


def test_gpu_checks_auto_section_leaves_the_numerics_cache_where_it_was(monkeypatch):
    monkeypatch.syspath_prepend("benchmarks")
    from gpu_check import auto

    before = numerics.CACHE_FILE
    args = argparse.Namespace(model="speednet", batches=[4])
    rows = auto(args, CPU, "")
    assert numerics.CACHE_FILE == before
    assert rows[0]["choice"] in ("fp32", "bf16") and "error" not in rows[0]


def test_throughputs_device_and_policy_hold_for_every_phase(monkeypatch):
    monkeypatch.syspath_prepend("benchmarks")
    import throughput

    policies = []
    monkeypatch.setattr(throughput, "apply_backend_policy", lambda *a: policies.append(a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a CUDA host
    case = throughput.Case("speednet", "cifar10", batch=4, device="cpu")
    stepper = throughput.Stepper(case, numerics.Numerics())
    assert stepper.device == CPU  # --cpu / device=cpu is not overridden by 'auto'
    assert throughput.graph_floor(case, numerics.Numerics(), 0.1) == (None, "n/a on CPU")
    # The floor applies a cnnlab run's default backend policy (cudnn.benchmark on) itself.
    assert policies == [(CPU, True, None, False)]


def fake_trainer(model: torch.nn.Module, step: int, logs: list[str]) -> SimpleNamespace:
    return SimpleNamespace(
        model=model, input_shape=(3, 32, 32), device=CPU, dist=SimpleNamespace(rank=0),
        cfg=SimpleNamespace(model=SimpleNamespace(name="preact_resnet20")), step=step,
        run=SimpleNamespace(log=logs.append),
    )  # fmt: skip


def patch_shuffle(seed: int = 3) -> FeaturePatchShuffle:
    cfg = load_config(None, ["augment.patch_shuffle_prob=1.0",
                             "augment.patch_shuffle_stages=[0,1,1,1]"]).augment  # fmt: skip
    return FeaturePatchShuffle(cfg, seed)


def test_a_patch_shuffle_stream_saved_on_cuda_resumes_on_the_cpu():
    model = build_model("preact_resnet20", base_width=4).train()
    method, logs = patch_shuffle(), []
    # A CUDA generator's state: 16 bytes (seed and offset), which a CPU generator refuses.
    method.load_state_dict({"generator": torch.zeros(16, dtype=torch.uint8)})
    method.on_train_start(fake_trainer(model, 40, logs))
    assert logs == ["note: the PatchShuffle-features stream was saved on another device type "
                    "than cpu; it restarts from the seed at step 40"]  # fmt: skip
    model(torch.randn(2, 3, 32, 32))  # draws from the restarted stream
    # A state of this device type still continues exactly (no note).
    saved, logs = method.state_dict(), []
    resumed = patch_shuffle()
    resumed.load_state_dict(saved)
    resumed.on_train_start(fake_trainer(model, 41, logs))
    assert logs == [] and torch.equal(resumed.generator.get_state(), saved["generator"])


def test_the_speedrun_recipe_checkpoints_and_plots_once_at_its_end():
    cfg = load_config("recipes/cifar10/speedrun_gpu.yaml")
    t = cfg.train
    assert t.checkpoint_every >= t.epochs and t.plot_every >= t.epochs


# ---------------------------------------------------------------------------- CUDA only
@pytest.mark.needs_cuda
def test_cuda_fused_sgd_after_a_skipped_first_step_matches_unfused_sgd():
    from cnnlab.engine.optim import build_optimizer
    from cnnlab.engine.step import make_scaler
    from tests.test_fused_sgd import SGD, fp16_step, linear_model

    cuda = torch.device("cuda")
    models = []
    for fused in (True, False):
        model = linear_model().to(cuda)
        opt = build_optimizer(model, SGD, fused=fused)
        scaler = make_scaler("fp16", cuda)
        poison = [torch.full_like(p, 1e30) for p in model.parameters()]
        del poison  # the caching allocator hands this block to the next allocation
        fp16_step(model, opt, scaler, torch.full((8, 64), float("inf"), device=cuda))
        assert scaler.get_scale() == 2.0**15
        assert not any("momentum_buffer" in s for s in opt.state.values())
        torch.manual_seed(1)
        for _ in range(3):
            fp16_step(model, opt, scaler, torch.randn(8, 64, device=cuda))
        models.append(model)
    for a, b in zip(*(m.parameters() for m in models)):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.needs_cuda
def test_cuda_fp16_resume_of_an_unfused_checkpoint_trains_on_fused(tmp_path):
    kw = settings(precision="fp16", device="cuda", epochs=3)
    with pytest.raises(Stop):
        Trainer(tiny_net(), easy_data(), run_dir=tmp_path, callbacks=[KillAt(3)], **kw).fit()
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["optimizer"]["param_groups"][0]["fused"] is True
    for group in state["optimizer"]["param_groups"]:
        group["fused"] = None  # as an unfused (CPU, or older) run saved it
    save_checkpoint(tmp_path / "last.pt", state)
    trainer = Trainer(tiny_net(), easy_data(), run_dir=tmp_path, resume=True, **kw)
    summary = trainer.fit()
    assert summary["epochs"] == 3
    assert all(group["fused"] is True for group in trainer.optimizer.param_groups)


@pytest.mark.needs_cuda
def test_a_run_on_a_second_gpu_keeps_its_clock_and_rng_there(tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs two CUDA devices")
    kw = settings(precision="fp32", device="cuda:1", epochs=1)
    summary = Trainer(tiny_net(), easy_data(), run_dir=tmp_path, **kw).fit()
    assert summary["device"] == "cuda:1" and torch.cuda.current_device() == 1
    saved = load_checkpoint(tmp_path / "last.pt")["rng"]["cuda"]
    assert torch.equal(saved, torch.cuda.get_rng_state(1))
    assert summary["train_images_per_s"] > 0


@pytest.mark.needs_cuda
def test_the_epoch_clock_times_the_device_work():
    from cnnlab.engine.step import EpochClock

    clock = EpochClock(torch.device("cuda"))
    clock.start()
    x = torch.randn(2048, 2048, device="cuda")
    for _ in range(20):
        x = x @ x / 2048
    assert clock.seconds() > 0


@pytest.mark.needs_cuda
def test_a_patch_shuffle_stream_saved_by_a_cuda_run_resumes_on_the_cpu():
    cuda_state = torch.Generator(device="cuda").manual_seed(0).get_state()
    model = build_model("preact_resnet20", base_width=4).train()
    method, logs = patch_shuffle(), []
    method.load_state_dict({"generator": cuda_state})
    method.on_train_start(fake_trainer(model, 7, logs))
    assert "restarts from the seed at step 7" in logs[0]
