"""Running a sweep: each (grid point x seed) in its own run folder, resumable, parallel, sharded."""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import os
import shutil
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import torch
from rich.console import Console

from cnnlab.config import Config, load_config
from cnnlab.config_diff import config_differences
from cnnlab.engine.faults import fault_point
from cnnlab.engine.progress import ConsoleReporter
from cnnlab.engine.run_folder import RunFolder
from cnnlab.errors import UserError
from cnnlab.experiments.plan import PlannedRun, SweepSpec, run_overrides
from cnnlab.run.training import prepare_run, train_new, train_resume

try:  # POSIX advisory locks; released by the kernel when the holder dies, even by kill -9
    import fcntl
except ImportError:  # pragma: no cover - Windows: no locking between processes
    fcntl = None

ERROR_FILE = "error.txt"
LOG_FILE = "sweep.log"
LOCK_DIR = ".locks"


@dataclass(frozen=True)
class Outcome:
    """What happened to one run: trained, resumed, skipped, failed or busy."""

    name: str
    status: str
    detail: str
    seconds: float = 0.0


def is_finished(folder: Path) -> bool:
    """Return whether folder/summary.json exists, parses and says finished."""
    try:
        return json.loads((Path(folder) / "summary.json").read_text()).get("finished") is True
    except (OSError, ValueError, AttributeError):
        return False


@contextlib.contextmanager
def _run_lock(out: Path, index: int, blocking: bool) -> Iterator[bool]:
    # One lock per run, outside the run folder (which must start empty), so that a second
    # sweep process on the same folder (a duplicate command, or an orphaned worker) never
    # trains the same run at the same time.
    if fcntl is None:
        yield True
        return
    locks = out / LOCK_DIR
    locks.mkdir(exist_ok=True)
    with open(locks / f"{index:06d}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _train(
    spec: SweepSpec, planned: PlannedRun, folder: Path, console: Console
) -> tuple[str, dict]:
    wanted = load_config(Path(spec.recipe), run_overrides(spec, planned))
    reporter = ConsoleReporter(console)
    try:
        return _start_or_resume(wanted, RunFolder(folder), [reporter])
    finally:
        reporter.close()  # also after an error, so a terminal's progress bar does not linger


def _start_or_resume(wanted: Config, run: RunFolder, callbacks: list) -> tuple[str, dict]:
    if not run.last.exists():
        # Never reached its first checkpoint (killed early, or failed): nothing trained to
        # keep, so it starts over from the config the sweep gives now.
        if run.path.exists():
            shutil.rmtree(run.path)
        prepared = prepare_run(wanted)  # data and model errors before the folder exists
        return "trained", train_new(wanted, RunFolder.create(run.path), callbacks, prepared)
    stored = load_config(run.config)  # a missing or damaged config.yaml is a clear error
    drift = config_differences(stored, wanted)
    if drift:
        raise UserError(
            f"{run.path} was started with another config than the sweep now gives "
            f"({'; '.join(drift[:3])}); was the recipe edited? Move the folder away to redo it"
        )
    return "resumed", train_resume(stored, run, callbacks)


def _record_failure(folder: Path, exc: Exception) -> str:
    message = str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"
    message = message.strip() or type(exc).__name__
    text = message + "\n"
    if not isinstance(exc, UserError):  # a bug, not a bad input: keep where it happened
        text += "\n" + "".join(traceback.format_exception(exc))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ERROR_FILE).write_text(text)
    with contextlib.suppress(OSError):
        RunFolder(folder).log(f"error: {message}")
    return message.splitlines()[0]


def run_one(
    spec: SweepSpec, planned: PlannedRun, out: Path, blocking: bool, console: Console | None = None
) -> Outcome:
    """Train, resume or skip one run of a sweep; a failure is recorded, never raised."""
    folder = Path(out) / planned.name
    start = time.perf_counter()
    with _run_lock(Path(out), planned.index, blocking) as locked:
        if not locked:
            return Outcome(planned.name, "busy", "another process is running it")
        if is_finished(folder):
            return Outcome(planned.name, "skipped", "finished earlier")
        (folder / ERROR_FILE).unlink(missing_ok=True)  # a retry starts clean
        # Console output goes nowhere in workers; the reporter still writes log.txt.
        console = console or Console(file=io.StringIO())
        try:
            status, summary = _train(spec, planned, folder, console)
        except Exception as exc:  # any failure is recorded, and the sweep goes on
            detail = _record_failure(folder, exc)
            return Outcome(planned.name, "failed", detail, time.perf_counter() - start)
    error = summary["final"].get("test_error")
    detail = f"test error {error:.2f}%" if error is not None else "finished"
    return Outcome(planned.name, status, detail, time.perf_counter() - start)


def _watch_parent(parent: int) -> None:
    # A worker whose sweep process was killed (kill -9 leaves no chance to stop it) exits
    # instead of training on as an orphan beside the re-run sweep.
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _init_worker(threads: int, parent: int) -> None:
    # Ctrl-C reaches the whole process group; the sweep process answers it by stopping the
    # workers, so they need not (and must not start a queued run meanwhile).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(threads)
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()


class SweepLog:
    """Appends one line per event to DIR/sweep.log (shared by all shards of a sweep)."""

    def __init__(self, out: Path, shard: tuple[int, int]) -> None:
        self.path = Path(out) / LOG_FILE
        self.who = f"{socket.gethostname()}:{os.getpid()} shard {shard[0]}/{shard[1]}"

    def write(self, status: str, text: str) -> None:
        """Append `time  who  STATUS  text` (one write, so lines of shards do not interleave)."""
        line = f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {self.who}  {status:<8} {text}\n"
        with open(self.path, "a") as f:
            f.write(line)


def _run_serial(
    spec: SweepSpec, runs: list[PlannedRun], out: Path, console: Console, report: Callable
) -> None:
    deferred = []
    for planned in runs:
        console.print(f"[bold]{planned.name}[/bold]")
        outcome = run_one(spec, planned, out, blocking=False, console=console)
        if outcome.status == "busy":
            deferred.append(planned)
        else:
            report(outcome)
        fault_point("sweep_between_runs")
    for planned in deferred:  # waits for the other process, then finds the run finished
        report(run_one(spec, planned, out, blocking=True, console=console))


def _run_parallel(
    spec: SweepSpec, runs: list[PlannedRun], out: Path, workers: int, report: Callable
) -> None:
    # Split the thread budget (cores, or OMP_NUM_THREADS when set) so K runs do not oversubscribe.
    threads = max(1, torch.get_num_threads() // workers)
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(threads, os.getpid()),
    )
    pending: dict[Future, tuple[PlannedRun, bool]] = {}
    try:
        for planned in runs:
            pending[pool.submit(run_one, spec, planned, out, False)] = (planned, False)
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                planned, blocking = pending.pop(future)
                try:
                    outcome = future.result()
                except BrokenProcessPool:
                    outcome = Outcome(
                        planned.name,
                        "failed",
                        "its worker process died (out of memory, or killed?)",
                    )
                if outcome.status == "busy" and not blocking:
                    pending[pool.submit(run_one, spec, planned, out, True)] = (planned, True)
                else:
                    report(outcome)
    except BaseException:
        # Stop the runs in flight now (their folders stay resumable: every write is atomic).
        # There is no public way to do this before Python 3.14's terminate_workers.
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def run_sweep(
    spec: SweepSpec,
    runs: list[PlannedRun],
    out: Path,
    shard: tuple[int, int] = (0, 1),
    workers: int = 1,
    console: Console | None = None,
) -> list[Outcome]:
    """Run `runs` of a sweep whose folder `out` is already claimed; return their outcomes."""
    if workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    console = console or Console(highlight=False)
    log = SweepLog(out, shard)
    log.write("start", f"{len(runs)} runs, {workers} worker(s)")
    outcomes: list[Outcome] = []

    def report(outcome: Outcome) -> None:
        outcomes.append(outcome)
        log.write(outcome.status, f"{outcome.name}  {outcome.detail}")
        console.print(
            f"[{len(outcomes)}/{len(runs)}] {outcome.name}: {outcome.status} - {outcome.detail}"
            + (f" ({outcome.seconds:.0f}s)" if outcome.seconds >= 1 else ""),
            markup=False,
        )

    try:
        if workers == 1 or len(runs) <= 1:
            _run_serial(spec, runs, out, console, report)
        else:
            _run_parallel(spec, runs, out, min(workers, len(runs)), report)
    except KeyboardInterrupt:
        log.write("stopped", "interrupted; re-run the same command to continue")
        raise
    failed = sum(o.status == "failed" for o in outcomes)
    log.write("end", f"{len(outcomes) - failed} ok, {failed} failed")
    return outcomes
