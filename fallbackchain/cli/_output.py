"""What every command prints and how it ends: exit statuses, stdout and stderr, durations.

Results go to stdout (:func:`out`), everything else to stderr (:func:`err`), each written
through :func:`printable` so that text the stream cannot encode is escaped rather than ending
the command. A :class:`UsageError` stops a command before it did anything (exit status 2).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Final, TextIO

from ..warming import WARM_RECORD

__all__ = [
    "PROG",
    "CommandFailed",
    "ExitCode",
    "UsageError",
    "duration",
    "err",
    "out",
    "printable",
    "showing_warnings",
    "timestamp",
]


class ExitCode(enum.IntEnum):
    """The command's exit statuses (the same numbers ``--help`` lists)."""

    OK = 0
    """Everything worked."""
    FAILED = 1
    """The command ran but something failed (a prompt, a line, a confirmation)."""
    USAGE = 2
    """A usage or input error stopped it before it did anything."""
    INTERRUPTED = 130
    """Ctrl-C or SIGTERM; whatever was written is kept."""


PROG: Final = "fallbackchain"


class UsageError(Exception):
    """Stops a command before it did anything: one line on stderr, exit status 2."""


class CommandFailed(Exception):  # noqa: N818 - reads as what happened, as UsageError does
    """Stops a command whose state cannot be used: one line on stderr, exit status 1.

    An unreadable cache, an unreachable Redis, a read-only cache to warm: nothing was done.
    """


def printable(text: str, stream: TextIO) -> str:
    """``text``, with what ``stream`` cannot encode shown as backslash escapes.

    A lone surrogate, or any non-ASCII text on an ASCII-only terminal, would otherwise raise
    ``UnicodeEncodeError`` and end the command mid-output.
    """
    encoding = getattr(stream, "encoding", None) or "utf-8"
    try:
        text.encode(encoding, getattr(stream, "errors", None) or "strict")
    except UnicodeError:
        return text.encode(encoding, "backslashreplace").decode(encoding)
    except LookupError:  # an encoding name Python does not know: plain ASCII is always safe
        return text.encode("ascii", "backslashreplace").decode("ascii")
    return text


def out(text: str = "") -> None:
    """Print ``text`` and a newline on stdout (results)."""
    sys.stdout.write(printable(text + "\n", sys.stdout))
    sys.stdout.flush()


def err(text: str) -> None:
    """Print ``text`` and a newline on stderr (errors, warnings, progress)."""
    sys.stderr.write(printable(text + "\n", sys.stderr))
    sys.stderr.flush()


def duration(seconds: float) -> str:
    """``"0.4s"``, ``"42s"``, ``"3m 05s"``, ``"2h 03m"``, ``"5d 04h"``."""
    if seconds < 10:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d {hours:02d}h"
    if hours:
        return f"{hours}h {minutes:02d}m"
    if minutes:
        return f"{minutes}m {secs:02d}s"
    return f"{secs}s"


def timestamp(value: float) -> str:
    """A Unix time as ISO 8601 UTC to the second: ``"2026-12-05T08:04:26Z"``."""
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _LogHandler(logging.Handler):
    """Shows fallbackchain warnings (an outage pause, a cache problem) through ``say``."""

    def __init__(self, say: Callable[[str], None]) -> None:
        super().__init__(logging.WARNING)
        self._say = say

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, WARM_RECORD, False):
            return  # per-prompt lines: the command prints those itself
        try:
            text = f"{PROG}: {record.getMessage()}"
        except Exception:  # noqa: BLE001 - a bad log call must not end the command
            self.handleError(record)
            return
        self._say(text)


@contextlib.contextmanager
def showing_warnings(say: Callable[[str], None] | None = None) -> Iterator[None]:
    """Within: the package's warnings are shown as ``fallbackchain: ...`` lines.

    ``say`` prints one (default: :func:`err`; the warm command's progress bar passes its own,
    which prints above the bar). Per-prompt warm lines are left to the command.
    """
    logger = logging.getLogger("fallbackchain")
    handler = _LogHandler(say or err)
    previous = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
