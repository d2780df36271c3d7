"""Name -> builder table for models: `register_variant`, `build_model`, `list_models`."""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cnnlab.errors import UserError, closest

ModelFactory = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelEntry:
    """A named variant: a family constructor with some arguments fixed and some defaulted."""

    name: str
    factory: ModelFactory
    doc: str
    fixed: Mapping[str, Any] = field(default_factory=dict)
    defaults: Mapping[str, Any] = field(default_factory=dict)

    def options(self) -> list[str]:
        """Return the keyword options a user may set for this variant."""
        params = inspect.signature(self.factory).parameters
        return [p for p in params if p not in self.fixed]

    def build(self, **options: Any) -> nn.Module:
        """Build the model with `options` over the variant's defaults."""
        return self.factory(**{**self.defaults, **options, **self.fixed})


_MODELS: dict[str, ModelEntry] = {}


def register_variant(
    name: str,
    factory: ModelFactory,
    doc: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    **fixed: Any,
) -> None:
    """Register `name` as `factory(**fixed)`; `defaults` are overridable, `fixed` are not."""
    if name in _MODELS:
        raise ValueError(f"model '{name}' is registered twice")
    _MODELS[name] = ModelEntry(name, factory, doc, fixed, dict(defaults or {}))


def _ensure_families_loaded() -> None:
    # The families register themselves on import; importing the package here keeps
    # `registry` free of a hard-coded family list.
    import cnnlab.models  # noqa: F401


def model_entry(name: str) -> ModelEntry:
    """Return the registry entry for `name`, or raise a UserError suggesting the closest name."""
    _ensure_families_loaded()
    if name not in _MODELS:
        raise UserError(f"unknown model '{name}'{closest(name, _MODELS)}; see `cnnlab models`")
    return _MODELS[name]


def list_models(pattern: str = "*") -> list[str]:
    """Return the sorted names of registered models matching a shell-style pattern."""
    _ensure_families_loaded()
    return sorted(n for n in _MODELS if fnmatch.fnmatchcase(n, pattern))


def check_model_options(name: str, options: Mapping[str, Any]) -> ModelEntry:
    """Return the entry of model `name`; an unknown name or option is a UserError (cheap: run
    before a run folder is made, so a mistyped option leaves no folder behind)."""
    entry = model_entry(name)
    allowed = entry.options()
    for key, value in options.items():
        if value is not None and key not in allowed:
            hint = closest(key, allowed)
            fixed = " (fixed by this variant)" if key in entry.fixed else ""
            raise UserError(f"model '{name}' has no option '{key}'{fixed}{hint}")
    return entry


def build_model(name: str, **options: Any) -> nn.Module:
    """Build a registered model; None options are dropped so callers may pass them blindly."""
    kwargs = {k: v for k, v in options.items() if v is not None}
    entry = check_model_options(name, kwargs)
    try:
        return entry.build(**kwargs)
    except ValueError as exc:
        # Families raise ValueError for out-of-range options (depth, norm, ratio ...).
        raise UserError(f"model '{name}': {exc}") from None
