"""`pip install .` (not editable) works from any folder: the package list names every package,
and the default and shipped recipes travel as package data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomllib

from tests.helpers import needs_fashion

ROOT = Path(__file__).resolve().parent.parent


def test_the_package_list_names_every_package_folder():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "cnnlab").rglob("__init__.py")
    }
    assert found | {"cnnlab.recipes"} == listed


@needs_fashion
def test_an_installed_copy_trains_from_another_folder(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-2000:]
    assert (target / "cnnlab" / "recipes" / "default.yaml").is_file()
    assert (target / "cnnlab" / "recipes" / "cifar10" / "resnet20.yaml").is_file()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}
    check = subprocess.run(
        [sys.executable, "-c", "import cnnlab, cnnlab.config as c; print(c.RECIPES_DIR); "
         "print(c.load_config('recipes/cifar10/resnet20.yaml').model.name)"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stderr[-2000:]
    assert str(target) in check.stdout and "resnet20" in check.stdout
    run = subprocess.run(
        [sys.executable, "-m", "cnnlab", "train", "train.epochs=1", "data.train_limit=512",
         "data.test_limit=256", "train.batch_size=128", "train.device=cpu", "eval.tta=none",
         "train.precision=fp32", "--out", "run"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert (elsewhere / "run" / "summary.json").is_file()


def test_the_licence_is_shipped_and_declared():
    licence = (ROOT / "LICENSE").read_text()
    assert licence.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in licence
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT" and project["license-files"] == ["LICENSE"]
    assert project["readme"] == "README.md" and (ROOT / "README.md").is_file()
    classifiers = project["classifiers"]
    assert "Programming Language :: Python :: 3" in classifiers
    assert any(c.startswith("Topic :: Scientific/Engineering") for c in classifiers)


def test_the_version_has_one_source():
    import cnnlab
    from cnnlab.version import VERSION

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert setup["project"]["dynamic"] == ["version"]
    assert setup["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "cnnlab.version.VERSION"}
    assert cnnlab.__version__ == VERSION
