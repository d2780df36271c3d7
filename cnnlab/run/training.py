"""`cnnlab.train(config)`: build a run's data, model, callbacks and Trainer from a Config,
exactly as `cnnlab train` does, and train it in a run folder (new or resumed)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnnlab.config import Config, apply_overrides, dump_config, load_config, validate
from cnnlab.data.pipeline import DataBundle, build_data
from cnnlab.data.sources import DatasetInfo
from cnnlab.engine import distributed
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.checkpoint import atomic_write_text, seed_everything
from cnnlab.engine.run_folder import RunFolder, default_run_dir
from cnnlab.engine.tensorboard import TensorBoardWriter, tensorboard_available
from cnnlab.engine.trainer import Trainer, resolve_device
from cnnlab.errors import UserError
from cnnlab.registry import METHODS, build_model
from cnnlab.run.resume_check import resume_config


def method_callbacks(cfg: Config) -> list[Callback]:
    """Return the callbacks of every method the config switches on, in the methods' order."""
    return [cb for _, entry in METHODS.items() if entry.active(cfg) for cb in entry.build(cfg)]


def config_callbacks(cfg: Config, writer: bool = True) -> list[Callback]:
    """Return the methods' callbacks and, where `writer` (rank 0) and it is installed,
    TensorBoard (after the methods, so that it logs e.g. the probe readings of the row)."""
    callbacks = method_callbacks(cfg)
    if writer and tensorboard_available():
        callbacks.append(TensorBoardWriter())
    return callbacks


def build_run_model(cfg: Config, info: DatasetInfo) -> nn.Module:
    """Build the config's model for a dataset's channels and classes."""
    return build_model(
        cfg.model.name, in_channels=info.channels, num_classes=info.num_classes,
        **cfg.model.options(),
    )  # fmt: skip


def _rank_warning(rank: int) -> Callable[[str], None] | None:
    # Messages from the data workers of rank r > 0 say which rank they come from.
    if rank == 0:
        return None
    return lambda line: print(f"[rank {rank}] {line}", file=sys.stderr, flush=True)


def prepare_run(cfg: Config) -> tuple[DataBundle, nn.Module]:
    """Return this rank's data and the model of `cfg` (initial weights seeded by train.seed).

    A new run calls it before its run folder is made, so that a dataset that cannot be read or
    a model option out of range is refused with nothing written.
    """
    dist = distributed.current()
    device = distributed.device_for(dist, resolve_device(cfg.train.device))
    # The model's initial weights derive from train.seed, identical on every rank.
    seed_everything(cfg.train.seed)
    data: DataBundle = build_data(cfg, device, dist.rank, dist.world, _rank_warning(dist.rank))
    return data, build_run_model(cfg, data.info)


def build_trainer(
    cfg: Config,
    run: RunFolder,
    callbacks: Sequence[Callback] = (),
    resume: bool = False,
    prepared: tuple[DataBundle, nn.Module] | None = None,
    progress: bool = True,
) -> Trainer:
    """Return the Trainer of `cfg`: its data and model (`prepared`, or built now by
    prepare_run), the methods' callbacks (before `callbacks`, so e.g. EMA metrics are in the
    row reporters see); `progress` as Trainer's."""
    data, model = prepared if prepared is not None else prepare_run(cfg)
    return Trainer(
        model, data, config=cfg, run_dir=run, resume=resume, progress=progress,
        callbacks=[*config_callbacks(cfg, run.writer), *callbacks],
    )  # fmt: skip


def train_new(
    cfg: Config,
    run: RunFolder,
    callbacks: Sequence[Callback] = (),
    prepared: tuple[DataBundle, nn.Module] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Start a run of `cfg` in a fresh run folder and train it to the end (on `prepared` data
    and model when given, see prepare_run); `progress` prints its epochs."""
    if run.writer:
        atomic_write_text(run.config, dump_config(cfg))
    run.log(f"cnnlab run {run.path} | torch {torch.__version__}")
    return build_trainer(cfg, run, callbacks, prepared=prepared, progress=progress).fit()


def train_resume(
    cfg: Config, run: RunFolder, callbacks: Sequence[Callback] = (), progress: bool = True
) -> dict[str, Any]:
    """Continue a run from its last.pt (or from scratch if it died before its first checkpoint);
    `progress` prints its epochs."""
    return build_trainer(cfg, run, callbacks, resume=True, progress=progress).fit()


def train(
    config: Config | dict[str, Any] | str | Path | None = None,
    *,
    overrides: Sequence[str] = (),
    out: str | Path | None = None,
    resume: str | Path | None = None,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    extend_epochs: int | None = None,
) -> dict[str, Any]:
    """Train a run described by `config` (a Config, a dict of sections, a recipe path, or None
    for the default recipe) in run folder `out` (default `runs/<name>-<time>`), or continue the
    run folder `resume` (made `extend_epochs` long when given); return its summary. `progress`
    prints each epoch's line and the numerics in force (a live bar on a terminal), as
    `cnnlab train` does.

    Under torchrun each process joins the job (as `cnnlab train` does): every rank trains its
    shard, rank 0 alone writes the run folder and prints.
    """
    if resume is not None:
        device = load_config(RunFolder.open(Path(resume)).config).train.device
        run = RunFolder.open(Path(resume), writer=distributed.init_from_env(device).is_main)
        # resume_config refuses an edited config.yaml.
        return train_resume(resume_config(run, extend_epochs), run, callbacks, progress)
    if extend_epochs is not None:
        raise UserError("extend_epochs lengthens a run: use it with resume=RUN")
    if isinstance(config, Config | dict):
        raw = config.model_dump(mode="json") if isinstance(config, Config) else config
        cfg = validate(apply_overrides(raw, list(overrides)))
    else:
        cfg = load_config(config, list(overrides))
    info = distributed.init_from_env(cfg.train.device)
    if out is not None:
        distributed.on_main(lambda: RunFolder.check_new(Path(out)))  # before reading the data
    prepared = prepare_run(cfg)  # data and model errors before the folder exists
    # Rank 0 picks (the timestamped default) and creates the folder; the others follow it.
    path = distributed.on_main(
        lambda: RunFolder.create(Path(out) if out is not None else default_run_dir(cfg.name)).path
    )
    return train_new(cfg, RunFolder(path, writer=info.is_main), callbacks, prepared, progress)
