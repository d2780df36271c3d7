"""The run folder: its files, safe creation (never overwriting) and re-opening for resume."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cnnlab.engine.checkpoint import TEMP_SUFFIX, atomic_write_text
from cnnlab.errors import UserError


def default_run_dir(name: str, base: Path = Path("runs")) -> Path:
    """Return runs/<name>-<timestamp>, with a numeric suffix if that folder already exists."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = base / f"{name}-{stamp}"
    suffix = 2
    while path.exists():
        path = base / f"{name}-{stamp}-{suffix}"
        suffix += 1
    return path


class RunFolder:
    """Paths and writers for one run's files; with `writer=False` (DDP ranks other than 0) the
    writing methods do nothing, so exactly one process writes the run folder."""

    def __init__(self, path: Path | None, writer: bool = True) -> None:
        # With no path (a Trainer without run_dir) nothing is written; the paths are dummies.
        self.writer = writer and path is not None
        self.path = Path(path) if path is not None else Path("(no run folder)")
        self.config = self.path / "config.yaml"
        self.metrics = self.path / "metrics.jsonl"
        self.log_file = self.path / "log.txt"
        self.last = self.path / "last.pt"
        self.best = self.path / "best.pt"
        self.summary = self.path / "summary.json"
        self.curves = self.path / "curves.png"

    @staticmethod
    def check_new(path: Path) -> None:
        """Refuse, as create() would, a place that holds something other than a new run's
        folder; reads only, so a run checks its --out before the slow reading of its data."""
        path = Path(path)
        if path.is_dir() and all(TEMP_SUFFIX in p.suffixes for p in path.iterdir()):
            return  # a start killed while writing its config.yaml left only that temp file
        if path.exists():
            resumable = (path / "config.yaml").is_file()
            hint = (
                f"continue it with `cnnlab train --resume {path}`"
                if resumable
                else "choose another --out"
            )
            raise UserError(f"run folder {path} already exists and is not empty; {hint}")

    @classmethod
    def create(cls, path: Path) -> RunFolder:
        """Make a new run folder; a non-empty existing folder or an unwritable place is an error."""
        path = Path(path)
        cls.check_new(path)
        if path.is_dir():
            # Only temp files of a start killed before its config.yaml existed: no run yet.
            for p in path.iterdir():
                p.unlink()
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as exc:
            raise UserError(f"cannot write the run folder {path}: {exc.strerror or exc}") from None
        return cls(path)

    @classmethod
    def nowhere(cls) -> RunFolder:
        """Return a run folder that writes nothing (a run kept in memory only)."""
        return cls(None)

    @classmethod
    def open(cls, path: Path, writer: bool = True) -> RunFolder:
        """Open an existing run folder for resuming; it must hold config.yaml."""
        run = cls(Path(path), writer)
        if not run.config.is_file():
            raise UserError(f"{path} is not a run folder (it has no config.yaml)")
        return run

    def discard_temp_files(self) -> list[str]:
        """Delete the temp files that writes cut short by a kill left behind (never read: each
        was renamed over its file only once complete), log and return their names."""
        if not self.writer:
            return []
        # NAME.tmp from the atomic writes, curves.png.tmp.png from the curves plot.
        stray = sorted(p for p in self.path.iterdir() if p.is_file() and TEMP_SUFFIX in p.suffixes)
        for p in stray:
            p.unlink()
        if stray:
            self.log(f"removed unfinished writes of a killed session: {[p.name for p in stray]}")
        return [p.name for p in stray]

    def log(self, line: str) -> None:
        """Append a line to log.txt."""
        if not self.writer:
            return
        with open(self.log_file, "a") as f:
            f.write(line.rstrip("\n") + "\n")

    def write_metrics(self, history: Sequence[dict[str, Any]]) -> None:
        """Rewrite metrics.jsonl from the full history (atomic; the file stays small)."""
        if not self.writer:
            return
        atomic_write_text(self.metrics, "".join(json.dumps(row) + "\n" for row in history))

    def write_summary(self, summary: dict[str, Any]) -> None:
        """Write summary.json atomically."""
        if not self.writer:
            return
        atomic_write_text(self.summary, json.dumps(summary, indent=2) + "\n")


def read_metrics(file: Path) -> list[dict[str, Any]]:
    """Return the rows of a metrics.jsonl (none when it does not exist); a file that cannot be
    read or a line that is not a metrics row is a UserError naming the file and line."""
    if not file.exists():
        return []
    try:
        lines = file.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        raise UserError(f"{file} cannot be read") from None
    rows = []
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except ValueError:
            row = None
        if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
            raise UserError(f"{file} line {number} is not a metrics row (truncated?)")
        rows.append(row)
    return rows
