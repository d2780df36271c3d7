"""A tuning search space: `key=log:a:b`, `float:a:b`, `int:a:b`, `cat:x,y` per config key.

Parsed and checked before any trial runs: a malformed range or a key the recipe does not have
is one clear error naming it. No optuna import here, so the checks run without the extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import yaml

from cnnlab.config import apply_overrides, validate
from cnnlab.errors import UserError
from cnnlab.registry import model_entry

# Set by `cnnlab tune` for every trial, so they may not be searched or overridden.
TUNER_KEYS = ("data.val_size", "eval.test", "train.eval_every")
KINDS = ("log", "float", "int", "cat")


@dataclass(frozen=True)
class Dimension:
    """One searched key: a numeric range (log-uniform, uniform, integer) or a list of choices."""

    key: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple[Any, ...] = ()

    def spec(self) -> str:
        """Return the dimension as it is written on the command line."""
        if self.kind == "cat":
            return f"{self.key}=cat:{','.join(map(str, self.choices))}"
        return f"{self.key}={self.kind}:{self.low}:{self.high}"

    def example(self) -> Any:
        """Return one value of the dimension (its low end or first choice), for checking."""
        return self.choices[0] if self.kind == "cat" else self.low


def _number(text: str, kind: str, where: str) -> float | int:
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        what = "an integer" if kind == "int" else "a number"
        raise UserError(f"--param {where}: '{text}' is not {what}") from None


def parse_dimension(text: str) -> Dimension:
    """Parse one `--param key=kind:...` into a Dimension, or raise a UserError naming it."""
    key, sep, spec = text.partition("=")
    key = key.strip()
    kind, colon, rest = spec.partition(":")
    if not sep or not key or not colon or kind not in KINDS:
        raise UserError(
            f"--param {text}: expected key=log:LOW:HIGH, float:LOW:HIGH, int:LOW:HIGH or "
            "cat:A,B,... (e.g. optim.lr=log:1e-3:1)"
        )
    if key in TUNER_KEYS:
        raise UserError(f"--param {text}: `cnnlab tune` sets {key} itself (see --val-size)")
    if kind == "cat":
        choices = tuple(yaml.safe_load(c) for c in rest.split(",") if c.strip())
        if not choices:
            raise UserError(f"--param {text}: cat: needs at least one choice")
        return Dimension(key, kind, choices=choices)
    bounds = rest.split(":")
    if len(bounds) != 2:
        raise UserError(f"--param {text}: {kind}: needs LOW:HIGH, got '{rest}'")
    low, high = (_number(b, kind, text) for b in bounds)
    if not low < high:
        raise UserError(f"--param {text}: LOW must be below HIGH")
    if kind == "log" and low <= 0:
        raise UserError(f"--param {text}: a log range needs LOW > 0")
    return Dimension(key, kind, low, high)


def parse_space(texts: list[str]) -> tuple[Dimension, ...]:
    """Parse every `--param`; at least one, each key once."""
    if not texts:
        raise UserError(
            "cnnlab tune needs at least one --param key=log:LOW:HIGH (or float/int/cat)"
        )
    space = tuple(parse_dimension(t) for t in texts)
    keys = [d.key for d in space]
    for key in keys:
        if keys.count(key) > 1:
            raise UserError(f"--param {key} is given twice")
    return space


def with_values(raw: dict[str, Any], values: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of the recipe data `raw` with each dotted `key: value` set."""
    out = apply_overrides(raw, [])  # a deep copy
    for key, value in values.items():
        *path, last = key.split(".")
        node = out
        for part in path:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"--param {key}: '{part}' is a value, not a section")
        node[last] = value
    return out


def check_space(raw: dict[str, Any], space: tuple[Dimension, ...]) -> None:
    """Raise a UserError naming a key that the recipe `raw` has no place for (a config key or
    an option of its model), or a value the config refuses."""
    for dim in space:
        trial = with_values(raw, {dim.key: dim.example()})
        try:
            cfg = validate(trial)
        except UserError as exc:
            raise UserError(f"--param {dim.spec()}: {exc}") from None
        if dim.key.startswith("model.") and dim.key != "model.name":
            option = dim.key.removeprefix("model.")
            allowed = model_entry(cfg.model.name).options()
            if option not in allowed:
                raise UserError(f"--param {dim.spec()}: model '{cfg.model.name}' has no option "
                                f"'{option}'; it takes {', '.join(allowed)}")  # fmt: skip
