"""benchmarks/gpu_first_run.sh --cpu, as on a GPU machine: a python that has torch but neither
cnnlab nor pydantic, the missing packages carried as wheels and Fashion-MNIST carried beside
them in the git-ignored folder. The script installs the wheels, finds cnnlab through
PYTHONPATH and writes every section it runs under $OUT."""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.helpers import FASHION, needs_fashion

REPO = Path(__file__).resolve().parent.parent
# What the GPU machine's python lacks, and typing_extensions, which it has (torch needs it) but
# perhaps older than pydantic needs: the carried one goes first on the path.
MISSING = ["pydantic", "pydantic_core", "annotated_types", "typing_inspection"]
CARRIED = [*MISSING, "typing_extensions"]
# The dry run's sections: the others run on the CPU in tests/test_gpu_check.py, through the
# same gpu_check.py; these are the ones only the first run has, and auto.
SECTIONS = "env,fused_sgd,syncs,auto,cuda_tests,fashion_mnist"


def _top_level(dist: importlib.metadata.Distribution) -> set[str]:
    """Return the site-packages entries a distribution installed (its packages, modules and
    dist-info folder)."""
    return {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}


def bare_python(folder: Path) -> Path:
    """Return a venv's python that sees this environment's packages (torch, numpy, pip ...)
    except cnnlab and pydantic's, as the GPU machine's python does."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    leave_out = {e for name in MISSING for e in _top_level(importlib.metadata.distribution(name))}
    there = next((folder / "lib").glob("python*/site-packages"))
    for here in {Path(sysconfig.get_paths()[kind]) for kind in ("purelib", "platlib")}:
        for entry in here.iterdir():
            skip = entry.name in leave_out or "cnnlab" in entry.name or entry.name == "__pycache__"
            if not skip and not (there / entry.name).exists():
                (there / entry.name).symlink_to(entry)
    return folder / "bin" / "python"


def wheel_of(name: str, folder: Path) -> Path:
    """Pack an installed distribution back into a wheel (its files, its own dist-info)."""
    dist = importlib.metadata.distribution(name)
    tag = next(
        line.split(":", 1)[1].strip()
        for line in (dist.read_text("WHEEL") or "").splitlines()
        if line.startswith("Tag:")
    )
    path = folder / f"{dist.metadata['Name'].replace('-', '_')}-{dist.version}-{tag}.whl"
    base = Path(str(dist.locate_file("")))
    with zipfile.ZipFile(path, "w") as archive:
        for f in dist.files or []:
            source = base / str(f)
            if not str(f).startswith("..") and "__pycache__" not in str(f) and source.is_file():
                archive.write(source, str(f))
    return path


@needs_fashion
def test_the_cpu_dry_run_installs_the_carried_wheels_and_writes_each_section(tmp_path):
    python = bare_python(tmp_path / "bare")
    lacks = subprocess.run([str(python), "-c", "import torch, pip\nimport pydantic"],
                           capture_output=True, text=True)  # fmt: skip
    assert "No module named 'pydantic'" in lacks.stderr  # torch and pip are there, pydantic not
    carried = tmp_path / "carried"
    (carried / "wheels").mkdir(parents=True)
    for name in CARRIED:
        wheel_of(name, carried / "wheels")
    (carried / "data").mkdir()
    (carried / "data" / "fashion_mnist").symlink_to(FASHION, target_is_directory=True)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CNNLAB_DATA")}
    env.update(PYTHON=str(python), OUT=str(out), CNNLAB_GPU_DIR=str(carried),
               OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))  # fmt: skip
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_first_run.sh"), "--cpu", "--sections", SECTIONS],
        capture_output=True, text=True, env=env, timeout=180, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (
        "lacks pydantic pydantic_core annotated_types typing_inspection; "
        "installing 5 carried wheels" in done.stdout
    )
    log = (out / "gpu_first_run.log").read_text()
    assert "gpu_first_run: exit 0" in log
    result = json.loads((out / "gpu_first_run.json").read_text())
    for section in SECTIONS.split(","):
        assert "error" not in json.dumps(result[section]), result[section]
    env_row = result["env"]
    # cnnlab came from this checkout through PYTHONPATH, pydantic from the carried wheels.
    assert env_row["cnnlab"] == str(REPO / "cnnlab")
    assert env_row["executable"].startswith(str(tmp_path / "bare"))
    assert env_row["pydantic"] == importlib.metadata.version("pydantic")
    assert env_row["cnnlab_data"] == str(carried / "data")
    fused = result["fused_sgd"]
    assert (
        fused["fused"]["first_step_skipped"] and fused["fused"]["momentum_buffers_after_skip"] == 0
    )
    assert fused["max_weight_difference"] < 1e-5
    assert fused["resume_fp16_step"] == "ok, fused=True"
    # Without CUDA the needs_cuda tests are selected and skipped, not failed or missed.
    tests = result["cuda_tests"]
    assert tests["returncode"] == 0 and "skipped" in tests["summary"], tests
    assert "passed" not in tests["summary"] and "failed" not in tests["summary"]
    assert (out / "cuda_tests.txt").exists()
    run = result["fashion_mnist"]
    assert run["data"] == str(carried / "data" / "fashion_mnist")
    assert 0 <= run["test_accuracy"] <= 100 and run["train_images_per_s"] > 0
    assert "test_error" in (out / "fashion_mnist_log.txt").read_text() or run["epochs"] == 1


def test_a_python_without_cnnlabs_packages_and_no_wheels_is_told_what_is_missing(tmp_path):
    python = bare_python(tmp_path / "bare")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHON=str(python), OUT=str(tmp_path / "out"),
               CNNLAB_GPU_DIR=str(tmp_path / "nothing"))  # fmt: skip
    done = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh"), "--cpu", "--tiny"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert "missing: pydantic pydantic_core annotated_types typing_inspection" in done.stderr
    assert "carry the missing packages as wheels" in done.stderr


def test_an_unknown_section_is_named_with_the_valid_ones(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from gpu_check import main

    monkeypatch.setattr(sys, "argv", ["gpu_check.py", "--cpu", "--sections", "env,floor"])
    with pytest.raises(SystemExit, match="unknown section 'floor'; choose from env, fused_sgd"):
        main()
