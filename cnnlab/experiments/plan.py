"""What a sweep is: recipe + overrides + grid + seeds, its run names, shards and DIR/sweep.yaml.

Kept free of torch so that `cnnlab report` can re-plan a sweep (to name each row's command)
without paying for the import.
"""

from __future__ import annotations

import functools
import os
import re
import shlex
from dataclasses import dataclass, replace
from itertools import product
from pathlib import Path
from typing import Any

import yaml

from cnnlab.errors import UserError

SWEEP_FILE = "sweep.yaml"
# Characters that are not allowed (Windows) or not sensible (path separators) in folder names.
_UNSAFE = re.compile(r'[<>:"|?*\\/\x00-\x1f]')
_MAX_NAME = 150


@dataclass(frozen=True)
class SweepSpec:
    """The identity of a sweep: the recipe, base overrides, the grid (in order) and the seeds."""

    recipe: str
    overrides: tuple[str, ...] = ()
    grid: tuple[tuple[str, tuple[str, ...]], ...] = ()
    seeds: tuple[int, ...] = (0,)

    def to_dict(self) -> dict[str, Any]:
        """Return the plain-data form written to sweep.yaml."""
        return {
            "recipe": self.recipe,
            "overrides": list(self.overrides),
            "grid": {key: list(values) for key, values in self.grid},
            "seeds": list(self.seeds),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepSpec:
        """Rebuild a spec from sweep.yaml data."""
        grid = data.get("grid") or {}
        return cls(
            recipe=str(data["recipe"]),
            overrides=tuple(str(o) for o in data.get("overrides") or ()),
            grid=tuple((str(k), tuple(str(v) for v in vs)) for k, vs in grid.items()),
            seeds=tuple(int(s) for s in data.get("seeds") or (0,)),
        )


@dataclass(frozen=True)
class PlannedRun:
    """One (grid point, seed) of a sweep: its index in the sweep and its folder name."""

    index: int
    name: str  # folder relative to the sweep folder, e.g. "optim.lr=0.05/seed0"
    point: tuple[str, ...]  # the grid overrides, e.g. ("optim.lr=0.05",)
    seed: int


def split_values(text: str) -> list[str]:
    """Split 'a,b,[1,2]' at the commas outside brackets: ['a', 'b', '[1,2]']."""
    values, depth, current = [], 0, ""
    for char in text:
        depth += char in "[{("
        depth -= char in "]})"
        if char == "," and depth == 0:
            values.append(current.strip())
            current = ""
        else:
            current += char
    values.append(current.strip())
    return values


def parse_grid(items: list[str]) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """Parse `--grid key=v1,v2` options into ((key, (v1, v2)), ...), keeping their order."""
    grid: list[tuple[str, tuple[str, ...]]] = []
    for text in items:
        key, sep, values = text.partition("=")
        key = key.strip()
        if not sep or not key or not values.strip():
            raise UserError(
                f"--grid '{text}' is not of the form key=v1,v2 (e.g. optim.lr=0.05,0.1)"
            )
        if key == "train.seed":
            raise UserError("--grid train.seed: give seeds with --seeds N or --seed-list 0,1,2")
        if any(key == k for k, _ in grid):
            raise UserError(f"--grid names '{key}' twice; give all its values in one --grid")
        parts = split_values(values)
        if "" in parts or len(set(parts)) != len(parts):
            raise UserError(f"--grid '{text}': values must be non-empty and distinct")
        grid.append((key, tuple(parts)))
    return tuple(grid)


def parse_seeds(count: int | None, listed: str | None) -> tuple[int, ...]:
    """Return the seeds from `--seeds N` (0..N-1) or `--seed-list 0,1,2` (default: seed 0)."""
    if count is not None and listed is not None:
        raise UserError("give either --seeds N or --seed-list, not both")
    if listed is not None:
        try:
            seeds = tuple(int(s) for s in listed.split(","))
        except ValueError:
            raise UserError(f"--seed-list must be integers like 0,1,2, got '{listed}'") from None
        if len(set(seeds)) != len(seeds):
            raise UserError(f"--seed-list '{listed}' repeats a seed")
        return seeds
    if count is not None and count < 1:
        raise UserError(f"--seeds must be at least 1, got {count}")
    return tuple(range(count or 1))


def parse_shard(text: str) -> tuple[int, int]:
    """Parse `--shard i/n` (0 <= i < n) into (i, n)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not match or not 0 <= int(match[1]) < int(match[2]):
        raise UserError(f"--shard must be i/n with 0 <= i < n (e.g. 0/4), got '{text}'")
    return int(match[1]), int(match[2])


def folder_name(point: tuple[str, ...]) -> str:
    """Return the readable folder name of a grid point ('base' when the grid is empty)."""
    name = _UNSAFE.sub("_", ",".join(point)) or "base"
    if name.startswith("."):  # hidden folders are skipped by `cnnlab report`
        name = "_" + name[1:]
    if len(name) > _MAX_NAME:  # file systems cap names at 255 bytes; keep it unique by a hash
        import hashlib

        name = name[:_MAX_NAME] + "-" + hashlib.sha1(name.encode()).hexdigest()[:10]
    return name


def plan(spec: SweepSpec) -> list[PlannedRun]:
    """List every (grid point x seed) in a fixed order; the index is what shards split on."""
    keys = [key for key, _ in spec.grid]
    points = [
        tuple(f"{k}={v}" for k, v in zip(keys, values))
        for values in product(*(vals for _, vals in spec.grid))
    ]
    runs, names = [], set()
    for point in points:
        folder = folder_name(point)
        if folder in names:
            raise UserError(f"two grid points share the folder name '{folder}'; rename a value")
        names.add(folder)
        for seed in spec.seeds:
            runs.append(PlannedRun(len(runs), f"{folder}/seed{seed}", point, seed))
    return runs


def shard(runs: list[PlannedRun], index: int, count: int) -> list[PlannedRun]:
    """Return the runs of shard `index` of `count`: those whose sweep index % count == index."""
    return [run for run in sorted(runs, key=lambda r: r.index) if run.index % count == index]


def run_overrides(spec: SweepSpec, run: PlannedRun) -> list[str]:
    """Return the overrides of one run: base, then its grid point, then its seed."""
    return [*spec.overrides, *run.point, f"train.seed={run.seed}"]


def sweep_command(
    spec: SweepSpec, point: tuple[str, ...] | None = None, seeds: list[int] | None = None
) -> str:
    """Return the `cnnlab sweep` command for the whole sweep, or for one grid point's seeds."""
    args = ["cnnlab", "sweep", spec.recipe, *spec.overrides]
    if point is None:
        for key, values in spec.grid:
            args += ["--grid", f"{key}={','.join(values)}"]
    else:
        args += list(point)
    args += ["--seed-list", ",".join(str(s) for s in (seeds or spec.seeds))]
    return shlex.join(args)


def read_sweep_file(folder: Path) -> SweepSpec | None:
    """Return the spec in folder/sweep.yaml, or None when there is none or it cannot be read."""
    try:
        data = yaml.safe_load((Path(folder) / SWEEP_FILE).read_text())
        return SweepSpec.from_dict(data["sweep"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError, AttributeError):
        return None


def claim_folder(out: Path, spec: SweepSpec, command: str) -> None:
    """Write out/sweep.yaml, or check that the one there describes this same sweep."""
    out = Path(out)
    path = out / SWEEP_FILE
    if not path.exists():
        if out.is_dir() and any(p for p in out.iterdir() if not p.name.startswith(".")):
            raise UserError(f"{out} is not empty and holds no {SWEEP_FILE}; choose another --out")
        try:
            out.mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(
                {"sweep": spec.to_dict(), "runs": len(plan(spec)), "command": command},
                sort_keys=False,
            )
            tmp = out / f".{SWEEP_FILE}.{os.getpid()}.tmp"
            tmp.write_text(text)
            try:  # link, unlike rename, fails if another shard got there first
                os.link(tmp, path)
            except FileExistsError:
                pass
            except OSError:  # file systems without hard links
                if not path.exists():
                    os.replace(tmp, path)
            tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise UserError(f"cannot write the sweep folder {out}: {exc.strerror or exc}") from None
    found = read_sweep_file(out)
    if found is None:
        raise UserError(f"{path} cannot be read; fix or remove it, or choose another --out")
    if found.recipe != spec.recipe and _same_file(found.recipe, spec.recipe):
        found = replace(found, recipe=spec.recipe)  # one file, two spellings
    if found != spec:
        diff = [
            f"{key}: {theirs!r} there, {mine!r} asked"
            for key, theirs in found.to_dict().items()
            if theirs != (mine := spec.to_dict()[key])
        ]
        raise UserError(
            f"{out} holds a different sweep ({'; '.join(diff)}); "
            "re-run its own command to continue it, or choose another --out"
        )


def _same_file(a: str, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


@functools.lru_cache(maxsize=64)
def _runs_by_name(folder: str, stamp: int) -> tuple[SweepSpec, dict[str, PlannedRun]] | None:
    # Cached per sweep folder (and sweep.yaml version): a report asks once for every run.
    spec = read_sweep_file(Path(folder))
    if spec is None:
        return None
    try:
        return spec, {run.name: run for run in plan(spec)}
    except UserError:
        return None


def find_sweep(run_dir: Path) -> tuple[Path, SweepSpec, PlannedRun] | None:
    """Return (sweep folder, spec, planned run) when `run_dir` is a run of a sweep."""
    run_dir = Path(run_dir)
    for parent in (run_dir.parent, run_dir.parent.parent):
        try:
            stamp = (parent / SWEEP_FILE).stat().st_mtime_ns
        except OSError:
            continue
        found = _runs_by_name(str(parent), stamp)
        name = run_dir.relative_to(parent).as_posix()
        if found is not None and name in found[1]:
            return parent, found[0], found[1][name]
    return None
