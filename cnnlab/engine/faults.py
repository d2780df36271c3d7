"""A test-only fault hook: SIGKILL this process the N-th time a named point of the code is reached.

The kill-anywhere tests (tests/test_kill_anywhere.py) run real `cnnlab train` processes with
CNNLAB_FAULT=NAME:N, e.g. CNNLAB_FAULT=train_step:7 kills the process right after the optimizer
step of its 7th step, and CNNLAB_FAULT=last.pt_before_rename:2 between the second checkpoint's
temp write and its rename. A kill by signal leaves no chance to clean up, like a power cut or the
kernel's out-of-memory killer, so what survives is what the code had made durable.

Under torchrun, CNNLAB_FAULT=NAME:N@R kills only the process of rank R (its RANK variable), so a
test kills one rank of a DDP job and the others see a peer vanish; without @R every process that
reaches the point dies.

The variable is read once, at import; with it unset `fault_point` returns at its first test.
Points are counted per process (a resumed run counts from 1 again). The points
(docs/reliability.md):
train_step, eval_batch, probe_measure, model_rebuild, sweep_between_runs, and
<file>_before_rename for every atomic write in a run folder (last.pt, best.pt, metrics.jsonl,
summary.json, config.yaml, curves.png).
"""

from __future__ import annotations

import os
import signal

from cnnlab.errors import UserError

ENV = "CNNLAB_FAULT"


def _parse(text: str, rank: str) -> tuple[str, int] | str | None:
    # Returns (point, count), None when unset or aimed at another rank, or the problem as text
    # (raised at the first point, so a typo in a test's setting fails the test instead of never
    # killing).
    if not text:
        return None
    spec, at, only = text.partition("@")
    name, _, count = spec.rpartition(":")
    if not name or not count.isdigit() or int(count) < 1 or (at and not only.isdigit()):
        return f"{ENV}={text!r}: expected POINT:N or POINT:N@RANK with N >= 1, e.g. train_step:3"
    if at and int(only) != int(rank or 0):
        return None
    return name, int(count)


_TARGET = _parse(os.environ.get(ENV, ""), os.environ.get("RANK", "0"))
_reached = 0


def fault_point(name: str) -> None:
    """Kill this process with SIGKILL when CNNLAB_FAULT names `name` and this is its N-th visit."""
    global _reached
    if _TARGET is None:
        return
    if isinstance(_TARGET, str):
        raise UserError(_TARGET)
    if name != _TARGET[0]:
        return
    _reached += 1
    if _reached == _TARGET[1]:
        os.kill(os.getpid(), signal.SIGKILL)
