"""Result tables from run folders: grouped by configuration, statistics over seeds, protocol."""

from __future__ import annotations

import csv
import io
import os
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnnlab.config_diff import flatten
from cnnlab.errors import UserError, closest
from cnnlab.experiments.plan import find_sweep, sweep_command
from cnnlab.experiments.runs import RunRecord, find_run_dirs, read_run

SEED_KEY = "train.seed"
NO_VAL = "none — last epoch"


@dataclass
class Group:
    """Runs that share a configuration (all keys but the seed, or the `--by` keys)."""

    values: dict[str, Any]
    runs: list[RunRecord] = field(default_factory=list)  # finished
    others: list[RunRecord] = field(default_factory=list)  # same config, not finished
    label: str = ""


def _key_of(record: RunRecord, by: list[str] | None) -> dict[str, Any]:
    flat = flatten(record.config or {})
    if by:
        return {key: flat.get(key) for key in by}
    return {k: v for k, v in flat.items() if k != SEED_KEY}


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_text(v) for v in value) + "]"
    return (
        "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    )


def _natural(value: Any) -> tuple:
    # Numbers sort as numbers (0.05 before 0.2 before 1e-1 read as 0.1), then text.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value, "")
    return (1, 0, _text(value))


def group_runs(records: list[RunRecord], by: list[str] | None = None) -> list[Group]:
    """Group finished runs by configuration; unfinished ones with a config join their group."""
    if by:
        known = set().union(*(flatten(r.config or {}) for r in records))
        for key in by:
            if key not in known:
                raise UserError(f"--by '{key}' is not a config key of any run{closest(key, known)}")
    groups: dict[str, Group] = {}
    for record in records:
        if record.config is None:
            continue
        values = _key_of(record, by)
        group = groups.setdefault(repr(sorted(values.items(), key=str)), Group(values))
        (group.runs if record.status == "finished" else group.others).append(record)
    shown = [g for g in groups.values() if g.runs]
    keys = sorted(set().union(*(g.values for g in shown))) if shown else []
    varying = [k for k in keys if len({_text(g.values.get(k)) for g in shown}) > 1]
    # A reference section changes no result; name the rows by what was varied.
    label_keys = [k for k in varying if not k.startswith("reference.")] or varying
    if by:
        label_keys = by
    for group in shown:
        if label_keys:
            group.label = ", ".join(f"{k}={_text(group.values.get(k))}" for k in label_keys)
        else:
            group.label = _text(group.values.get("name", "all runs"))
    return sorted(shown, key=lambda g: [_natural(g.values.get(k)) for k in label_keys])


def _stats(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "mean": None, "std": None, "min": None, "max": None}
    return {
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,  # sample std (n - 1)
        "min": min(values),
        "max": max(values),
    }


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _best_by(record: RunRecord) -> str:
    return "val split" if (record.summary.get("best") or {}).get("chosen_by") == "val" else NO_VAL


def _test_error_at_best(record: RunRecord) -> float | None:
    epoch = (record.summary.get("best") or {}).get("epoch")
    rows = [r for r in record.history if r.get("epoch") == epoch and "test_error" in r]
    return rows[-1]["test_error"] if rows and _best_by(record) == "val split" else None


def _best_test_epoch_error(record: RunRecord) -> float | None:
    # The papers' protocol for best-over-epochs rows (NR, ReCU): shown beside them only, never
    # used to choose a checkpoint. Over the epochs the run tested (train.eval_every).
    errors = [r["test_error"] for r in record.history if "test_error" in r]
    return min(errors) if errors else None


def _shown_path(path: Path) -> str:
    # Short and runnable from here: relative below the working folder, absolute elsewhere.
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return str(path)
    return str(Path(path).resolve()) if relative.startswith("..") else relative


def reproduce_command(group: Group) -> str:
    """Return the command that reruns a row: its sweep point, or `cnnlab train --config`."""
    seeds = sorted({flatten(r.config or {}).get(SEED_KEY, 0) for r in group.runs}, key=_natural)
    seed_list = ",".join(str(s) for s in seeds)
    commands = []
    for record in group.runs:
        found = find_sweep(record.path)
        config = _shown_path(record.path / "config.yaml")
        if found is not None:
            commands.append(sweep_command(found[1], found[2].point, seeds))
        elif len(group.runs) > 1:
            commands.append(shlex.join(["cnnlab", "sweep", config, "--seed-list", seed_list]))
        else:
            commands.append(shlex.join(["cnnlab", "train", "--config", config]))
    return " ; ".join(dict.fromkeys(commands))  # distinct, in order (several under --by)


# Overrides that change where or how fast a run goes, not what it measures.
_NEUTRAL = {"data.root", "data.download", "train.device", "train.precision",
            "train.channels_last", "train.eval_batch_size", "name"}  # fmt: skip


def recipe_changes(group: Group) -> list[str]:
    """Return the config keys a sweep's overrides or grid changed from its recipe (sorted)."""
    changed: set[str] = set()
    for record in group.runs:
        found = find_sweep(record.path)
        if found is not None:
            overrides = [*found[1].overrides, *found[2].point]
            changed |= {o.partition("=")[0].strip() for o in overrides}
    return sorted(changed - _NEUTRAL)


def final_probe_medians(group: Group) -> dict[str, float]:
    """Return {'probe_<name>_median': percent} over the runs' last-epoch dead-unit probes."""
    readings: dict[str, list[float]] = {}
    for run in group.runs:
        last = run.history[-1] if run.history else {}
        for key, value in last.items():
            if key.startswith("probe_") and key != "probe_seconds" and isinstance(value, float):
                readings.setdefault(key, []).append(100.0 * value)
    return {f"{key}_median": statistics.median(v) for key, v in sorted(readings.items())}


def summarize(group: Group) -> dict[str, Any]:
    """Return one table row: statistics of the final test error over the group's runs."""
    finals = [r.summary["final"] for r in group.runs]
    errors = _stats([f["test_error"] for f in finals])
    top5 = _stats([f["test_top5_error"] for f in finals if "test_top5_error" in f])
    seeds = [flatten(r.config or {}).get(SEED_KEY) for r in group.runs]
    best_by = sorted({_best_by(r) for r in group.runs})
    at_best = [e for e in map(_test_error_at_best, group.runs) if e is not None]

    def median_of(key: str) -> float | None:
        values = [
            r.summary[key] for r in group.runs if isinstance(r.summary.get(key), (int, float))
        ]
        if values and len(set(values)) == 1:  # params, FLOPs: keep the exact (integer) count
            return values[0]
        return statistics.median(values) if values else None

    reference = (group.runs[0].config or {}).get("reference")
    reference = reference if isinstance(reference, dict) else {}
    best_epoch = [e for e in map(_best_test_epoch_error, group.runs) if e is not None]
    paper_best = reference.get("selection") == "best_over_epochs" and best_epoch
    ref_value = reference.get("value")
    ref_ok = isinstance(ref_value, (int, float)) and not isinstance(ref_value, bool)
    n = len(group.runs)
    distinct = len(set(seeds))
    over = (
        _count(n, "seed") if distinct == n else f"{_count(n, 'run')} ({_count(distinct, 'seed')})"
    )
    return {
        "config": group.label,
        "n": n,
        **final_probe_medians(group),
        "seeds": ",".join(str(s) for s in sorted(seeds, key=_natural)),
        **{f"test_error_{k}": v for k, v in errors.items()},
        **{f"test_top5_error_{k}": v for k, v in top5.items()},
        "test_error_at_best_val_median": statistics.median(at_best) if at_best else None,
        "params": median_of("params"),
        "flops": median_of("flops"),
        "wall_seconds_median": median_of("wall_seconds"),
        "train_images_per_s_median": median_of("train_images_per_s"),
        "reference": ref_value if ref_ok else None,
        "reference_protocol": reference.get("protocol"),
        "reference_selection": reference.get("selection"),
        "test_error_best_test_epoch_median": statistics.median(best_epoch) if paper_best else None,
        "reference_source": reference.get("source"),
        "reference_row": reference.get("row"),
        "median_minus_reference": errors["median"] - ref_value if ref_ok else None,
        # A reference compares only with the recipe's own protocol; say when it was changed.
        "reference_caveat": (
            "recipe changed: " + ", ".join(recipe_changes(group))
            if reference and recipe_changes(group)
            else None
        ),
        "not_finished": len(group.others),
        "best_checkpoint_on": " / ".join(best_by),
        "protocol": f"error at last epoch; statistic over {over}; "
        f"best checkpoint chosen on {' / '.join(best_by)}",
        "command": reproduce_command(group),
    }


def protocol_text(rows: list[dict[str, Any]]) -> str:
    """Return the sentence that states how every number of a table was obtained."""
    counts = sorted({r["n"] for r in rows})
    over = _count(counts[0], "seed") if len(counts) == 1 else "the n seeds of each row"
    if any(len(set(r["seeds"].split(","))) != r["n"] for r in rows):
        over = "the n runs of each row (some rows hold runs with the same seed)"
    chosen = sorted({r["best_checkpoint_on"] for r in rows})
    best = chosen[0] if len(chosen) == 1 else "the split named per row (val split, or none)"
    return (
        f"Protocol: top-1 test error (%) at last epoch; statistic over {over} "
        f"(median, mean ± sample std, min, max); best checkpoint chosen on {best}. "
        "The test set never chooses a checkpoint."
    )


def _num(value: float | None, digits: int = 2, sign: bool = False) -> str:
    if value is None:
        return "–"
    return f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"


def _si(value: float | None) -> str:
    if value is None:
        return "–"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.0f}"


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Return the rows as a markdown table (numbers rounded for reading; CSV keeps them all)."""
    with_ref = any(r["reference"] is not None or r["reference_source"] for r in rows)
    with_val = any(r["test_error_at_best_val_median"] is not None for r in rows)
    with_notes = any(r["not_finished"] for r in rows)
    with_paper_best = any(r.get("test_error_best_test_epoch_median") is not None for r in rows)
    head = ["config", "n", "test err median", "mean ± std", "min", "max", "top-5 median",
            "top-5 mean ± std", "params", "FLOPs", "wall s (median)", "img/s (median)"]  # fmt: skip
    mixed_best = len({r["best_checkpoint_on"] for r in rows}) > 1
    head += ["best checkpoint on"] if mixed_best else []
    head += ["test err at best-val epoch"] if with_val else []
    head += ["reference", "median − ref", "source"] if with_ref else []
    head += ["best test epoch, paper's protocol (comparison only)"] if with_paper_best else []
    head += ["not finished"] if with_notes else []
    probes = sorted({k for r in rows for k in r if k.startswith("probe_")})
    head += [f"{k.removeprefix('probe_').removesuffix('_median')} % (median)" for k in probes]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [
            r["config"].replace("|", "\\|"),
            str(r["n"]),
            _num(r["test_error_median"]),
            f"{_num(r['test_error_mean'])} ± {_num(r['test_error_std'])}",
            _num(r["test_error_min"]),
            _num(r["test_error_max"]),
            _num(r["test_top5_error_median"]),
            f"{_num(r['test_top5_error_mean'])} ± {_num(r['test_top5_error_std'])}",
            _si(r["params"]),
            _si(r["flops"]),
            _num(r["wall_seconds_median"], 0),
            _num(r["train_images_per_s_median"], 0),
        ]
        if mixed_best:
            cells.append(r["best_checkpoint_on"])
        if with_val:
            cells.append(_num(r["test_error_at_best_val_median"]))
        if with_ref:
            proto = f" ({r['reference_protocol']})" if r["reference_protocol"] else ""
            ref = "–" if r["reference"] is None else f"{r['reference']}{proto}"
            source = ", ".join(str(r[k]) for k in ("reference_source", "reference_row") if r[k])
            delta = _num(r["median_minus_reference"], sign=True)
            if r["reference_caveat"]:
                delta += f" ({r['reference_caveat']})"
            cells += [ref, delta, source or "–"]
        if with_paper_best:
            cells.append(_num(r.get("test_error_best_test_epoch_median")))
        if with_notes:
            cells.append(str(r["not_finished"] or ""))
        cells += [_num(r.get(k)) for k in probes]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def csv_table(rows: list[dict[str, Any]]) -> str:
    """Return the rows as CSV with every field at full precision (one protocol column per row)."""
    out = io.StringIO()
    # Rows differ in their probe columns; the header is the union, in first-seen order.
    fields = list(dict.fromkeys(k for r in rows for k in r)) or ["config"]
    writer = csv.DictWriter(out, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def problems_table(records: list[RunRecord]) -> str:
    """Return a markdown table of the run folders that are not finished, and why."""
    lines = ["| run | status | detail |", "|---|---|---|"]
    for r in records:
        detail = r.detail.replace("|", "\\|")
        lines.append(f"| {_shown_path(r.path)} | {r.status} | {detail} |")
    return "\n".join(lines)


@dataclass
class Report:
    """Everything `cnnlab report` shows: the grouped rows, and the runs left out of them."""

    groups: list[Group]
    rows: list[dict[str, Any]]
    left_out: list[RunRecord]


def build_report(roots: list[Path], by: list[str] | None = None) -> Report:
    """Read every run folder under `roots` and build the table rows."""
    dirs = find_run_dirs(roots)
    if not dirs:
        raise UserError(f"no run folders under {', '.join(str(r) for r in roots)}")
    records = [read_run(d) for d in dirs]
    groups = group_runs(records, by)
    left_out = [r for r in records if r.status != "finished"]
    return Report(groups, [summarize(g) for g in groups], left_out)


def curves_of(report: Report) -> list[tuple[str, list[list[dict[str, Any]]]]]:
    """Return (row label, metrics histories of its finished runs) for plotting."""
    return [(g.label, [r.history for r in g.runs]) for g in report.groups]


def results_page(report: Report, command: str, page: Path, picture: Path | None) -> str:
    """Return a markdown results page: protocol, table, per-row commands, curves, left-out runs."""
    runs = sum(r["n"] for r in report.rows)
    parts = [
        "# Results",
        f"{runs} finished runs in {len(report.rows)} configurations; made by `{command}`.",
    ]
    if report.rows:
        parts += [protocol_text(report.rows), markdown_table(report.rows), "## How to reproduce"]
        parts.append("\n".join(f"- {r['config']}: `{r['command']}`" for r in report.rows))
    if picture is not None:
        link = Path(os.path.relpath(picture, page.parent)).as_posix()
        parts += ["## Curves", f"![test error and train loss per epoch]({link})"]
    if report.left_out:
        parts += ["## Runs not in the table", problems_table(report.left_out)]
    return "\n\n".join(parts) + "\n"
