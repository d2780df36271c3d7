"""The training loop: any nn.Module on any data, epochs of per-iteration steps, evaluation,
checkpoints, exact resume. It knows no model family and no method: methods come in as callbacks.

    trainer = Trainer(MyNet(), cnnlab.datasets.load("fashion_mnist"), epochs=5,
                      optim={"lr": 0.1}, callbacks=[MyProbe()], run_dir="runs/mine")
    summary = trainer.fit()

`cnnlab.train(config)` (cnnlab/run/) builds the same object from a Config, as the CLI does.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.analysis.curves import plot_run_curves
from cnnlab.analysis.profile import count_flops, count_params
from cnnlab.config import (
    AugmentConfig,
    Config,
    EvalConfig,
    OptimConfig,
    ScheduleConfig,
    validate_core,
)
from cnnlab.config_diff import config_differences
from cnnlab.data.datasets import Splits, load
from cnnlab.data.pipeline import DataBundle, check_batch, make_loaders
from cnnlab.engine import distributed
from cnnlab.engine.backends import apply_backend_policy, deterministic_pooling
from cnnlab.engine.callbacks import Callback, state_keys
from cnnlab.engine.checkpoint import (
    CHECKPOINT_FORMAT,
    load_checkpoint,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
)
from cnnlab.engine.data_init import init_from_data
from cnnlab.engine.evaluate import evaluate
from cnnlab.engine.faults import fault_point
from cnnlab.engine.numerics import (
    Numerics,
    choose_compile,
    choose_numerics,
    numerics_dict,
    precision_note,
)
from cnnlab.engine.optim import Schedule, build_optimizer, load_optimizer_state
from cnnlab.engine.progress import ConsoleReporter
from cnnlab.engine.run_folder import RunFolder
from cnnlab.engine.step import EpochClock, make_scaler, train_step
from cnnlab.errors import UserError

Data = Splits | DataBundle | str
Section = Mapping[str, Any] | None


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    """Return the device for train.device ('auto' picks CUDA when available)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"config key 'train.device': unknown device '{name}'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("config key 'train.device': CUDA is not available on this machine")
    return device


def _settings(
    name: str,
    train: Mapping[str, Any],
    sections: Mapping[str, Section | Any],
) -> Config:
    """Validate keyword settings into the core config sections (errors name the key)."""
    raw: dict[str, Any] = {"name": name, "train": dict(train)}
    for key, value in sections.items():
        if value is None:
            continue
        raw[key] = value.model_dump() if hasattr(value, "model_dump") else dict(value)
    return validate_core(raw)


def _open_run(run_dir: str | Path | RunFolder | None, resume: bool, writer: bool) -> RunFolder:
    if isinstance(run_dir, RunFolder):
        return run_dir
    if run_dir is None:
        if resume:
            raise UserError("resume=True needs run_dir (the folder of the run to continue)")
        return RunFolder.nowhere()
    if resume:
        if not Path(run_dir).is_dir():
            raise UserError(f"cannot resume: run folder {run_dir} does not exist")
        return RunFolder(Path(run_dir), writer=writer)
    path = distributed.on_main(lambda: RunFolder.create(Path(run_dir)).path)
    return RunFolder(path, writer=writer)


class Trainer:
    """One run of training: a model, its data, the settings, callbacks and (optionally) a run
    folder that makes it resumable.

    `model` is any nn.Module (a tuple of logits while training is summed as several heads);
    `data` is `cnnlab.datasets.Splits` (from `load` or `from_tensors`), a registered dataset
    name, or loaders already built (`DataBundle`, as `cnnlab.train` builds for image folders).
    `optim`, `schedule`, `augment` and `eval` are the config sections of those names (dicts or
    their Config classes), and the keyword arguments are `train.*` keys (`epochs`,
    `batch_size`, `seed`, `device`, `precision` ...), checked as the config checks them.
    With `run_dir` the run writes its folder (metrics, log, checkpoints, summary, curves) and
    `resume=True` continues it from its last checkpoint exactly; without, nothing is written.
    `progress` prints each epoch's line and the numerics in force (a live bar on a terminal),
    unless a ConsoleReporter is among the callbacks already.

    Under torchrun every rank builds a Trainer: `model` is the bare module (evaluated, saved,
    averaged by EMA) and `train_model` the DDP wrapper the steps go through; only rank 0 writes.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Data,
        *,
        optim: Mapping[str, Any] | OptimConfig | None = None,
        schedule: Mapping[str, Any] | ScheduleConfig | None = None,
        augment: Mapping[str, Any] | AugmentConfig | None = None,
        eval: Mapping[str, Any] | EvalConfig | None = None,  # noqa: A002 - the section's name
        callbacks: Sequence[Callback] = (),
        run_dir: str | Path | RunFolder | None = None,
        resume: bool = False,
        name: str = "run",
        config: Config | None = None,
        progress: bool = True,
        **train: Any,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise UserError(f"Trainer needs an nn.Module as its model, got {type(model).__name__}")
        if config is not None and (train or optim or schedule or augment or eval):
            raise UserError("give the Trainer either config= or keyword settings, not both")
        sections = {"optim": optim, "schedule": schedule, "augment": augment, "eval": eval}
        # The run's configuration: the whole Config when built by cnnlab.train, otherwise the
        # core sections made of the keyword settings. Callbacks read their settings from it.
        self.cfg = config if config is not None else _settings(name, train, sections)
        self.from_config = config is not None
        self.dist = distributed.current()
        self.run = _open_run(run_dir, resume, self.dist.is_main)
        self.resume = resume
        self.callbacks = list(callbacks)
        if (
            progress
            and self.dist.is_main
            and not any(isinstance(cb, ConsoleReporter) for cb in self.callbacks)
        ):
            self.callbacks.append(ConsoleReporter())
        self.started = time.perf_counter()
        self.device = distributed.device_for(self.dist, resolve_device(self.cfg.train.device))
        self.data = self._loaders(data)
        info = self.data.info
        self.input_shape = (info.channels, *info.image_size)
        self.model: nn.Module = model
        self.model_name = self.cfg.model.name if self.from_config else type(model).__name__
        self.train_model: nn.Module = self.model
        self.params = count_params(self.model)
        self._flops: int | None = None
        self.logged_notes: set[str] = set()  # data problems already in log.txt
        self.steps_per_epoch = len(self.data.train)
        if self.steps_per_epoch == 0:
            raise UserError(
                f"train.batch_size={self.cfg.train.batch_size} is larger than the training set "
                f"({self.data.train.num_images} images)"
            )
        self.schedule = Schedule(
            self.cfg.schedule, self.cfg.train.epochs, self.steps_per_epoch,
            base_lr=self.cfg.optim.lr,
        )  # fmt: skip
        self.epoch = 0  # completed epochs
        self.step = 0  # completed optimizer steps
        self.lr = self.cfg.optim.lr
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {}
        self.elapsed_before = 0.0  # wall seconds spent by earlier sessions of a resumed run
        self.numerics = Numerics()
        self.optimizer: torch.optim.Optimizer | None = None
        self.scaler: torch.amp.GradScaler | None = None  # fp16 loss scaling
        self.backends: dict[str, Any] = {}  # cudnn.benchmark, TF32, determinism in force
        self._started = False  # start_fresh or restore has run
        # Set by methods that reshape the network (Neural Rejuvenation); saved in checkpoints
        # so resume and `cnnlab eval` rebuild the same shapes before loading the weights.
        self.architecture: dict[str, Any] | None = None
        # Epochs the LR schedule does not count (NR's pre-rejuvenation phase); they extend the run.
        self.extra_epochs = 0
        self.stop_requested = False  # a callback may end the run after the current epoch

    def _loaders(self, data: Data) -> DataBundle:
        if isinstance(data, DataBundle):
            return data
        if isinstance(data, str):
            data = load(data)
        if not isinstance(data, Splits):
            raise UserError(
                "Trainer data must be cnnlab.datasets.load(...) / from_tensors(...), a dataset "
                f"name, or a DataBundle; got {type(data).__name__}"
            )
        world = self.dist.world
        check_batch(self.cfg.train.batch_size, len(data.train), world)
        return make_loaders(data, self.cfg.train, self.cfg.augment, self.device,
                            self.dist.rank, world, self.cfg.eval)  # fmt: skip

    @property
    def flops(self) -> int:
        """Return the model's forward FLOPs per image (counted once; a resumed run reads them
        from the checkpoint, since the first count costs seconds of torch's lazy imports)."""
        if self._flops is None:
            self._flops = count_flops(self.model, self.input_shape)
        return self._flops

    # ----------------------------------------------------------------------------- set-up
    def log_setup(self) -> None:
        """Write where the data come from and how the processes share the work to log.txt."""
        self.run.log(f"data: {self.data.description}")
        if self.dist.active:
            b = self.cfg.train.batch_size
            self.run.log(
                f"distributed: {self.dist.world} processes ({torch.distributed.get_backend()}), "
                f"global batch {b} = {self.dist.world} x {b // self.dist.world}"
            )

    def _place_model(self, numerics: Numerics) -> None:
        self.numerics = numerics
        if self.cfg.train.deterministic:
            deterministic_pooling(self.model)
        if self.cfg.train.sync_bn:
            self.model, note = distributed.convert_sync_bn(self.model, self.dist, self.device)
            self.run.log(note)
        self.model.to(device=self.device, memory_format=numerics.memory_format)
        self.optimizer = build_optimizer(
            self.model, self.cfg.optim, fused=self.device.type == "cuda"
        )
        self.scaler = make_scaler(numerics.precision, self.device)
        self.train_model = distributed.wrap_model(self.model, self.dist, self.device)
        if numerics.compile:
            # The steps go through the compiled module; self.model stays the plain one, so
            # checkpoints, evaluation and EMA see the usual parameter names.
            self.train_model = torch.compile(self.train_model)

    def _numerics_key(self) -> str:
        if self.from_config:
            return f"{self.cfg.model.name}{sorted(self.cfg.model.options().items())}"
        kind = type(self.model)
        return f"{kind.__module__}.{kind.__qualname__}:{self.params}"

    def start_fresh(self) -> None:
        """Seed the run's random streams, set data-dependent weights (a model's
        `init_from_data`), choose numerics (measuring if 'auto') and build the optimizer."""
        t = self.cfg.train
        # Dropout and other draws from the global generators start from the seed (each rank
        # its own stream); the data order and augmentation have their own (seed, epoch) ones.
        seed_everything(distributed.rank_seed(t.seed, self.dist.rank))
        if count := init_from_data(self.model, self.data.train):
            self.run.log(f"model initialised from the first {count} training images")
        model_key = self._numerics_key()
        # Rank 0 measures (or reads its cache) and every rank uses its choice.
        batch = t.batch_size // self.dist.world

        def choose() -> Numerics:
            numerics = choose_numerics(self.model, model_key, self.input_shape, batch,
                                       self.device, t.precision, t.channels_last)  # fmt: skip
            return choose_compile(numerics, t.compile, self.model, model_key, self.input_shape,
                                  batch, self.device)  # fmt: skip

        numerics = distributed.on_main(choose)
        self._place_model(numerics)
        self.run.log(f"numerics: {numerics_dict(numerics)}")
        if note := precision_note(numerics, self.device):
            self.run.log(note)
        self._started = True

    def restore(self, state: dict[str, Any]) -> None:
        """Restore model, optimizer, RNG, counters and callbacks from a checkpoint."""
        if not self.from_config and state.get("settings"):
            # A run of a user's own module: its settings must be the ones it started with.
            edits = config_differences(validate_core(state["settings"]), self.cfg)
            if edits:
                raise UserError(
                    f"cannot resume {self.run.path}: the settings differ from the run's "
                    f"({'; '.join(edits)}); resume continues a run exactly as it started"
                )
        saved = state.get("numerics", {})
        # A method that reshaped the network rebuilds those shapes before the weights load.
        for cb in self.callbacks:
            cb.on_checkpoint_load(self, state)
        self.extra_epochs = state.get("extra_epochs", 0)
        # The choices the run started with (a checkpoint from before train.compile=auto
        # existed holds no compile flag: it followed train.compile=true/false).
        compiled = saved.get("compile", self.cfg.train.compile is True)
        self._place_model(
            Numerics(
                saved.get("precision", "fp32"), saved.get("channels_last", False), compile=compiled
            )  # fmt: skip
        )
        self.model.load_state_dict(state["model"])
        load_optimizer_state(self.optimizer, state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        by_rank = state.get("rng_by_rank") or [state["rng"]]
        if len(by_rank) == self.dist.world:
            set_rng_state(by_rank[self.dist.rank])
        else:
            # Another number of processes: the data order per global batch is the same, the
            # per-rank augmentation and dropout streams are not.
            set_rng_state(by_rank[0])
            if self.dist.rank:
                seed_everything(distributed.rank_seed(self.cfg.train.seed, self.dist.rank))
            self.run.log(
                f"note: saved by {len(by_rank)} process(es), resumed with {self.dist.world}; "
                "the data order continues, per-rank random streams restart"
            )
        self.epoch, self.step = state["epoch"], state["step"]
        self.history = list(state["history"])
        self.best = dict(state["best"])
        self.elapsed_before = state["elapsed"]
        self._flops = state.get("flops", self._flops)
        self._restore_callbacks(state.get("callbacks", {}))
        self.run.log(f"resumed after epoch {self.epoch} (step {self.step})")
        self._started = True

    def _restore_callbacks(self, saved: dict[str, Any] | list[dict[str, Any]]) -> None:
        """Hand each callback the state saved under its key (a callback new to the run keeps
        its fresh state); checkpoints that kept a list are read by position, as they were."""
        if isinstance(saved, list):
            for cb, cb_state in zip(self.callbacks, saved):
                cb.load_state_dict(cb_state)
            return
        keys = state_keys(self.callbacks)
        for cb, key in zip(self.callbacks, keys):
            if key in saved:
                cb.load_state_dict(saved[key])
        for key, cb_state in saved.items():
            if key not in keys and cb_state:
                self.run.log(f"note: the checkpoint holds state of callback '{key}', which this "
                             "run does not have; it is not used")  # fmt: skip

    def checkpoint_state(self) -> dict[str, Any]:
        """Return everything needed to continue this run exactly (a collective under DDP:
        every rank calls it, for the per-rank RNG states)."""
        rng_by_rank = distributed.gather_objects(rng_state()) if self.dist.active else None
        state = {
            "format": CHECKPOINT_FORMAT,
            # The whole config rebuilds the model (`cnnlab eval`); a run of a user's own module
            # keeps only its settings.
            "config": self.cfg.model_dump(mode="json") if self.from_config else None,
            "settings": self.cfg.model_dump(mode="json"),
            "classes": list(self.data.info.classes),  # for predict/export once data are gone
            "input_shape": list(self.input_shape),
            "epoch": self.epoch,
            "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "history": self.history,
            "best": self.best,
            "elapsed": self.elapsed_before + time.perf_counter() - self.started,
            "numerics": numerics_dict(self.numerics),
            "callbacks": {
                key: cb.state_dict() for key, cb in zip(state_keys(self.callbacks), self.callbacks)
            },
            "architecture": self.architecture,
            "extra_epochs": self.extra_epochs,
            "processes": self.dist.world,
            "flops": self.flops if self.run.writer else self._flops,
        }
        if rng_by_rank is not None:
            state["rng_by_rank"] = rng_by_rank
        return state

    @property
    def total_epochs(self) -> int:
        """Return the run's length: train.epochs plus the epochs the schedule does not count."""
        return self.cfg.train.epochs + self.extra_epochs

    def replace_model(self, model: nn.Module, architecture: dict[str, Any]) -> None:
        """Swap in a reshaped `model` with a fresh optimizer (at the initial lr)."""
        self.model = model
        self.architecture = architecture
        self._place_model(self.numerics)
        self.params = count_params(self.model)
        fault_point("model_rebuild")

    def reshape_model(self, model: nn.Module, architecture: dict[str, Any]) -> None:
        """Before a resume loads the weights: use `model`, rebuilt to a saved architecture."""
        self.model = model
        self.architecture = architecture
        self.params = count_params(self.model)

    def start(self) -> None:
        """Start fresh, or with resume=True restore run_dir's last checkpoint (a run that died
        before its first checkpoint starts fresh)."""
        self.log_setup()
        t = self.cfg.train
        self.backends = apply_backend_policy(
            self.device, t.cudnn_benchmark, t.tf32, t.deterministic
        )
        self.run.log(
            f"backends: {self.backends}" + (", torch.compile" if t.compile is True else "")
        )
        if self.resume and self.run.last.exists():
            self.restore(load_checkpoint(self.run.last))
            if self.epoch >= self.total_epochs and self.run.summary.exists():
                raise UserError(f"run {self.run.path} already finished all {self.epoch} epochs")
            # metrics.jsonl may hold an epoch that finished after the checkpoint was written.
            self.run.write_metrics(self.history)
        else:
            if self.run.writer and not self.resume:
                self.run.log(
                    f"model {self.model_name}: {self.params} params, {self.flops} FLOPs/image"
                )
            self.start_fresh()
        if self.resume:
            self.run.discard_temp_files()  # half-written files of the killed session

    # ------------------------------------------------------------------------------ loop
    def _train_epoch(self, epoch: int) -> dict[str, float]:
        model, opt, loader = self.train_model, self.optimizer, self.data.train
        model.train()
        steps = len(loader)
        losses = torch.zeros(steps, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        # Reading the loss forces a GPU sync, so on a GPU it is checked every few steps.
        check_every = 1 if self.device.type == "cpu" else 25
        checked = 0
        smoothing = self.cfg.train.label_smoothing
        clock = EpochClock(self.device)
        clock.start()
        for i, batch in enumerate(loader.epoch(epoch)):
            scheduled_step = self.step - self.extra_epochs * self.steps_per_epoch
            self.lr = self.schedule.apply(opt, scheduled_step)
            if self.schedule.resets_state(scheduled_step):
                opt.state.clear()
            soft = batch.targets is not None
            targets = batch.targets if soft else batch.labels
            out = train_step(
                model, opt, self.numerics, self.scaler, batch.images, targets, smoothing,
                self._before_step,
            )  # fmt: skip
            fault_point("train_step")
            losses[i] = out.loss
            # Under mixing, a prediction counts as right when it names the dominant label.
            correct += (out.logits.argmax(1) == (targets.argmax(1) if soft else targets)).sum()
            self.step += 1
            shown = None
            if (i + 1) % check_every == 0 or i + 1 == steps:
                window = losses[checked : i + 1]
                if not torch.isfinite(window).all():
                    bad = checked + int((~torch.isfinite(window)).nonzero()[0])
                    first_bad = self.step - (i - bad)
                    raise TrainingDiverged(
                        f"loss became {window[bad - checked].item()} at step {first_bad} "
                        f"(epoch {epoch}); stopped. The last good checkpoint is {self.run.last}"
                        if self.run.last.exists()
                        else f"loss became non-finite at step {first_bad} (epoch {epoch}) "
                        "before any checkpoint was written; stopped"
                    )
                checked = i + 1
                shown = float(losses[i])
            for cb in self.callbacks:
                cb.on_step_end(self, self.step, shown)
        seconds = clock.seconds()
        # The global batch, over all ranks; a kept ragged batch (one process only) is smaller.
        seen = steps * self.cfg.train.batch_size if self.cfg.train.drop_last else loader.num_images
        mean_loss = losses.mean()
        if self.dist.active:
            mean_loss = distributed.reduce_sum(mean_loss) / self.dist.world
            correct = distributed.reduce_sum(correct)
        return {
            "lr": self.lr,
            "train_loss": mean_loss.item(),
            "train_error": 100.0 * (1 - correct.item() / seen),
            "seconds": seconds,
            "images_per_s": seen / seconds,
        }

    def _before_step(self) -> None:
        for cb in self.callbacks:
            cb.on_before_step(self)

    def _evaluate(self, model: nn.Module) -> dict[str, dict[str, float]]:
        out = {}
        d = self.data
        for split, loader in (("val", d.val), ("test", d.test), ("test_plain", d.test_plain)):
            if loader is None:
                continue
            start = time.perf_counter()
            out[split] = evaluate(model, loader, self.numerics, self.device, self.cfg.eval.tta)
            out[split]["images_per_s"] = loader.num_images / (time.perf_counter() - start)
        return out

    def evaluate_splits(self, model: nn.Module, prefix: str = "") -> dict[str, float]:
        """Evaluate `model` on the splits the run evaluates (val if held out, test unless
        eval.test=false, test_plain with eval.random_crop_size); keys like f'{prefix}test_error'."""
        results = self._evaluate(model)
        return {f"{prefix}{split}_{k}": v for split, m in results.items() for k, v in m.items()}

    def _evaluate_splits(self, row: dict[str, Any]) -> None:
        for split, metrics in self._evaluate(self.model).items():
            row.update({f"{split}_{key}": value for key, value in metrics.items()})
            metrics = {k: v for k, v in metrics.items() if k != "images_per_s"}
            for cb in self.callbacks:
                cb.on_eval_end(self, split, metrics)

    def _note_best(self, row: dict[str, Any]) -> bool:
        """Record whether this epoch is the new best; chosen on the validation split only
        (without one the best is the last epoch, and best.pt is not written: it is last.pt)."""
        if self.data.val is None:
            self.best = {"epoch": row["epoch"], "chosen_by": "last epoch (no validation split)"}
            return False
        if "val_error" in row and row["val_error"] < self.best.get("val_error", float("inf")):
            self.best = {"epoch": row["epoch"], "val_error": row["val_error"], "chosen_by": "val"}
            return True
        return False

    def _log_data_notes(self) -> None:
        loaders = [ld for ld in (self.data.train, self.data.val, self.data.test) if ld is not None]
        notes = [line for loader in loaders for line in loader.take_notes()]
        if self.dist.active:  # rank 0 writes the log, so it logs what every rank noticed
            notes = [line for part in distributed.gather_objects(notes) for line in part]
        for line in dict.fromkeys(notes):
            if line not in self.logged_notes:
                self.logged_notes.add(line)
                self.run.log(line)

    def fit(self) -> dict[str, Any]:
        """Train the remaining epochs and return the summary (also written to summary.json);
        starts the run, or continues it from run_dir's last checkpoint when resume=True."""
        if not self._started:
            self.start()
        cfg = self.cfg
        if self.dist.active and self.epoch < cfg.train.epochs:
            self.run.log(distributed.check_disjoint(self.data.train.epoch_indices(self.epoch + 1)))
        for cb in self.callbacks:
            cb.on_train_start(self)
        while self.epoch < self.total_epochs and not self.stop_requested:
            epoch = self.epoch + 1
            for cb in self.callbacks:
                cb.on_epoch_start(self, epoch)
            row: dict[str, Any] = {"epoch": epoch, "step": self.step}
            row.update(self._train_epoch(epoch))
            row["step"] = self.step
            if epoch % cfg.train.eval_every == 0 or epoch == self.total_epochs:
                self._evaluate_splits(row)
            for cb in self.callbacks:
                cb.on_epoch_end(self, epoch, row)
            self.epoch = epoch
            self.history.append(row)
            is_best = self._note_best(row)
            self._log_data_notes()
            self._save_epoch(epoch, is_best)
        summary = self.summary()
        self.run.write_summary(summary)
        for cb in self.callbacks:
            cb.on_train_end(self, summary)
        return summary

    def _save_epoch(self, epoch: int, is_best: bool) -> None:
        """Write the epoch's metrics, and at their intervals (always at the last epoch) the
        checkpoint and the curves; a new best by validation error is saved to best.pt."""
        t, last_epoch = self.cfg.train, epoch == self.total_epochs or self.stop_requested
        checkpoint = last_epoch or epoch % t.checkpoint_every == 0
        if checkpoint or is_best:
            state = self.checkpoint_state()  # a collective under DDP: every rank calls it
        if not self.run.writer:
            return
        if checkpoint:
            save_checkpoint(self.run.last, state)
        if is_best:
            save_checkpoint(self.run.best, state)
        self.run.write_metrics(self.history)
        if last_epoch or epoch % t.plot_every == 0:
            title = f"{self.cfg.name}: {self.model_name} on {self.data.info.name}"
            plot_run_curves(self.history, self.run.curves, title)

    def summary(self) -> dict[str, Any]:
        """Return the run's final metrics, size, cost, speed and environment."""
        last = self.history[-1]
        final = {k: v for k, v in last.items() if k.startswith(("train_", "val_", "test_", "ema_"))}
        train_rates = [r["images_per_s"] for r in self.history]
        return {
            "name": self.cfg.name,
            "model": self.model_name,
            "dataset": self.data.info.name,
            "epochs": self.epoch,
            "steps": self.step,
            "seed": self.cfg.train.seed,
            "final": final,
            "best": self.best,
            "protocol": "final metrics at the last epoch; "
            + (
                "best.pt chosen on the validation split"
                if self.data.val
                else "no best.pt (no validation split): last.pt is the last epoch"
            ),
            "params": self.params,
            "flops": self.flops if self.run.writer else self._flops,
            "wall_seconds": self.elapsed_before + time.perf_counter() - self.started,
            "train_images_per_s": sum(train_rates) / len(train_rates),
            "test_images_per_s": last.get("test_images_per_s"),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "numerics": numerics_dict(self.numerics),
            "backends": self.backends,
            "compile": self.numerics.compile,
            "device": str(self.device),
            "processes": self.dist.world,
            "global_batch": self.cfg.train.batch_size,
            "batch_per_process": self.cfg.train.batch_size // self.dist.world,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "finished": True,
        }
