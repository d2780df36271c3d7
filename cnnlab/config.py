"""The typed run configuration: schema, YAML load/dump, dotted `key=value` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from cnnlab.errors import UserError, closest

RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"
DEFAULT_RECIPE = RECIPES_DIR / "default.yaml"


class _Section(BaseModel):
    # Unknown keys are errors (named, with the closest valid key) rather than silently ignored.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(BaseModel):
    """`model.name` plus any keyword option of that model (checked by the registry)."""

    model_config = ConfigDict(extra="allow")
    name: str = "preact_resnet20"

    def options(self) -> dict[str, Any]:
        """Return the model's keyword options (every key but `name`)."""
        return dict(self.model_extra or {})


class DataConfig(_Section):
    """Which dataset, where it lives, and how much of it to use."""

    name: Literal["fashion_mnist", "mnist", "cifar10", "cifar100"] = "fashion_mnist"
    root: str | None = None
    download: bool = True
    train_limit: int | None = Field(None, ge=1)
    test_limit: int | None = Field(None, ge=1)
    val_size: int = Field(0, ge=0)
    split_seed: int = 0


class TrainConfig(_Section):
    """Loop length, batch, seeding, evaluation cadence and numerics."""

    epochs: int = Field(5, ge=1)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(500, ge=1)
    seed: int = 0
    eval_every: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: Literal["auto", True, False] = "auto"
    device: str = "auto"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)


class OptimConfig(_Section):
    """Optimizer settings."""

    name: Literal["sgd"] = "sgd"
    lr: float = Field(0.1, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float = Field(5e-4, ge=0)

    @model_validator(mode="after")
    def _nesterov_needs_momentum(self) -> OptimConfig:
        if self.nesterov and self.momentum == 0:
            raise ValueError("optim.nesterov=true needs optim.momentum > 0")
        return self


class ScheduleConfig(_Section):
    """Per-iteration learning-rate schedule with optional linear warm-up."""

    name: Literal["multistep", "cosine", "constant"] = "cosine"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    lr_min_factor: float = Field(0.0, ge=0, le=1)


class AugmentConfig(_Section):
    """Batched augmentations applied on the training device."""

    crop_padding: int = Field(4, ge=0)
    flip: bool = True


class Config(_Section):
    """One object describing a run completely; `config.yaml` in a run folder is its dump."""

    name: str = "run"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)

    @model_validator(mode="after")
    def _milestones_in_range(self) -> Config:
        for m in self.schedule.milestones:
            if not 0 < m <= self.train.epochs:
                raise ValueError(
                    f"schedule.milestones: {m} lies outside 1..train.epochs ({self.train.epochs})"
                )
        return self


def _known_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            keys += _known_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _describe(error: dict[str, Any], raw: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        return f"unknown config key '{key}'{closest(key, _known_keys())}"
    value = raw
    for part in error["loc"]:
        value = value.get(part) if isinstance(value, dict) else None
    got = f" (got {value!r})" if value is not None and not isinstance(value, dict) else ""
    where = f"config key '{key}': " if key else "config: "
    return where + error["msg"].removeprefix("Value error, ") + got


def validate(raw: dict[str, Any]) -> Config:
    """Build a Config from plain data; every problem becomes a UserError naming the key."""
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, raw) for e in exc.errors()]
        raise UserError("; ".join(lines)) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split 'a.b=value' into (['a','b'], value) with the value read as YAML (numbers, lists)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override '{text}' is not of the form key=value (e.g. train.epochs=3)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of `raw` with each dotted override set."""
    out: dict[str, Any] = yaml.safe_load(yaml.safe_dump(raw)) or {}
    for text in overrides:
        path, value = parse_override(text)
        node = out
        for part in path[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"override '{text}': '{part}' is a value, not a section")
            node = child
        node[path[-1]] = value
    return out


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, with a clear error for a missing, unreadable or non-mapping file."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"config file {path}: cannot read it ({exc})") from None
    except yaml.YAMLError as exc:
        raise UserError(f"config file {path} is not valid YAML: {exc}".splitlines()[0]) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"config file {path} must hold a mapping of sections, not {type(data).__name__}"
        )
    return data


def load_config(path: Path | None = None, overrides: list[str] | None = None) -> Config:
    """Load a recipe (the default one when `path` is None), apply overrides, validate."""
    path = Path(path) if path is not None else DEFAULT_RECIPE
    raw = read_yaml(path)
    raw.setdefault("name", path.stem)
    return validate(apply_overrides(raw, overrides or []))


def dump_config(cfg: Config) -> str:
    """Return the resolved config as YAML text (sections in schema order)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
