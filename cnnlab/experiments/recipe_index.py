"""The shipped recipes and the published result each targets (`cnnlab recipes`)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from cnnlab.config import RECIPES_DIR, DataConfig, ModelConfig, TrainConfig, read_yaml


@dataclass(frozen=True)
class RecipeRow:
    """One shipped recipe: its --config name, what it trains and the row it reproduces."""

    name: str  # e.g. recipes/cifar10/resnet20.yaml, what `--config` takes from any folder
    dataset: str
    model: str
    epochs: int
    value: float | None  # the published test error in percent (None: no figure to match)
    row: str
    source: str


def _key(raw: dict[str, Any], section: str, name: str, schema: type[BaseModel]) -> Any:
    # A key the recipe leaves out has the schema's default.
    return (raw.get(section) or {}).get(name, schema.model_fields[name].default)


def shipped_recipes(pattern: str = "*") -> list[RecipeRow]:
    """Return the shipped recipes whose name (cifar10/resnet20, without .yaml) or file name
    (resnet20) matches the shell-style `pattern`, sorted by name."""
    rows = []
    for path in sorted(RECIPES_DIR.rglob("*.yaml")):
        stem = path.relative_to(RECIPES_DIR).with_suffix("").as_posix()
        wanted = pattern.removeprefix("recipes/").removesuffix(".yaml")
        if not (fnmatch.fnmatchcase(stem, wanted) or fnmatch.fnmatchcase(Path(stem).name, wanted)):
            continue
        raw = read_yaml(path)
        ref = raw.get("reference") or {}
        rows.append(RecipeRow(
            name=f"recipes/{stem}.yaml",
            dataset=str(_key(raw, "data", "name", DataConfig)),
            model=str(_key(raw, "model", "name", ModelConfig)),
            epochs=int(_key(raw, "train", "epochs", TrainConfig)),
            value=ref.get("value"),
            row=str(ref.get("row", "")),
            source=str(ref.get("source", "")),
        ))  # fmt: skip
    return rows
