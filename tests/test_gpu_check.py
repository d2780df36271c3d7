"""benchmarks/gpu_check.sh runs end to end on the CPU (--cpu --tiny) and writes every section;
its synthetic CIFAR-10 is read by cnnlab's own CIFAR-10 reader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def test_gpu_check_runs_on_the_cpu_and_writes_every_section(tmp_path):
    out = tmp_path / "check.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
           "CNNLAB_DATA": str(tmp_path / "no-data")}  # fmt: skip
    done = subprocess.run(
        [str(BENCHMARKS / "gpu_check.sh"), "--cpu", "--tiny", "--out", str(out)],
        capture_output=True, text=True, env=env, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    for section in ("floor_vs_loop", "syncs", "auto", "compile", "speedrun"):
        assert "error" not in result[section], result[section]
    assert {r["precision"] for r in result["floor_vs_loop"]} == {"fp32", "bf16"}
    assert all(r["floor"] > 0 and r["loop_epoch"] > 0 for r in result["floor_vs_loop"])
    # The CUDA-graph floor is CUDA only, and the row says why it is missing.
    assert all(r["graph_floor"] is None and r["graph_note"] == "n/a on CPU"
               for r in result["floor_vs_loop"])  # fmt: skip
    assert result["auto"][0]["choice"] in ("fp32", "bf16")
    assert [r["compile"] for r in result["compile"]] == [False, True]
    run = result["speedrun"]
    assert [r["seed"] for r in run["runs"]] == [0]  # --tiny: one seed (three otherwise)
    assert 0 <= run["test_accuracy"] == run["runs"][0]["test_accuracy"] <= 100
    assert 0 < run["runs"][0]["train_seconds"] < run["wall_seconds"]
    # No real CIFAR-10 was reachable (CNNLAB_DATA points nowhere), and the JSON says so; a
    # machine with CIFAR-10 in the cache or /usr/share/datasets would read "real".
    assert result["data_source"].startswith(("synthetic", "real"))


def test_the_synthetic_cifar10_is_read_by_cnnlab_and_learnable(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from throughput import write_cifar10
    finally:
        sys.path.remove(str(BENCHMARKS))
    from cnnlab.data.sources import load_split

    write_cifar10(tmp_path, learnable=True)
    train = load_split("cifar10", "train", str(tmp_path))
    test = load_split("cifar10", "test", str(tmp_path))
    assert train.images.shape == (50000, 32, 32, 3) and test.images.shape == (10000, 32, 32, 3)
    # Learnable: nearest class mean (from training images) names most test images' class.
    x = train.images.float().flatten(1)
    means = torch.stack([x[train.labels == c].mean(0) for c in range(10)])
    guess = torch.cdist(test.images.float().flatten(1)[:1000], means).argmin(1)
    assert (guess == test.labels[:1000]).float().mean() > 0.9


def test_the_conventional_loop_reports_its_fastest_worker_count(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from throughput import Case, conventional, worker_counts, write_cifar10

    from cnnlab.engine.numerics import Numerics

    counts = worker_counts()
    assert counts[:2] == [0, 1] and counts[-1] <= max(1, len(os.sched_getaffinity(0)))
    write_cifar10(tmp_path, per_batch=40)
    case = Case("speednet", "cifar10", str(tmp_path), batch=8)
    rate, workers, rates = conventional(case, Numerics(), images=96)
    assert set(rates) == set(counts) and all(r > 0 for r in rates.values())
    assert rate == max(rates.values()) == rates[workers]


@pytest.mark.needs_cuda
def test_the_graph_floor_captures_and_replays_the_step_on_cuda(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    from throughput import Case, floor, graph_floor

    from cnnlab.engine.numerics import Numerics

    case = Case("speednet", "cifar10", batch=64)
    rate, note = graph_floor(case, Numerics("fp32"), seconds=0.5)
    assert rate is not None and rate > 0, note
    # No launch or Python overhead: replaying the graph is not slower than the eager floor
    # (a loose bound: both are timed over half a second).
    assert rate > 0.5 * floor(case, Numerics("fp32"), seconds=0.5)
    rate, note = graph_floor(case, Numerics("fp16"), 0.1)
    assert rate is None and note.startswith("n/a for fp16")


def test_the_graph_floor_is_not_applicable_on_the_cpu(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from throughput import Case, graph_floor

    from cnnlab.engine.numerics import Numerics

    assert graph_floor(Case("speednet", "cifar10"), Numerics(), 0.1) == (None, "n/a on CPU")
