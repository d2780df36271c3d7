"""The docs site's recipe table, rendered from the recipes themselves at every `mkdocs build`.

An MkDocs hook (named in mkdocs.yml): it adds the page `reference/recipe-table.md`, one row per
shipped recipe with the published row its `reference:` block names, so the table cannot fall
behind the recipes. `python scripts/docs_recipe_table.py` prints the page.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
PAGE = "reference/recipe-table.md"

INTRO = """---
hide:
  - toc
---

# Recipes and their published rows

Every YAML file under `recipes/` is a recipe: `cnnlab train --config recipes/<file>` runs it
(the shipped recipes are found from any folder). A recipe written for a published result
carries a `reference:` block naming the row, the published value, the protocol that produced
it and the source at a commit; the table below is rendered from those blocks when the site is
built. The whole block (the command the source ran, the source line behind each setting, what
could not be confirmed) is in the recipe file; [the reproduction ledger](../reproduction.md)
adds the measured parameter counts and each row's status.
"""


def _cell(value: Any) -> str:
    """One table cell: a single line, with the characters that would break the table escaped."""
    text = " ".join(str(value).split())
    return text.replace("|", "\\|")


def _recipes() -> list[tuple[str, dict[str, Any]]]:
    """(path relative to recipes/, parsed YAML) of every shipped recipe, sorted by path."""
    found = []
    for path in sorted(RECIPES.rglob("*.yaml")):
        found.append((path.relative_to(RECIPES).as_posix(), yaml.safe_load(path.read_text())))
    return found


def render() -> str:
    """The whole page as markdown: a table per dataset folder, then the recipes with no
    published row."""
    groups: dict[str, list[str]] = {}
    others: list[str] = []
    for name, recipe in _recipes():
        ref = (recipe or {}).get("reference")
        if not ref:
            others.append(name)
            continue
        row = " | ".join(_cell(ref.get(key, "–")) for key in ("row", "value", "source", "protocol"))
        group, _, file = name.rpartition("/")
        groups.setdefault(group, []).append(f"| `{file}` | {row} |")
    lines = [INTRO]
    for group, rows in groups.items():
        lines += [
            f"## `recipes/{group}/`",
            "",
            "| recipe | row | published value (% error) | source | protocol |",
            "|---|---|---|---|---|",
            *rows,
            "",
        ]
    lines += [
        "## Recipes without a published row",
        "",
        "cnnlab's own recipes (the default run, speed runs, short studies); each file's "
        "comments say what it is for.",
        "",
        *(f"- `recipes/{name}`" for name in others),
        "",
    ]
    return "\n".join(lines)


def on_files(files: Any, config: Any) -> Any:
    """MkDocs hook: add the rendered page to the site's files."""
    from mkdocs.structure.files import File

    files.append(File.generated(config, PAGE, content=render()))
    return files


if __name__ == "__main__":
    print(render())
