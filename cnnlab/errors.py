"""User-facing errors: one clear line, no traceback, a non-zero exit from the CLI."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input (config, data, paths) that the user can fix."""


class ReportedElsewhere(UserError):
    """A UserError that another process of the same torchrun job reports: this one exits 2
    without printing it, so the user reads the message once."""


def closest(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for the closest of `choices`, or '' when none is close."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else ""
