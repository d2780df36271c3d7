"""The documentation site builds with `mkdocs build --strict` (a broken link, a missing anchor or
a page left out of the navigation fails it), and the built site has every page of the
navigation, the API reference rendered from the docstrings, and a recipe table that lists
every shipped recipe."""

from __future__ import annotations

import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import cnnlab

ROOT = Path(__file__).resolve().parent.parent

pytest.importorskip("mkdocs", reason="the docs tools come with the dev extra (make setup)")
pytest.importorskip("mkdocstrings", reason="the docs tools come with the dev extra (make setup)")


def _nav_pages(nav: list) -> list[str]:
    pages = []
    for entry in nav:
        for value in entry.values() if isinstance(entry, dict) else [entry]:
            pages += _nav_pages(value) if isinstance(value, list) else [value]
    return pages


def _built(site: Path, page: str) -> Path:
    stem = page.removesuffix(".md")
    return site / ("index.html" if stem == "index" else f"{stem}/index.html")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "--site-dir", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},  # Material's banner about MkDocs 2
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_every_page_of_the_navigation_is_built(site):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    pages = _nav_pages(config["nav"])
    assert {"index.md", "quickstart.md", "reference/api.md"} <= set(pages)
    for page in pages:
        assert _built(site, page).is_file(), page


def test_the_api_reference_documents_every_public_name(site):
    html = _built(site, "reference/api.md").read_text()
    objects = [getattr(cnnlab, name) for name in cnnlab.__all__]
    objects += [getattr(cnnlab.datasets, name) for name in ("load", "from_tensors", "names")]
    for obj in objects:
        if inspect.ismodule(obj):
            continue
        anchor = f'id="{obj.__module__}.{obj.__qualname__}"'
        assert anchor in html, f"{obj.__qualname__} is missing from docs/reference/api.md"
    # Rendered from the docstrings: a method's first sentence, as the code has it.
    assert cnnlab.Trainer.fit.__doc__.split(";")[0] in html


def test_the_recipe_table_lists_every_shipped_recipe(site):
    html = _built(site, "reference/recipe-table.md").read_text()
    recipes = sorted((ROOT / "recipes").rglob("*.yaml"))
    assert len(recipes) > 100
    for path in recipes:
        # A table row under its folder's heading, or an item of the list of the others.
        folder, whole = path.parent.relative_to(ROOT).as_posix(), path.relative_to(ROOT).as_posix()
        in_table = f"<code>{folder}/</code>" in html and f"<td><code>{path.name}</code>" in html
        assert in_table or f"<li><code>{whole}</code>" in html, path
    assert "hysts/pytorch_image_classification@19a0ac6" in html
