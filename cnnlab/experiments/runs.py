"""Finding run folders and reading them defensively: finished, unfinished, failed, corrupt."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cnnlab.engine.run_folder import read_metrics
from cnnlab.errors import UserError

# Any of these marks a folder as a run folder (also one that died early or failed).
_MARKERS = ("config.yaml", "summary.json", "metrics.jsonl", "last.pt", "error.txt")


@dataclass
class RunRecord:
    """One run folder as read from disk; only `finished` runs enter result tables."""

    path: Path
    status: str  # finished | unfinished | failed | corrupt | val only
    detail: str = ""
    config: dict[str, Any] | None = None
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)


def find_run_dirs(roots: list[Path]) -> list[Path]:
    """Return every run folder at or under `roots` (hidden folders skipped), sorted."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if not root.is_dir():
            raise UserError(f"{root} is not a folder")
        stack = [root]
        while stack:
            folder = stack.pop()
            if any((folder / marker).exists() for marker in _MARKERS):
                found.add(folder)
                continue  # run folders do not nest
            try:
                children = [p for p in folder.iterdir() if p.is_dir()]
            except OSError:
                continue
            stack += [p for p in children if not p.name.startswith(".")]
    return sorted(found)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _read_config(path: Path, problems: list[str]) -> dict[str, Any] | None:
    file = path / "config.yaml"
    if not file.exists():
        problems.append("no config.yaml")
        return None
    try:
        data = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        problems.append("config.yaml cannot be read")
        return None
    if not isinstance(data, dict) or not data:
        problems.append("config.yaml is empty or not a mapping (half-written?)")
        return None
    return data


def _read_history(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    try:
        return read_metrics(path / "metrics.jsonl")
    except UserError as exc:
        problems.append(str(exc).replace(f"{path}/", ""))
        return []


def _read_summary(path: Path, problems: list[str]) -> dict[str, Any]:
    file = path / "summary.json"
    if not file.exists():
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        problems.append("summary.json is not valid JSON")
        return {}
    final = data.get("final") if isinstance(data, dict) else None
    if not isinstance(final, dict) or not _number(final.get("test_error")):
        problems.append("summary.json lacks final.test_error")
        return {}
    return data


def read_run(path: Path) -> RunRecord:
    """Read one run folder; never raises for damaged contents, it says what is wrong instead."""
    path = Path(path)
    problems: list[str] = []
    config = _read_config(path, problems)
    history = _read_history(path, problems)
    summary = _read_summary(path, problems)
    error = path / "error.txt"
    if error.exists() and summary.get("finished") is not True:
        try:
            lines = error.read_text(errors="replace").strip().splitlines()
        except OSError:
            lines = []
        detail = lines[0] if lines else "failed (empty error.txt)"
        return RunRecord(path, "failed", detail, config, {}, history)
    if config and (config.get("eval") or {}).get("test") is False:
        # A tuning trial (eval.test=false): it has validation metrics only, by design.
        detail = (
            "trained with eval.test=false (a tuning trial): no test metrics; cnnlab tune --show"
        )
        return RunRecord(path, "val only", detail, config, {}, history)
    if problems:
        return RunRecord(path, "corrupt", "; ".join(problems), config, {}, history)
    if summary.get("finished") is True:
        if not history:
            return RunRecord(path, "corrupt", "finished but metrics.jsonl is missing", config)
        return RunRecord(path, "finished", "", config, summary, history)
    epochs = (config.get("train") or {}).get("epochs", "?") if config else "?"
    detail = (
        f"{len(history)}/{epochs} epochs done; continue it by re-running its sweep, "
        f"or with `cnnlab train --resume {path}`"
    )
    return RunRecord(path, "unfinished", detail, config, {}, history)
