"""How a cache names a failure in its WARNING: the fallbackchain error class and a short cause.

Log lines name the error class and the cause's class and code, never a prompt, an answer or
an error's text.
"""

from __future__ import annotations

import errno
import sqlite3
from typing import NamedTuple

import diskcache

from .._errors import CacheCorruptError, CacheError

__all__ = [
    "CacheFailure",
    "as_cache_error",
    "cause_detail",
    "describe_disk_failure",
    "is_corruption",
    "root_cause",
]


class CacheFailure(NamedTuple):
    """How a cache names one failure in its WARNING (see :meth:`CacheCommon.failure`)."""

    error: CacheError
    """The fallbackchain error class the log line names."""
    detail: str
    """A short, content-free description of the cause."""
    kind: tuple[str, ...]
    """With the operation, what one log line a minute is allowed for."""


def as_cache_error(exc: BaseException) -> CacheError:
    """Map a foreign error to the fallbackchain class that names it, chained from it."""
    if isinstance(exc, CacheError):
        return exc
    mapped: CacheError
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        mapped = CacheCorruptError("the cache database is corrupt or not a database")
    elif isinstance(exc, sqlite3.Error):
        mapped = CacheError("a cache database operation failed")
    elif isinstance(exc, diskcache.Timeout):
        mapped = CacheError("the cache database stayed locked")
    elif isinstance(exc, OSError):
        mapped = CacheError("a cache file operation failed")
    else:
        mapped = CacheError("unexpected error in the cache")
    mapped.__cause__ = exc
    return mapped


def cause_detail(exc: BaseException) -> str:
    """A short, content-free description of an error: its class and code, never its text."""
    detail = type(exc).__name__
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None)
        if name:
            detail += f" {name}"
    elif isinstance(exc, OSError) and exc.errno is not None:
        detail += f" {errno.errorcode.get(exc.errno, exc.errno)}"
    return detail


def is_corruption(exc: BaseException) -> bool:
    """True when the open database itself is damaged (so it should be dropped and reopened)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlite3.DatabaseError) and not isinstance(
            current, sqlite3.OperationalError
        ):
            return True
        current = current.__cause__
    return False


def root_cause(exc: BaseException) -> BaseException:
    """The innermost ``__cause__`` of ``exc`` (``exc`` itself when it has none)."""
    seen: set[int] = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


def describe_disk_failure(exc: BaseException) -> CacheFailure:
    """How the disk cache names ``exc``: its fallbackchain class and the cause's class and code."""
    mapped = as_cache_error(exc)
    cause = mapped.__cause__ if mapped.__cause__ is not None else mapped
    kinds = (type(mapped).__name__, type(cause).__name__)
    return CacheFailure(mapped, cause_detail(cause), kinds)
