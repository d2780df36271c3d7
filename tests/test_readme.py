"""The README's quickstarts run as written: every ```bash block's `cnnlab` command and every
```python block, in that order, in a folder holding only the recipes (as a checkout does), on
a few hundred real Fashion-MNIST images (the first ones of each split, written in the real IDX
format and found through $CNNLAB_DATA), so that a newcomer who copies them gets no error."""

from __future__ import annotations

import re
import shlex
import struct
from pathlib import Path

import numpy as np
import pytest

from cnnlab.cli import main
from cnnlab.data.sources import read_idx
from tests.helpers import FASHION, needs_fashion

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
TRAIN_IMAGES, TEST_IMAGES = 256, 128  # one step of the default batch per epoch


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), re.S)


def _commands(block: str) -> list[list[str]]:
    """The block's commands as argument lists: continued lines joined, comments dropped."""
    text = block.replace("\\\n", " ")
    return [shlex.split(line, comments=True) for line in text.splitlines() if line.strip()]


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(f">I{array.ndim}I", 0x800 | array.ndim, *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _few_fashion_images(folder: Path) -> Path:
    """Fashion-MNIST's first images of each split, as a folder cnnlab reads like the real one."""
    target = folder / "fashion_mnist"
    target.mkdir(parents=True)
    for split, count in (("train", TRAIN_IMAGES), ("t10k", TEST_IMAGES)):
        for kind, ndim in (("images-idx3", 3), ("labels-idx1", 1)):
            found = next(FASHION.glob(f"{split}-{kind}-ubyte*"))
            _write_idx(target / f"{split}-{kind}-ubyte", read_idx(found, ndim)[:count])
    return folder


def test_readme_installs_with_the_makefile_targets_it_names():
    makefile = (ROOT / "Makefile").read_text()
    commands = [c for block in _blocks("sh") for c in _commands(block)]
    assert ["pip", "install", "."] in commands
    for command in commands:
        if command[0] == "make":
            assert re.search(rf"^{command[1]}:", makefile, re.M), command


@needs_fashion
@pytest.mark.slow
def test_readme_quickstarts_run_as_written(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNLAB_DATA", str(_few_fashion_images(tmp_path / "data")))
    work = tmp_path / "work"
    work.mkdir()
    (work / "recipes").symlink_to(ROOT / "recipes")  # as in a checkout
    monkeypatch.chdir(work)
    commands = [c for block in _blocks("bash") for c in _commands(block)]
    assert [c[:2] for c in commands[:3]] == [["cnnlab", "train"]] * 2 + [["cnnlab", "eval"]]
    for command in commands:
        assert command[0] == "cnnlab", f"the README's bash blocks hold cnnlab commands: {command}"
        assert main(command[1:]) == 0, command

    code = _blocks("python")
    assert code, "the README has a Python quickstart"
    for block in code:
        exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})
    assert (work / "runs/mine/summary.json").is_file()
    assert (work / "runs/seed1/summary.json").is_file()


def test_readme_stays_a_short_read_that_links_into_the_docs():
    text = README.read_text()
    assert len(text.splitlines()) <= 250  # measurements and details belong in docs/
    links = re.findall(r"\]\(((?:docs|recipes)/[^)#]*)", text)
    assert len(links) > 10
    for link in links:
        assert (ROOT / link).exists(), f"README.md links to {link}, which does not exist"
