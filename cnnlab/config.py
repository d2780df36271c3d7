"""The typed run configuration: schema, YAML load/dump, dotted `key=value` overrides."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

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
    """Which dataset, where it lives, and how much of it to use.

    `name=folder` reads a class-per-subfolder image tree under `root` (data/folder.py); the
    keys after `split_seed` apply to image folders only, except `mean`/`std`.
    """

    name: Literal["fashion_mnist", "mnist", "cifar10", "cifar100", "folder"] = "fashion_mnist"
    root: str | None = None
    download: bool = True
    train_limit: int | None = Field(None, ge=1)
    test_limit: int | None = Field(None, ge=1)
    val_size: int = Field(0, ge=0)
    split_seed: int = 0
    # Per-channel normalisation on the [0, 1] scale; null = the dataset's own (ImageNet's
    # 0.485/0.456/0.406, 0.229/0.224/0.225 for image folders).
    mean: list[float] | None = None
    std: list[Annotated[float, Field(gt=0)]] | None = None
    # ---- image folders (data.name=folder)
    train_dir: str = "train"
    test_dir: str = "val"
    test_fraction: float | None = Field(None, gt=0, lt=1)
    image_size: int | None = Field(None, ge=8)  # null = 224
    eval_resize: int | None = Field(None, ge=8)  # null = round(image_size / 0.875)
    train_crop: Literal["random_resized", "resize"] = "random_resized"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    color: Literal["rgb", "gray"] = "rgb"
    workers: int = Field(2, ge=0)
    bad_images: Literal["fail", "skip"] = "fail"
    decoder: Literal["pil", "torchvision"] = "pil"

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError(f"needs 0 < low <= high <= 1, got [{low}, {high}]")
        return value

    @model_validator(mode="after")
    def _folder_keys_fit(self) -> DataConfig:
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(
                f"data.mean has {len(self.mean)} values but data.std has {len(self.std)}"
            )
        if self.name == "folder":
            if not self.root:
                raise ValueError("data.name=folder needs data.root=DIR (the image folder)")
            return self
        # A folder-only key changed for an in-memory set would silently do nothing.
        for key in FOLDER_ONLY_KEYS:
            if getattr(self, key) != DataConfig.model_fields[key].default:
                raise ValueError(f"data.{key} applies only to data.name=folder")
        return self


FOLDER_ONLY_KEYS = (
    "train_dir", "test_dir", "test_fraction", "image_size", "eval_resize", "train_crop",
    "crop_scale", "color", "workers", "bad_images", "decoder",
)  # fmt: skip


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
    # None keeps each BatchNorm's own momentum; "dynamic" is 1/(1+n), reset every epoch.
    bn_momentum: float | Literal["dynamic"] | None = None
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    # Under torchrun: BatchNorm statistics over the global batch (GPUs only).
    sync_bn: bool = False

    @field_validator("bn_momentum", mode="before")
    @classmethod
    def _bn_momentum_policy(cls, value: Any) -> Any:
        # Checked here so a bad value gets one clear message instead of one per union member.
        if value is None or value == "dynamic":
            return value
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
            raise ValueError("use a momentum in (0, 1] or 'dynamic'")
        return float(value)


# The optimizer-specific keys each optimizer takes, with its default for each. A key left out
# (null) means that default, so switching `optim.name` needs no other edit; a key the chosen
# optimizer does not take is an error rather than silently ignored.
OPTIMIZER_KEYS: dict[str, dict[str, Any]] = {
    "sgd": {"momentum": 0.9, "nesterov": True},
    "adam": {"betas": (0.9, 0.999), "eps": 1e-8},
    "adamw": {"betas": (0.9, 0.999), "eps": 1e-8},
    "rmsprop": {"alpha": 0.99, "eps": 1e-8, "momentum": 0.0},
    "adagrad": {"eps": 1e-10},
    "adadelta": {"rho": 0.9, "eps": 1e-6},
}
_UNIT = Annotated[float, Field(ge=0, lt=1)]


class OptimConfig(_Section):
    """Optimizer settings; optimizer-specific keys left null take that optimizer's default."""

    name: Literal["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta"] = "sgd"
    lr: float = Field(0.1, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    no_decay_bn_bias: bool = False
    momentum: float | None = Field(None, ge=0, lt=1)
    nesterov: bool | None = None
    betas: tuple[_UNIT, _UNIT] | None = None
    eps: float | None = Field(None, gt=0)
    alpha: float | None = Field(None, gt=0, lt=1)
    rho: float | None = Field(None, ge=0, lt=1)

    @model_validator(mode="after")
    def _keys_fit_the_optimizer(self) -> OptimConfig:
        takes = OPTIMIZER_KEYS[self.name]
        for key in ("momentum", "nesterov", "betas", "eps", "alpha", "rho"):
            if getattr(self, key) is not None and key not in takes:
                users = ", ".join(n for n, keys in OPTIMIZER_KEYS.items() if key in keys)
                raise ValueError(
                    f"optim.{key} is not used by {self.name} (only by {users}); "
                    f"remove it or set optim.{key}=null"
                )
        options = self.options()
        if options.get("nesterov") and not options.get("momentum"):
            raise ValueError("optim.nesterov=true needs optim.momentum > 0")
        return self

    def options(self) -> dict[str, Any]:
        """Return the keyword options of optimizer `name`, defaults filled in (not lr/decay)."""
        return {
            key: default if getattr(self, key) is None else getattr(self, key)
            for key, default in OPTIMIZER_KEYS[self.name].items()
        }


class ScheduleConfig(_Section):
    """Per-iteration learning-rate schedule with optional warm-up (linear or constant)."""

    name: Literal["multistep", "cosine", "constant", "linear", "onecycle"] = "cosine"
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    warmup_mode: Literal["linear", "constant"] = "linear"
    warmup_lr: float | None = Field(None, gt=0)
    lr_min_factor: float = Field(0.0, ge=0, le=1)
    peak_epoch: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _warmup_is_consistent(self) -> ScheduleConfig:
        if self.warmup_epochs and self.warmup_steps:
            raise ValueError("set schedule.warmup_epochs or schedule.warmup_steps, not both")
        has_warmup = bool(self.warmup_epochs or self.warmup_steps)
        if self.warmup_lr is not None and not has_warmup:
            raise ValueError(
                "schedule.warmup_lr needs a warm-up length (schedule.warmup_steps or warmup_epochs)"
            )
        if self.warmup_mode == "constant" and has_warmup and self.warmup_lr is None:
            raise ValueError("schedule.warmup_mode=constant needs schedule.warmup_lr")
        if self.peak_epoch is not None and self.name != "onecycle":
            raise ValueError("schedule.peak_epoch applies only to schedule.name=onecycle")
        return self


_PROB = Field(0.0, ge=0, le=1)


class AugmentConfig(_Section):
    """Batched augmentations and batch mixing applied on the training device."""

    crop_padding: int = Field(4, ge=0)
    flip: bool = True
    cutout_size: int = Field(0, ge=0)  # 0 = off
    cutout_prob: float = Field(1.0, ge=0, le=1)
    erase_prob: float = _PROB
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_min_aspect: float = Field(0.3, gt=0, le=1)
    erase_attempts: int = Field(20, ge=1)
    erase_fill: Literal["random", "mean"] = "random"
    patch_shuffle_prob: float = _PROB
    patch_shuffle_size: int = Field(2, ge=2)
    mixup_alpha: float = Field(0.0, ge=0)
    cutmix_alpha: float = Field(0.0, ge=0)
    mix_prob: float = Field(1.0, ge=0, le=1)
    mix_switch_prob: float = Field(0.5, ge=0, le=1)

    @field_validator("erase_area")
    @classmethod
    def _area_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high <= 1:
            raise ValueError(f"needs 0 < low <= high <= 1, got [{low}, {high}]")
        return value


class EvalConfig(_Section):
    """How evaluation forms its predictions."""

    tta: Literal["none", "flip"] = "none"
    # false: the test split is neither read nor evaluated (a tuning trial judged on val only)
    test: bool = True


class ReferenceConfig(_Section):
    """The published figure a recipe targets (informative; it does not change training)."""

    value: float | None = Field(None, ge=0, le=100)  # test error in percent
    source: str
    protocol: str
    row: str


class MethodConfig(_Section):
    """Which training method wraps the loop (its own keys live in their own section)."""

    name: Literal["none", "rejuvenation"] = "none"


class NRConfig(_Section):
    """Neural Rejuvenation (METHODS §2); read only when method.name=rejuvenation."""

    # lambda of the L1 subgradient on BN scales; the start value under the adaptive schedule.
    sparsity: float = Field(1e-4, ge=0)
    sparsity_schedule: Literal["constant", "adaptive"] = "constant"
    increase_threshold: float = Field(0.01, ge=0)  # adaptive: raise lambda when util fell less
    increase_step: float = Field(5e-5, ge=0)
    target: float = Field(0.25, gt=0, le=1)  # >= 0.999 turns NR off
    live_threshold: float = Field(0.01, gt=0, lt=1)
    all_dead_threshold: float = Field(1e-3, ge=0)
    mode: Literal["separate", "cross_attention"] = "separate"
    flops: bool = False
    compress_only: bool = False
    # Neural rescaling (METHODS §2 step 10) once, before the first epoch after the rebuild.
    bn_target: float | None = Field(None, gt=0)


class ProbesConfig(_Section):
    """Per-epoch dead-unit probes (cnnlab.engine.probes); cheap, so on by default."""

    enabled: bool = True
    batch_size: int = Field(256, ge=1)  # training images in the fixed probe batch
    bn_threshold: float = Field(0.01, gt=0, lt=1)  # dead when |gamma| < this * layer max
    nr_live_threshold: float = Field(0.01, gt=0, lt=1)  # NR utilisation: live channel rule


class BinaryConfig(_Section):
    """ReCU training of binary (`*_1w1a`) models: the tau schedule, or plain sign-STE."""

    recu: bool = True  # false: no clamp, the plain sign straight-through baseline
    tau_min: float = Field(0.85, gt=0.5, lt=1)
    tau_max: float = Field(0.99, gt=0.5, lt=1)

    @model_validator(mode="after")
    def _tau_rises(self) -> BinaryConfig:
        if self.tau_min > self.tau_max:
            raise ValueError(
                f"binary.tau_min ({self.tau_min}) must not exceed binary.tau_max ({self.tau_max})"
            )
        return self


class Config(_Section):
    """One object describing a run completely; `config.yaml` in a run folder is its dump."""

    name: str = "run"
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    reference: ReferenceConfig | None = None
    method: MethodConfig = Field(default_factory=MethodConfig)
    nr: NRConfig = Field(default_factory=NRConfig)
    probes: ProbesConfig = Field(default_factory=ProbesConfig)
    binary: BinaryConfig = Field(default_factory=BinaryConfig)

    @model_validator(mode="after")
    def _something_is_evaluated(self) -> Config:
        if not self.eval.test and not self.data.val_size:
            raise ValueError("eval.test=false needs a validation split (data.val_size > 0)")
        return self

    @model_validator(mode="after")
    def _epochs_in_range(self) -> Config:
        epochs = self.train.epochs
        for m in self.schedule.milestones:
            if not 0 < m <= epochs:
                raise ValueError(
                    f"schedule.milestones: {m} lies outside 1..train.epochs ({epochs})"
                )
        peak = self.schedule.peak_epoch
        if peak is not None and peak >= epochs:
            raise ValueError(f"schedule.peak_epoch: {peak} must lie below train.epochs ({epochs})")
        return self


def _section_type(annotation: Any) -> type[BaseModel] | None:
    # A section may be optional (`ReferenceConfig | None`); look through the union.
    for member in typing.get_args(annotation) or (annotation,):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def _known_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        sub = _section_type(field.annotation)
        if sub is not None:
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
