"""`cnnlab tune --show`: a study's trials as a table, its best point as a recipe, its history.

best.yaml is the study's recipe and overrides with the best trial's values set, and without
the tuner's own settings (no validation split held out, the test split evaluated): `cnnlab
train --config best.yaml` trains it once on the whole training set and tests it once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console
from rich.table import Table

from cnnlab.config import apply_overrides, read_yaml
from cnnlab.errors import UserError
from cnnlab.experiments.search_space import with_values

if TYPE_CHECKING:
    import optuna


def _value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def trials_table(study: optuna.Study) -> tuple[list[str], list[list[str]]]:
    """Return the header and one row per trial: number, state, val error, epochs, params."""
    trials = study.get_trials(deepcopy=False)
    keys = sorted({k for t in trials for k in t.params})
    header = ["trial", "state", "val error %", "epochs", *keys, "seconds"]
    rows = []
    for t in trials:
        error = f"{t.value:.2f}" if t.state.name == "COMPLETE" else "-"
        if t.state.name != "COMPLETE" and t.intermediate_values:
            # In brackets: the last epoch's val error of a trial that did not finish.
            error = f"({t.intermediate_values[max(t.intermediate_values)]:.2f})"
        epochs = str(max(t.intermediate_values)) if t.intermediate_values else "-"
        seconds = t.duration.total_seconds() if t.duration is not None else None
        rows.append([str(t.number), t.state.name.lower(), error, epochs,
                     *(_value(t.params[k]) if k in t.params else "-" for k in keys),
                     f"{seconds:.0f}" if seconds is not None else "-"])  # fmt: skip
    return header, rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """Return the table as GitHub markdown."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def best_recipe(study: optuna.Study) -> str:
    """Return best.yaml's text: the recipe with the best trial's values, and where they came
    from."""
    settings = study.user_attrs.get("settings")
    if settings is None:
        raise UserError(f"study '{study.study_name}' was not made by cnnlab tune")
    best = study.best_trial
    raw = apply_overrides(read_yaml(Path(settings["recipe"])), settings["overrides"])
    raw.setdefault("name", Path(settings["recipe"]).stem)
    raw = with_values(raw, dict(best.params))
    raw["name"] = f"{raw['name']}-tuned"
    values = ", ".join(f"{k}={_value(v)}" for k, v in best.params.items())
    header = (
        f"# Best of study '{study.study_name}': trial {best.number}, validation error "
        f"{best.value:.2f}% on a {settings['val_size']}-image split held out of training,\n"
        f"# at the last epoch ({values}). Searched: {' '.join(settings['space'])}.\n"
        "# Without the validation split: `cnnlab train --config best.yaml` trains on the whole\n"
        "# training set and evaluates the test split once.\n"
    )
    return header + yaml.safe_dump(raw, sort_keys=False)


def plot_history(study: optuna.Study, path: Path) -> None:
    """Draw each trial's validation error (pruned ones at their last epoch) and the best so far."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    ax.scatter([t.number for t in done], [t.value for t in done], label="complete", zorder=3)
    ax.scatter([t.number for t in pruned],
               [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
               marker="x", color="tab:red", label="pruned (last val error)", zorder=3)  # fmt: skip
    best, xs, ys = float("inf"), [], []
    for t in sorted(done, key=lambda t: t.number):
        best = min(best, t.value)
        xs.append(t.number)
        ys.append(best)
    ax.step(xs, ys, where="post", color="tab:green", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation error (%)")
    ax.set_title(f"study {study.study_name}: TPE, {len(trials)} trials")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def show_study(study: optuna.Study, out: Path, console: Console) -> int:
    """Print the trials table and write best.yaml and history.png into `out`."""
    header, rows = trials_table(study)
    if not rows:
        raise UserError(f"study '{study.study_name}' has no trials yet")
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    out.mkdir(parents=True, exist_ok=True)
    (out / "trials.md").write_text(markdown_table(header, rows))
    try:
        best = study.best_trial
    except ValueError:
        console.print("no trial has completed yet: no best.yaml")
        return 0
    (out / "best.yaml").write_text(best_recipe(study))
    plot_history(study, out / "history.png")
    console.print(f"best: trial {best.number}, val error {best.value:.2f}%; "
                  f"{out / 'best.yaml'}, {out / 'trials.md'}, {out / 'history.png'}")  # fmt: skip
    return 0
