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
    create_model,
    field_validator,
    model_validator,
)

from cnnlab.errors import UserError, closest
from cnnlab.registry import DATASETS, METHODS, import_plugins


def _recipes_dir() -> Path:
    # Installed, the recipes are package data (cnnlab/recipes); in a source checkout they are
    # the top-level recipes/ folder that pyproject.toml maps there.
    here = Path(__file__).resolve().parent
    packaged = here / "recipes"
    return packaged if (packaged / "default.yaml").is_file() else here.parent / "recipes"


RECIPES_DIR = _recipes_dir()
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

    `name=folder` reads a class-per-subfolder image tree under `root` (data/folder.py), as do
    the named folder datasets `imagenet` and `mini_imagenet`; the keys after `split_seed`
    apply to image folders only, except `mean`/`std`.
    """

    name: str = "fashion_mnist"  # a registered dataset (cnnlab.datasets.names()) or folder
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
    # auto: the images' common size when they all share one, else 224 (said in log.txt).
    image_size: Annotated[int, Field(ge=8)] | Literal["auto"] = "auto"
    eval_resize: int | None = Field(None, ge=8)  # null = round(image_size / 0.875)
    train_crop: Literal["random_resized", "resize"] = "random_resized"
    crop_scale: tuple[float, float] = (0.08, 1.0)
    color: Literal["rgb", "gray"] = "rgb"
    workers: int = Field(2, ge=0)
    bad_images: Literal["fail", "skip"] = "fail"
    decoder: Literal["pil", "torchvision"] = "pil"
    # AlexNet-style PCA lighting noise on each training crop, as ReCU's Lighting(0.1) applies it
    # (z-hXu/ReCU@9a73bed imagenet/dataset/imagenet.py:22-46): added to the 0-255 pixels, then
    # clipped and truncated to uint8. 0 = off.
    lighting_std: float = Field(0.0, ge=0)

    @field_validator("crop_scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        # An area above 1 is allowed, as torchvision's RandomResizedCrop allows it (ReCU draws
        # from [0.08, 1.25]): such draws do not fit and count as failed attempts.
        low, high = value
        if not 0 < low <= high:
            raise ValueError(f"needs 0 < low <= high, got [{low}, {high}]")
        return value

    @field_validator("name")
    @classmethod
    def _registered(cls, value: str) -> str:
        if value not in DATASETS:
            raise ValueError(
                f"unknown dataset '{value}'{closest(value, DATASETS.names())}; "
                f"known: {', '.join(DATASETS.names())}"
            )
        return value

    @model_validator(mode="after")
    def _folder_keys_fit(self) -> DataConfig:
        if self.mean is not None and self.std is not None and len(self.mean) != len(self.std):
            raise ValueError(
                f"data.mean has {len(self.mean)} values but data.std has {len(self.std)}"
            )
        if self.is_image_folder():
            # A named image-folder dataset (imagenet, mini_imagenet) is checked for its root
            # when it is read, so its recipes load and build without the images.
            if self.name == "folder" and not self.root:
                raise ValueError("data.name=folder needs data.root=DIR (the image folder)")
            if self.lighting_std and self.color == "gray":
                raise ValueError("data.lighting_std needs colour images (data.color=rgb)")
            return self
        # A folder-only key changed for an in-memory set would silently do nothing.
        for key in FOLDER_ONLY_KEYS:
            if getattr(self, key) != DataConfig.model_fields[key].default:
                raise ValueError(f"data.{key} applies only to data.name=folder")
        return self

    def is_image_folder(self) -> bool:
        """Return whether the dataset streams from an image folder (folder, imagenet, ...)
        rather than being read into memory: its registry entry has no reader."""
        return DATASETS.get(self.name).read is None


FOLDER_ONLY_KEYS = (
    "train_dir", "test_dir", "test_fraction", "image_size", "eval_resize", "train_crop",
    "crop_scale", "color", "workers", "bad_images", "decoder", "lighting_std",
)  # fmt: skip


class TrainConfig(_Section):
    """Loop length, batch, seeding, evaluation cadence and numerics."""

    epochs: int = Field(5, ge=1)
    # A recipe shortened (or lengthened) with its schedule: epochs become
    # max(1, round(epochs x scale)) and the schedule's epoch-valued keys (milestones, warm-up
    # epochs, one-cycle peak) scale by the same ratio. Applied once when the config is
    # validated; the resolved config (config.yaml) holds the scaled values and scale 1.
    epochs_scale: float = Field(1.0, gt=0)
    batch_size: int = Field(128, ge=1)
    eval_batch_size: int = Field(500, ge=1)
    seed: int = 0
    eval_every: int = Field(1, ge=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: Literal["auto", True, False] = "auto"
    device: str = "auto"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    # Training order: each epoch a shuffle of the training set, or (in-memory datasets, one
    # process) as many images drawn with replacement (gcr's CIFAR loader).
    sampling: Literal["shuffle", "replacement"] = "shuffle"
    # Under torchrun: BatchNorm statistics over the global batch (GPUs only).
    sync_bn: bool = False
    # GPU speed and reproducibility (docs/gpu.md): torch.compile of the model, cuDNN's
    # algorithm search, TF32 (null keeps torch's defaults), deterministic algorithms.
    # auto: time compiled against eager steps once at start-up (cached, like precision=auto).
    compile: bool | Literal["auto"] = False
    cudnn_benchmark: bool = True
    tf32: bool | None = None
    deterministic: bool = False
    # Per-epoch work at intervals (the last epoch always does it); a kill loses up to
    # checkpoint_every epochs.
    checkpoint_every: int = Field(1, ge=1)
    plot_every: int = Field(1, ge=1)
    # false: the last, smaller batch of each epoch is trained on too (a PyTorch DataLoader's
    # drop_last=False); in-memory datasets and one process only.
    drop_last: bool = True


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
    # The lr of normalisation layers' scales and shifts is this many times the schedule's, their
    # weight decay divided by it, so lr x decay per step is unchanged (airbench94's
    # bias_scaler 64 on its BatchNorm shifts).
    norm_lr_scale: float = Field(1.0, gt=0)
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
    """Learning-rate schedule with optional warm-up (linear or constant), set every iteration
    or once per epoch."""

    name: Literal["multistep", "cosine", "constant", "linear", "onecycle"] = "cosine"
    # step: the lr changes every iteration; epoch: it is set at each epoch's first iteration
    # from the epoch's index (a torch scheduler stepped once per epoch).
    interval: Literal["step", "epoch"] = "step"
    # The lr of step s is the schedule's value at s + step_offset (epochs under interval=epoch):
    # 1 for a torch scheduler stepped before each update, after the step its constructor takes.
    step_offset: int = Field(0, ge=0)
    milestones: list[int] = Field(default_factory=list)
    gamma: float = Field(0.1, gt=0)
    warmup_epochs: float = Field(0.0, ge=0)
    warmup_steps: int = Field(0, ge=0)
    warmup_mode: Literal["linear", "constant"] = "linear"
    warmup_lr: float | None = Field(None, gt=0)
    lr_min_factor: float = Field(0.0, ge=0, le=1)
    peak_epoch: float | None = Field(None, gt=0)
    start_factor: float | None = Field(None, ge=0, le=1)  # onecycle's start; null = lr_min_factor
    # cosine / linear: the 0-based epoch where their t = 0 (null: where warm-up ends) and their
    # length T in epochs (null: to the end of the run); a warm-up still sets its own epochs.
    decay_start_epoch: int | None = Field(None, ge=0)
    decay_epochs: int | None = Field(None, ge=1)
    # At each milestone the optimizer's state (momentum buffers) starts afresh, as Torch's
    # optim.sgd did when a training script replaced its state table at a drop.
    reset_state_at_milestones: bool = False

    @model_validator(mode="after")
    def _warmup_is_consistent(self) -> ScheduleConfig:
        if self.warmup_epochs and self.warmup_steps:
            raise ValueError("set schedule.warmup_epochs or schedule.warmup_steps, not both")
        if self.interval == "epoch":
            if self.warmup_steps:
                raise ValueError(
                    "schedule.interval=epoch counts warm-up in epochs: use "
                    "schedule.warmup_epochs, not warmup_steps"
                )
            if not float(self.warmup_epochs).is_integer():
                raise ValueError(
                    f"schedule.interval=epoch needs whole warm-up epochs, got {self.warmup_epochs}"
                )
        has_warmup = bool(self.warmup_epochs or self.warmup_steps)
        if self.warmup_lr is not None and not has_warmup:
            raise ValueError(
                "schedule.warmup_lr needs a warm-up length (schedule.warmup_steps or warmup_epochs)"
            )
        if self.warmup_mode == "constant" and has_warmup and self.warmup_lr is None:
            raise ValueError("schedule.warmup_mode=constant needs schedule.warmup_lr")
        for key in ("peak_epoch", "start_factor"):
            if getattr(self, key) is not None and self.name != "onecycle":
                raise ValueError(f"schedule.{key} applies only to schedule.name=onecycle")
        for key in ("decay_start_epoch", "decay_epochs"):
            if getattr(self, key) is not None and self.name not in ("cosine", "linear"):
                raise ValueError(f"schedule.{key} applies only to schedule.name=cosine or linear")
        if self.reset_state_at_milestones and not (self.name == "multistep" and self.milestones):
            raise ValueError(
                "schedule.reset_state_at_milestones needs schedule.name=multistep with milestones"
            )
        return self


_PROB = Field(0.0, ge=0, le=1)


class AugmentConfig(_Section):
    """Batched augmentations and batch mixing applied on the training device."""

    crop_padding: int = Field(4, ge=0)
    # The random crop's side; null = the image's. Larger than the image is a crop of the padded
    # image that keeps some padding (torchvision's RandomCrop(32, padding=4) on 28x28 images).
    crop_size: int | None = Field(None, ge=1)
    # What the crop sees beyond the border: zeros (black), the image reflected (airbench94), or
    # the normalisation mean (0 after normalising: gcr's translation into a zeroed tensor).
    padding_mode: Literal["zeros", "reflect", "mean"] = "zeros"
    flip: bool = True
    # random: each image mirrored with p 1/2 every epoch; alternating (airbench94): a fixed random
    # half mirrored in odd epochs, the other half in even ones (in-memory datasets only).
    flip_mode: Literal["random", "alternating"] = "random"
    cutout_size: int = Field(0, ge=0)  # 0 = off
    cutout_prob: float = Field(1.0, ge=0, le=1)
    erase_prob: float = _PROB
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_min_aspect: float = Field(0.3, gt=0, le=1)
    erase_attempts: int = Field(20, ge=1)
    erase_fill: Literal["random", "mean"] = "random"
    patch_shuffle_prob: float = _PROB
    patch_shuffle_size: int = Field(2, ge=2)
    # Where PatchShuffle acts: [input, stage 1, stage 2, ...]; empty = the input image only.
    patch_shuffle_stages: list[bool] = Field(default_factory=list)
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

    @model_validator(mode="after")
    def _patch_shuffle_has_a_probability(self) -> AugmentConfig:
        if any(self.patch_shuffle_stages) and not self.patch_shuffle_prob:
            raise ValueError("augment.patch_shuffle_stages needs augment.patch_shuffle_prob > 0")
        return self


class EvalConfig(_Section):
    """How evaluation forms its predictions."""

    tta: Literal["none", "flip", "flip_shift"] = "none"  # see cnnlab/engine/evaluate.py
    # false: the test split is neither read nor evaluated (a tuning trial judged on val only)
    test: bool = True
    # A random view of every evaluated image (val and test): a random_crop_size crop of the
    # image zero-padded by random_crop_padding, mirrored with p 1/2 under random_flip; drawn once
    # per run from train.seed, so each evaluation sees the same views and survives a resume.
    # This is what an official loader did at test time, not a recommended protocol (hysts'
    # FashionMNIST loader at 19a0ac6 evaluated through its training transform). With a view, the
    # test split is also evaluated as it is, as test_plain_*.
    random_crop_size: int | None = Field(None, ge=1)
    random_crop_padding: int = Field(0, ge=0)
    random_flip: bool = False

    def random_view(self) -> bool:
        """Return whether evaluation looks at a random view of each image."""
        return (
            self.random_crop_size is not None or self.random_flip or bool(self.random_crop_padding)
        )


class ReferenceConfig(_Section):
    """The published figure a recipe targets (informative; it does not change training)."""

    value: float | None = Field(None, ge=0, le=100)  # test error in percent
    source: str
    protocol: str
    row: str
    # Which epoch the published figure is: the last, or the best test epoch (NR, ReCU code);
    # `cnnlab report` shows a run's best test epoch beside the latter, for comparison only.
    selection: Literal["last_epoch", "best_over_epochs", "unstated"] = "unstated"
    command: str | None = None  # the official command or config the row came from
    settings: dict[str, str] = Field(default_factory=dict)  # setting -> where it comes from
    unconfirmed: list[str] = Field(default_factory=list)  # what the sources did not settle


class Section(_Section):
    """Base of the config sections that plug-in methods bring (`register_method`)."""


class Config(_Section):
    """One object describing a run completely; `config.yaml` in a run folder is its dump.

    These are the core sections; every registered method adds its own (`ema`, `bn`, `nr`,
    `probes`, `binary` for the shipped ones), so the validated object is an instance of
    `config_model()`, a subclass of this one with those sections added.
    """

    name: str = "run"
    # Modules to import before validating, so their register_* calls can add models, datasets
    # and methods that the rest of the config names.
    imports: list[str] = Field(default_factory=list)
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    reference: ReferenceConfig | None = None

    @model_validator(mode="after")
    def _something_is_evaluated(self) -> Config:
        if not self.eval.test and not self.data.val_size:
            raise ValueError("eval.test=false needs a validation split (data.val_size > 0)")
        return self

    @model_validator(mode="after")
    def _ragged_batch_in_memory(self) -> Config:
        if not self.train.drop_last and self.data.name == "folder":
            raise ValueError(
                "train.drop_last=false works on in-memory datasets only (image folders drop "
                "the ragged last batch)"
            )
        return self

    @model_validator(mode="after")
    def _epochs_in_range(self) -> Config:
        self._apply_epochs_scale()
        epochs = self.train.epochs
        for m in self.schedule.milestones:
            if not 0 < m <= epochs:
                raise ValueError(
                    f"schedule.milestones: {m} lies outside 1..train.epochs ({epochs}); to "
                    "shorten a recipe with its schedule, set train.epochs_scale (e.g. 0.1: "
                    "epochs and milestones x 0.1) instead of train.epochs"
                )
        start = self.schedule.decay_start_epoch
        if start is not None and start >= epochs:
            raise ValueError(
                f"schedule.decay_start_epoch: {start} must lie below train.epochs ({epochs})"
            )
        peak = self.schedule.peak_epoch
        if peak is not None and peak >= epochs:
            raise ValueError(
                f"schedule.peak_epoch: {peak} must lie below train.epochs ({epochs}); to "
                "shorten a recipe with its schedule, set train.epochs_scale instead"
            )
        return self

    def _apply_epochs_scale(self) -> None:
        # Sections are fresh objects here (validated from plain data), so they are set in
        # place; each assignment is checked by its section.
        train, schedule = self.train, self.schedule
        if train.epochs_scale == 1:
            return
        epochs = max(1, round(train.epochs * train.epochs_scale))
        ratio = epochs / train.epochs
        # A milestone keeps its place in the run, at least after the first epoch.
        schedule.milestones = [min(epochs, max(1, round(m * ratio))) for m in schedule.milestones]
        # A per-epoch schedule counts whole epochs: its warm-up and decay keep at least one.
        whole = schedule.interval == "epoch"
        if schedule.warmup_epochs:
            warmup = schedule.warmup_epochs * ratio
            schedule.warmup_epochs = max(1, round(warmup)) if whole else warmup
        if schedule.decay_start_epoch is not None:
            schedule.decay_start_epoch = min(epochs - 1, round(schedule.decay_start_epoch * ratio))
        if schedule.decay_epochs is not None:
            schedule.decay_epochs = max(1, round(schedule.decay_epochs * ratio))
        if schedule.peak_epoch is not None:
            schedule.peak_epoch = schedule.peak_epoch * ratio
        train.epochs, train.epochs_scale = epochs, 1.0


def _section_type(annotation: Any) -> type[BaseModel] | None:
    # A section may be optional (`ReferenceConfig | None`); look through the union.
    for member in typing.get_args(annotation) or (annotation,):
        if isinstance(member, type) and issubclass(member, BaseModel):
            return member
    return None


def config_model() -> type[Config]:
    """Return the Config class with every registered method's section added (cached until a
    method is registered)."""
    sections = tuple(
        (entry.section, entry.settings) for _, entry in METHODS.items() if entry.section
    )
    cached = _MODEL_CACHE.get(sections)
    if cached is None:
        fields: dict[str, Any] = {
            name: (settings, Field(default_factory=settings)) for name, settings in sections
        }
        cached = create_model("Config", __base__=Config, __doc__=Config.__doc__, **fields)
        _MODEL_CACHE[sections] = cached
    return cached


_MODEL_CACHE: dict[tuple, type[Config]] = {}

# Keys that moved when the methods became plug-ins with their own sections.
MOVED_KEYS = {
    "train.ema_decay": "ema.decay",
    "train.bn_momentum": "bn.momentum",
    "method.name": "nr.enabled (true for Neural Rejuvenation)",
    "method": "nr.enabled (true for Neural Rejuvenation)",
}


def _known_keys(model: type[BaseModel] | None = None, prefix: str = "") -> list[str]:
    keys = []
    for name, field in (model or config_model()).model_fields.items():
        sub = _section_type(field.annotation)
        if sub is not None:
            keys += _known_keys(sub, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _describe(error: dict[str, Any], raw: dict[str, Any]) -> str:
    key = ".".join(str(p) for p in error["loc"])
    if error["type"] == "extra_forbidden":
        if key in MOVED_KEYS:
            return f"config key '{key}' is now '{MOVED_KEYS[key]}'"
        return f"unknown config key '{key}'{closest(key, _known_keys())}"
    value = raw
    for part in error["loc"]:
        value = value.get(part) if isinstance(value, dict) else None
    got = f" (got {value!r})" if value is not None and not isinstance(value, dict) else ""
    where = f"config key '{key}': " if key else "config: "
    return where + error["msg"].removeprefix("Value error, ") + got


def check_methods(cfg: Config) -> None:
    """Refuse a config whose methods cannot work together, or a method that does not fit the
    rest of the config, with one line naming both (before any data is read)."""
    active = [entry for _, entry in METHODS.items() if entry.active(cfg)]
    names = {entry.name for entry in active}
    for entry in active:
        for other in entry.conflicts:
            if other in names:
                reason = entry.conflicts[other]
                raise UserError(
                    f"method '{entry.name}' cannot be combined with '{other}': {reason}"
                )
    for _, entry in METHODS.items():
        if entry.check is not None:
            problem = entry.check(cfg)
            if problem:
                raise UserError(problem)


def _validated(model: type[Config], raw: dict[str, Any]) -> Config:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, raw) for e in exc.errors()]
        raise UserError("; ".join(dict.fromkeys(lines))) from None


def validate_core(raw: dict[str, Any]) -> Config:
    """Build the core sections only (no method sections): a Trainer's keyword settings."""
    return _validated(Config, raw)


def validate(raw: dict[str, Any]) -> Config:
    """Build a Config from plain data; every problem becomes a UserError naming the key."""
    if not isinstance(raw, dict):
        raise UserError(f"config must be a mapping of sections, not {type(raw).__name__}")
    imports = raw.get("imports") or []
    if not isinstance(imports, list) or not all(isinstance(m, str) for m in imports):
        raise UserError("config key 'imports': a list of module names (e.g. [mypkg.models])")
    import_plugins(imports)
    cfg = _validated(config_model(), raw)
    check_methods(cfg)
    return cfg


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


def find_recipe(path: Path | str) -> Path:
    """Return `path`, or the shipped recipe of that name when no such file exists here (so
    `--config recipes/cifar10/resnet20.yaml` works from any folder and after `pip install`)."""
    path = Path(path)
    if path.exists() or path.is_absolute():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("recipes",) else path.parts
    shipped = RECIPES_DIR.joinpath(*parts) if parts else RECIPES_DIR
    return shipped if shipped.is_file() else path


def load_config(
    path: Path | str | None = None,
    overrides: list[str] | None = None,
    imports: list[str] | tuple[str, ...] = (),
) -> Config:
    """Load a recipe (the default one when `path` is None), import `imports` (users' plug-in
    modules), apply overrides, validate."""
    import_plugins(list(imports))
    path = find_recipe(path) if path is not None else DEFAULT_RECIPE
    raw = read_yaml(path)
    raw.setdefault("name", path.stem)
    return validate(apply_overrides(raw, overrides or []))


def dump_config(cfg: Config) -> str:
    """Return the resolved config as YAML text (sections in schema order)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
