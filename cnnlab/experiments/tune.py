"""`cnnlab tune`: an Optuna study over a recipe, judged on a validation split only.

Every trial is an ordinary run folder (`<out>/trial-NNNN`) trained with data.val_size set to
--val-size, train.eval_every=1 and eval.test=false, so the test split is never read while
tuning. The objective is the validation error at the last epoch; each epoch's validation error
is reported to Optuna, whose pruner may stop a trial early. The study lives in an RDB storage
(SQLite by default) with heartbeats: a killed process leaves its trial RUNNING until the
heartbeat lapses, then it is marked failed and re-queued with the same parameters, and running
the same command again continues the study. Several processes (--workers, or other machines
on one RDB URL) share a study; each stops when the study holds --trials trials, so up to
(processes - 1) extra trials may run at the end. Worker i of --workers samples with --seed + i;
give each machine its own --seed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console

from cnnlab.config import apply_overrides, find_recipe, read_yaml, validate
from cnnlab.engine.callbacks import Callback
from cnnlab.engine.run_folder import RunFolder
from cnnlab.engine.trainer import TrainingDiverged
from cnnlab.errors import UserError
from cnnlab.experiments.search_space import (
    TUNER_KEYS,
    Dimension,
    check_space,
    parse_space,
    with_values,
)
from cnnlab.run.training import train_new

if TYPE_CHECKING:
    import optuna

    from cnnlab.engine.trainer import Trainer

HEARTBEAT_S, GRACE_S = 10, 30
EXTRA_HINT = "pip install 'cnnlab[tune]'"


def import_optuna():  # noqa: ANN201 - the optuna module
    """Return the optuna module, or a UserError naming the extra to install."""
    try:
        import optuna
    except ImportError:
        raise UserError(f"cnnlab tune needs the Python package 'optuna': {EXTRA_HINT}") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # Heartbeats and re-queuing failed trials are marked experimental (since Optuna 2.9).
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


@dataclass
class StudyPlace:
    """Where a study is kept: its name, storage URL and the folder of its trial runs."""

    name: str
    storage: str
    out: Path


def study_place(
    args: argparse.Namespace, raw: dict[str, Any] | None, create: bool = True
) -> StudyPlace:
    """Resolve --study, --out and --storage (default sqlite:///<out>/study.db); without
    `create`, a default storage that does not exist yet is an error, not a new database."""
    name = args.study or (str(raw.get("name") or args.recipe.stem) if raw is not None else None)
    if not name:
        raise UserError("--show needs --study NAME (or the RECIPE the study was made from)")
    out = args.out or Path("tunes") / name
    storage = args.storage or f"sqlite:///{out / 'study.db'}"
    database = (
        Path(storage.removeprefix("sqlite:///")) if storage.startswith("sqlite:///") else None
    )
    if not create and database is not None and not database.is_file():
        raise UserError(
            f"no study '{name}': {database} does not exist (give the --out or --storage the "
            "study was run with)"
        )
    if args.storage is None:
        out.mkdir(parents=True, exist_ok=True)
    return StudyPlace(name, storage, out)


def open_storage(url: str):  # noqa: ANN201 - an optuna RDBStorage
    """Open the RDB storage at `url` with heartbeats; an unopenable URL is one clear line."""
    optuna = import_optuna()
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    try:
        return optuna.storages.RDBStorage(
            url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
            heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3),
        )  # fmt: skip
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy and drivers raise many types
        reason = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
        raise UserError(f"--storage {url}: cannot open it ({reason})") from None


class ValidationPruning(Callback):
    """Reports each epoch's validation error to the trial; stops it when the pruner says so."""

    def __init__(self, trial: optuna.Trial, prune: bool) -> None:
        self.trial = trial
        self.prune = prune

    def on_epoch_end(self, trainer: Trainer, epoch: int, row: dict[str, Any]) -> None:
        """Report val_error at `epoch`; raise optuna.TrialPruned if the pruner stops the trial."""
        if "val_error" not in row:
            return
        self.trial.report(row["val_error"], epoch)
        # After the last epoch the trial is complete: stopping it then would only lose it.
        if self.prune and epoch < trainer.total_epochs and self.trial.should_prune():
            import optuna

            trainer.run.log(f"pruned after epoch {epoch}: val error {row['val_error']:.2f}%")
            raise optuna.TrialPruned(f"val error {row['val_error']:.2f}% at epoch {epoch}")


def suggest(trial: optuna.Trial, dim: Dimension) -> Any:
    """Draw the trial's value of `dim`."""
    if dim.kind == "cat":
        return trial.suggest_categorical(dim.key, list(dim.choices))
    if dim.kind == "int":
        return trial.suggest_int(dim.key, int(dim.low), int(dim.high))
    return trial.suggest_float(dim.key, dim.low, dim.high, log=dim.kind == "log")


def trial_raw(base: dict[str, Any], values: dict[str, Any], val_size: int) -> dict[str, Any]:
    """Return a trial's recipe data: the base recipe, its values and the tuner's own keys."""
    tuner = {"data.val_size": val_size, "eval.test": False, "train.eval_every": 1}
    return with_values(base, {**values, **tuner})


def _settings(args: argparse.Namespace, space: tuple[Dimension, ...]) -> dict[str, Any]:
    # What fixes a study; resuming it with other settings would mix two searches.
    return {
        "recipe": str(args.recipe.resolve()),
        "overrides": list(args.overrides),
        "space": [d.spec() for d in space],
        "val_size": args.val_size,
    }


def _objective(
    base: dict[str, Any], space: tuple[Dimension, ...], args: argparse.Namespace, place: StudyPlace
):  # noqa: ANN202 - a function of an optuna trial; fmt: skip
    def objective(trial: optuna.Trial) -> float:
        values = {dim.key: suggest(trial, dim) for dim in space}
        raw = trial_raw(base, values, args.val_size)
        raw["name"] = f"{place.name}-trial{trial.number}"
        folder = place.out / f"trial-{trial.number:04d}"
        trial.set_user_attr("run_folder", str(folder))
        try:
            cfg = validate(raw)
            # One line per trial (announce), not one per epoch.
            summary = train_new(cfg, RunFolder.create(folder),
                                [ValidationPruning(trial, args.pruner == "median")],
                                progress=False)  # fmt: skip
        except (TrainingDiverged, UserError) as exc:
            # A sampled point that cannot train (diverged, refused) is a failed trial.
            trial.set_user_attr("error", str(exc))
            return float("nan")
        trial.set_user_attr("wall_seconds", summary["wall_seconds"])
        return summary["final"]["val_error"]

    return objective


def counted_trials(study: optuna.Study) -> int:
    """Return the trials that count towards --trials: done, pruned, running, and failed by a
    trial's own error (not those whose process died: they are re-queued to run again)."""
    from optuna.trial import TrialState

    keep = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    trials = study.get_trials(deepcopy=False)
    return sum(t.state in keep or (t.state == TrialState.FAIL and "error" in t.user_attrs)
               for t in trials)  # fmt: skip


def _announce(console: Console):  # noqa: ANN202 - an optuna study callback
    def announce(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        values = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in trial.params.items())  # fmt: skip
        state = trial.state.name.lower()
        if trial.state.name == "COMPLETE":
            state = f"val error {trial.value:.2f}%"
        elif "error" in trial.user_attrs:
            state = f"failed: {trial.user_attrs['error']}"
        elif trial.intermediate_values:
            epoch = max(trial.intermediate_values)
            state += f" after epoch {epoch} (val error {trial.intermediate_values[epoch]:.2f}%)"
        console.print(f"trial {trial.number}: {state} ({values})", markup=False)

    return announce


def _worker_command(args: argparse.Namespace, place: StudyPlace, index: int) -> list[str]:
    # Worker i samples with seed + i: equal seeds would draw the same start-up points.
    cmd = [sys.executable, "-m", "cnnlab", "tune", str(args.recipe), *args.overrides]
    for text in args.param:
        cmd += ["--param", text]
    cmd += ["--trials", str(args.trials), "--val-size", str(args.val_size), "--storage",
            place.storage, "--study", place.name, "--pruner", args.pruner, "--seed",
            str(args.seed + index), "--out", str(place.out), "--workers", "1"]  # fmt: skip
    if args.startup_trials is not None:
        cmd += ["--startup-trials", str(args.startup_trials)]
    return cmd


def load_or_create_study(args: argparse.Namespace, place: StudyPlace, settings: dict[str, Any]):  # noqa: ANN201 - an optuna Study
    """Create the study, or continue it if it exists with the same settings."""
    optuna = import_optuna()
    storage = open_storage(place.storage)
    startup = {} if args.startup_trials is None else {"n_startup_trials": args.startup_trials}
    sampler = optuna.samplers.TPESampler(seed=args.seed, **startup)
    pruner = (optuna.pruners.MedianPruner(**startup) if args.pruner == "median"
              else optuna.pruners.NopPruner())  # fmt: skip
    study = optuna.create_study(
        study_name=place.name, storage=storage, sampler=sampler, pruner=pruner,
        direction="minimize", load_if_exists=True,
    )  # fmt: skip
    saved = study.user_attrs.get("settings")
    if saved is None:
        study.set_user_attr("settings", settings)
    elif saved != settings:
        diff = ", ".join(k for k in settings if saved.get(k) != settings[k])
        raise UserError(f"study '{place.name}' in {place.storage} was started with another "
                        f"{diff}; use another --study or the same settings")  # fmt: skip
    return study


def run_study(args: argparse.Namespace, console: Console) -> int:
    """Run (or continue) the study until it holds --trials trials; return the exit status."""
    if args.recipe is None:
        raise UserError("cnnlab tune needs a RECIPE (or --show to look at a study)")
    args.recipe = find_recipe(args.recipe)  # a shipped recipe's name works from any folder
    if args.trials < 1 or args.workers < 1 or args.val_size < 1:
        raise UserError("--trials, --workers and --val-size must be at least 1")
    for text in args.overrides:
        if text.partition("=")[0].strip() in TUNER_KEYS:
            raise UserError(f"override {text}: `cnnlab tune` sets {TUNER_KEYS} itself")
    space = parse_space(args.param)
    base = apply_overrides(read_yaml(args.recipe), args.overrides)
    base.setdefault("name", args.recipe.stem)
    check_space(trial_raw(base, {}, args.val_size), space)
    validate(trial_raw(base, {}, args.val_size))
    place = study_place(args, base)
    study = load_or_create_study(args, place, _settings(args, space))
    optuna = import_optuna()
    console.print(f"study '{place.name}' in {place.storage}: {counted_trials(study)} of "
                  f"{args.trials} trials so far; trial runs under {place.out}")  # fmt: skip
    children = []
    for i in range(1, args.workers):
        log = open(place.out / f"worker-{i}.log", "a")  # noqa: SIM115 - closed below
        children.append((subprocess.Popen(_worker_command(args, place, i), stdout=log,
                                          stderr=subprocess.STDOUT), log))  # fmt: skip
    start = time.perf_counter()
    objective = _objective(base, space, args, place)
    try:
        while True:
            optuna.storages.fail_stale_trials(study)
            if counted_trials(study) >= args.trials:
                break
            study.optimize(objective, n_trials=1, callbacks=[_announce(console)])
    finally:
        codes = []
        for proc, log in children:
            codes.append(proc.wait())
            log.close()
    console.print(f"study '{place.name}': {counted_trials(study)} trials after "
                  f"{time.perf_counter() - start:.0f} s; table, best.yaml and history: "
                  f"cnnlab tune --show --study {place.name} --storage {place.storage}")  # fmt: skip
    return 1 if any(codes) else 0


def show(args: argparse.Namespace, console: Console) -> int:
    """`cnnlab tune --show`: the trials table, best.yaml and history.png of a study."""
    from cnnlab.experiments.tune_show import show_study

    raw = None
    if args.recipe is not None and args.study is None:
        raw = read_yaml(find_recipe(args.recipe))
        raw.setdefault("name", args.recipe.stem)
    place = study_place(args, raw, create=False)
    optuna = import_optuna()
    storage = open_storage(place.storage)
    try:
        study = optuna.load_study(study_name=place.name, storage=storage)
    except KeyError:
        names = optuna.get_all_study_names(storage)
        raise UserError(f"no study '{place.name}' in {place.storage} (it has: "
                        f"{', '.join(names) or 'none'})") from None  # fmt: skip
    return show_study(study, place.out, console)
