"""The config a run resumes with: its config.yaml, refused when edited since the last checkpoint,
and the one explicit change resume allows, a longer run (`--extend-epochs N`)."""

from __future__ import annotations

from cnnlab.config import Config, dump_config, load_config, validate
from cnnlab.config_diff import config_differences, differing_keys
from cnnlab.engine.checkpoint import atomic_write_text, load_checkpoint
from cnnlab.engine.run_folder import RunFolder
from cnnlab.errors import UserError

EPOCHS_KEY = "train.epochs"

# What extending does to the learning rate, said where it happens (log.txt) and in docs/.
SCHEDULE_NOTE = (
    "the LR schedule is a function of the step and the run's length, so it is recomputed for "
    "the new length: steps already taken keep the rates they had; from the resume point on, "
    "cosine, linear and one-cycle follow the longer curve (the rate jumps there, and a "
    "one-cycle peak placed by default at a quarter of the run moves), multistep milestones "
    "and constant rates are unchanged"
)


def resume_config(run: RunFolder, extend_epochs: int | None = None) -> Config:
    """Return the config to resume `run` with: config.yaml, which must equal the config saved in
    last.pt; with `extend_epochs`, train.epochs raised to it (config.yaml rewritten, logged)."""
    cfg = load_config(run.config)
    saved = validate(load_checkpoint(run.last)["config"]) if run.last.exists() else cfg
    edits = config_differences(saved, cfg)
    wanted = cfg
    if extend_epochs is not None:
        if extend_epochs <= saved.train.epochs:
            raise UserError(
                f"--extend-epochs {extend_epochs}: the run is already {saved.train.epochs} "
                "epochs long; give a larger number of epochs"
            )
        wanted = saved.model_copy(update={"train": saved.train.model_copy(
            update={"epochs": extend_epochs})})  # fmt: skip
        # A killed earlier extension to the same length may have rewritten config.yaml already.
        edits = [e for e in config_differences(wanted, cfg) if not e.startswith(EPOCHS_KEY)]
    if edits:
        only_epochs = differing_keys(saved, cfg) == [EPOCHS_KEY]
        hint = (
            f"; to make the run longer, use --extend-epochs {cfg.train.epochs}"
            if only_epochs and cfg.train.epochs > saved.train.epochs
            else ""
        )
        raise UserError(
            f"{run.config} differs from the config the run was trained with "
            f"({'; '.join(edits)}); resume continues a run exactly as it started, so undo the "
            f"edit{hint}"
        )
    if wanted is not cfg and run.writer:
        atomic_write_text(run.config, dump_config(wanted))
        run.log(f"extended from {saved.train.epochs} to {extend_epochs} epochs; {SCHEDULE_NOTE}")
    return wanted
