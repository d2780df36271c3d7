"""Name -> entry tables, one per kind of plug-in: models, datasets, methods, probes.

The tables live at the bottom layer so that the config can check names against them, while the
entries are filled by the layers that define them (`cnnlab.models` registers the families,
`cnnlab.data.datasets` the datasets, `cnnlab.methods` the methods and probes). A table loads its
built-in package by name the first time it is read: that is discovery, like an entry point, not
an import of a higher layer. A user's own pieces join with the `register_*` functions once their
module is imported (`cnnlab train --import mypkg.models`, or `imports:` in a recipe).
"""

from __future__ import annotations

import fnmatch
import importlib
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from torch import nn

from cnnlab.errors import UserError, closest

T = TypeVar("T")


class UnknownName(UserError):
    """A name that no registry entry has (the message suggests the closest one)."""


class Registry(Generic[T]):
    """One kind's table of named entries; `builtin` is the package that registers the shipped
    ones, imported on first use. With `order`, the names of the shipped entries, `items` yields
    those first in that order, then the others in registration order."""

    def __init__(
        self, kind: str, builtin: str, hint: str = "", order: tuple[str, ...] = ()
    ) -> None:
        self.kind = kind
        self.builtin = builtin
        self.hint = hint  # where a user sees the names, e.g. "see `cnnlab models`"
        self.order = order
        self._entries: dict[str, T] = {}
        self._loaded = False

    def _load_builtin(self) -> None:
        if not self._loaded:
            self._loaded = True
            importlib.import_module(self.builtin)
            if missing := [name for name in self.order if name not in self._entries]:
                raise ValueError(f"{self.kind}s {missing} are ordered but {self.builtin} "
                                 "does not register them")  # fmt: skip

    def add(self, name: str, entry: T) -> None:
        """Register `entry` under `name`; a name registered twice is a programming error."""
        if name in self._entries:
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        self._entries[name] = entry

    def get(self, name: str) -> T:
        """Return the entry `name`, or raise UnknownName suggesting the closest name."""
        self._load_builtin()
        if name not in self._entries:
            hint = f"; {self.hint}" if self.hint else ""
            raise UnknownName(f"unknown {self.kind} '{name}'{closest(name, self._entries)}{hint}")
        return self._entries[name]

    def __contains__(self, name: object) -> bool:
        self._load_builtin()
        return name in self._entries

    def names(self, pattern: str = "*") -> list[str]:
        """Return the sorted names matching a shell-style pattern."""
        self._load_builtin()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def items(self) -> Iterator[tuple[str, T]]:
        """Yield (name, entry): the built-in ones in `order` when given, the rest in
        registration order."""
        self._load_builtin()
        rank = {name: i for i, name in enumerate(self.order)}
        yield from sorted(self._entries.items(), key=lambda item: rank.get(item[0], len(rank)))


def import_plugins(modules: list[str] | tuple[str, ...]) -> None:
    """Import users' modules so that their `register_*` calls run; a bad name is a UserError."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise UserError(f"cannot import plug-in module '{name}': {exc}") from None


# --------------------------------------------------------------------------------- models
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

    @property
    def image_size(self) -> int:
        """Return the image side the family is designed for: 224 (ImageNet-sized) where it
        declares `image_size = 224`, else 32 (CIFAR-sized, the families' usual stem)."""
        return int(getattr(self.factory, "image_size", 32))

    @property
    def binary(self) -> bool:
        """Return whether the family is a 1-bit network (it declares `binary = True`)."""
        return bool(getattr(self.factory, "binary", False))


MODELS: Registry[ModelEntry] = Registry("model", "cnnlab.models", "see `cnnlab models`")


def register_variant(
    name: str,
    factory: ModelFactory,
    doc: str,
    *,
    defaults: Mapping[str, Any] | None = None,
    **fixed: Any,
) -> None:
    """Register `name` as `factory(**fixed)`; `defaults` are overridable, `fixed` are not."""
    MODELS.add(name, ModelEntry(name, factory, doc, fixed, dict(defaults or {})))


def register_model(
    name: str, factory: ModelFactory | None = None, doc: str = "", **defaults: Any
) -> Any:
    """Register a user's model constructor under `name` (usable as a decorator); it receives
    `in_channels` and `num_classes` when it accepts them, and the config's model options."""

    def add(fn: ModelFactory) -> ModelFactory:
        register_variant(name, fn, doc or (fn.__doc__ or "").strip().split("\n")[0],
                         defaults=defaults)  # fmt: skip
        return fn

    return add(factory) if factory is not None else add


def model_entry(name: str) -> ModelEntry:
    """Return the registry entry for `name`, or raise a UserError suggesting the closest name."""
    return MODELS.get(name)


def list_models(pattern: str = "*") -> list[str]:
    """Return the sorted names of registered models matching a shell-style pattern."""
    return MODELS.names(pattern)


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
    """Build a registered model; None options are dropped so callers may pass them blindly, and
    `in_channels` / `num_classes` are passed only to constructors that take them."""
    entry = model_entry(name)
    kwargs = {k: v for k, v in options.items() if v is not None}
    allowed = entry.options()
    for key in ("in_channels", "num_classes"):
        if key in kwargs and key not in allowed and key not in entry.fixed:
            del kwargs[key]
    check_model_options(name, kwargs)
    try:
        return entry.build(**kwargs)
    except ValueError as exc:
        # Families raise ValueError for out-of-range options (depth, norm, ratio ...).
        raise UserError(f"model '{name}': {exc}") from None


# ------------------------------------------------------------- the other kinds' tables
# Their entry types live with the code that uses them (cnnlab.data.datasets.DatasetEntry,
# cnnlab.methods.registry.MethodEntry, cnnlab.methods.probes.Probe factories).
DATASETS: Registry[Any] = Registry("dataset", "cnnlab.data.datasets", "see cnnlab.datasets.names()")
# The order in which the built-in methods' callbacks run at each hook of the loop (users'
# methods follow). It decides, e.g., that the EMA metrics are in the epoch row before the probes
# and reporters read it; it is fixed here, not by the order in which the modules are imported.
METHOD_ORDER = (
    "bn_momentum", "ema", "freeze", "lookahead", "nr", "patch_shuffle_features", "recu", "probes",
)  # fmt: skip
METHODS: Registry[Any] = Registry("method", "cnnlab.methods", order=METHOD_ORDER)
PROBES: Registry[Any] = Registry("probe", "cnnlab.methods")


@dataclass(frozen=True)
class MethodEntry:
    """A training method as a plug-in: the config section it owns, when a run uses it, the
    callbacks it adds to the loop, and what it cannot be combined with.

    `active(cfg)` and `check(cfg)` read the validated config; `check` returns a one-line
    problem (or None) for a combination the section alone cannot judge; `conflicts` maps
    another method's name to the reason the two cannot run together.
    """

    name: str
    callbacks: Callable[[Any], list[Any]]
    active: Callable[[Any], bool]
    section: str | None = None
    settings: type | None = None
    conflicts: Mapping[str, str] = field(default_factory=dict)
    check: Callable[[Any], str | None] | None = None
    doc: str = ""

    def build(self, cfg: Any) -> list[Any]:
        """Return the method's callbacks for `cfg`, their checkpoint state saved under the
        method's name (stable whatever other callbacks a run has)."""
        callbacks = self.callbacks(cfg)
        for cb in callbacks:
            cb.state_key = self.name
        return callbacks


def register_method(
    name: str,
    callbacks: Callable[[Any], list[Any]],
    *,
    active: Callable[[Any], bool],
    section: str | None = None,
    settings: type | None = None,
    conflicts: Mapping[str, str] | None = None,
    check: Callable[[Any], str | None] | None = None,
    doc: str = "",
) -> None:
    """Register a training method; its `settings` (a pydantic model, subclass of
    cnnlab.config.Section) become config section `section`, validated with the rest."""
    if (section is None) != (settings is None):
        raise ValueError(f"method '{name}': give both section and settings, or neither")
    entry = MethodEntry(name, callbacks, active, section, settings, dict(conflicts or {}), check,
                        doc)  # fmt: skip
    METHODS.add(name, entry)


def register_probe(name: str, factory: Callable[[Any], Any]) -> None:
    """Register a per-epoch probe: `factory(probes_settings)` returns a cnnlab.methods.Probe."""
    PROBES.add(name, factory)
