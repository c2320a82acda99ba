"""``fallbackchain cache stats|clear|prune|export|import``: the cache a config uses, from outside.

What a caller can rely on: every action opens the same backend a chain with that config would
(disk or Redis); a cache that cannot be opened is an error (exit status 1) naming where it is;
``clear``, ``prune`` and ``import`` on a cache that could only be opened read-only change
nothing and exit 1; rows that could not be read are skipped, counted and make the exit status 1.
``clear`` asks first unless ``--yes``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator

from .._backends import response_cache
from .._config import ChainConfig
from .._config_file import load_config
from ..cache import Cache
from ._output import (
    PROG,
    CommandFailed,
    ExitCode,
    UsageError,
    duration,
    err,
    out,
    showing_warnings,
    timestamp,
)

__all__ = [
    "cmd_cache_clear",
    "cmd_cache_export",
    "cmd_cache_import",
    "cmd_cache_prune",
    "cmd_cache_stats",
    "open_cache",
    "require_readable",
    "require_writable",
]


def open_cache(config: ChainConfig) -> Cache:
    """The cache ``config`` uses (the backend a chain would); :class:`UsageError` if disabled."""
    if not config.cache.enabled:
        raise UsageError(f"{config.source}: key 'cache.enabled': the cache is disabled")
    return response_cache(config, time.time)  # the same backend a chain would use


def missing_directory(config: ChainConfig) -> str | None:
    """The disk cache's directory when it does not exist yet (nothing was ever stored), else None.

    A command that only reads or removes must not create it (nor its parents) wherever it is run.
    """
    directory = config.cache.directory
    if config.cache.backend != "disk" or os.path.lexists(directory):
        return None
    return directory


def _say_no_cache(directory: str) -> int:
    out(f"no cache at {directory} yet: nothing has been stored there")
    return ExitCode.OK


def require_readable(cache: Cache) -> None:
    """The cache must be open (else :class:`CommandFailed`: see the warning it logged)."""
    if not cache.disk_available:
        raise CommandFailed(
            f"the cache at {cache.directory} cannot be opened (see the warning above)"
        )


def require_writable(cache: Cache) -> None:
    """The cache must be open for writing (warming a read-only cache would store nothing)."""
    require_readable(cache)
    if cache.read_only:
        raise CommandFailed(
            f"the cache at {cache.directory} could only be opened read-only (see the warning "
            "above): answers would not be stored"
        )


@contextlib.contextmanager
def _readable_cache(config: ChainConfig) -> Iterator[Cache]:
    """The cache ``config`` uses, open and readable (else :class:`CommandFailed`); warns."""
    with showing_warnings(), open_cache(config) as cache:
        require_readable(cache)
        yield cache


def _read_only(cache: Cache, nothing_done: str) -> bool:
    """True (and one line on stderr) when the cache could only be opened for reading."""
    if not cache.read_only:
        return False
    err(
        f"{PROG}: the cache at {cache.directory} could only be opened read-only (a read-only "
        f"filesystem, a full disk or no write permission; see the warning above): {nothing_done}"
    )
    return True


def _skipped_rows(cache: Cache) -> int:
    """Rows this command's scans could not read (each logged above); prints a line if any."""
    skipped = cache.stats().skipped
    if skipped:
        err(
            f"{PROG}: skipped {skipped} unreadable cache "
            f"{'row' if skipped == 1 else 'rows'} (see the warning above)"
        )
    return skipped


def cmd_cache_stats(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ttl = config.cache.ttl
    if (directory := missing_directory(config)) is not None:
        if not args.json:
            return _say_no_cache(directory)
        none: dict[str, object] = dict.fromkeys(("oldest", "newest"))
        empty = {"directory": directory, "entries": 0, "bytes": 0, "expired": 0, **none}
        unknown = {"hits": None, "misses": None, "unreadable": 0, "read_only": False}
        out(json.dumps(empty | {"ttl": ttl} | unknown, indent=2))
        return ExitCode.OK
    with _readable_cache(config) as cache:
        stats = cache.stats(scan=True)
        status = ExitCode.FAILED if _skipped_rows(cache) else ExitCode.OK
        read_only = cache.read_only
    if args.json:
        out(
            json.dumps(
                {
                    "directory": stats.directory,
                    "entries": stats.entries,
                    "bytes": stats.bytes,
                    "expired": stats.expired,
                    "oldest": stats.oldest,
                    "newest": stats.newest,
                    "ttl": ttl,
                    "hits": None,
                    "misses": None,
                    "unreadable": stats.skipped,
                    "read_only": read_only,
                },
                indent=2,
            )
        )
        return status
    now = time.time()
    out(f"directory: {stats.directory}")
    expired = f" ({stats.expired} expired, removed by `cache prune`)" if stats.expired else ""
    out(f"entries:   {stats.entries}{expired}")
    out(f"bytes:     {stats.bytes}")
    for label, value in (("oldest", stats.oldest), ("newest", stats.newest)):
        shown = "-" if value is None else f"{timestamp(value)} ({duration(now - value)} ago)"
        out(f"{label}:    {shown}")
    out(f"ttl:       {ttl:g}s ({duration(ttl)})")
    out("hits/misses: not known here (each running process counts its own: Cache.stats())")
    if read_only:
        out("read-only: yes (answers are served; nothing can be stored, cleared or pruned)")
    return status


def _confirm(question: str) -> bool:
    sys.stderr.write(question)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def cmd_cache_clear(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if (directory := missing_directory(config)) is not None:
        return _say_no_cache(directory)
    with _readable_cache(config) as cache:
        entries = cache.stats().entries
        if _read_only(cache, f"nothing removed ({entries} entries)"):
            return ExitCode.FAILED
        if entries == 0:
            out(f"the cache at {cache.directory} is already empty")
            return ExitCode.OK
        if not args.yes and not _confirm(
            f"remove all {entries} entries from {cache.directory}? [y/N] "
        ):
            err(f"{PROG}: not cleared (answer y, or pass --yes)")
            return ExitCode.FAILED
        removed = cache.clear()
        after = cache.stats()
    out(f"removed {removed} entries from {cache.directory}")
    if after.entries and after.errors:  # rows left by a failure, not written since by others
        err(f"{PROG}: {after.entries} entries remain (see the warning above)")
        return ExitCode.FAILED
    return ExitCode.OK


def cmd_cache_prune(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if (directory := missing_directory(config)) is not None:
        return _say_no_cache(directory)
    with _readable_cache(config) as cache:
        if _read_only(cache, "nothing pruned"):
            return ExitCode.FAILED
        removed = cache.prune()
        status = ExitCode.FAILED if _skipped_rows(cache) else ExitCode.OK
    out(f"removed {removed} expired entries from {cache.directory}")
    return status


def cmd_cache_export(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if (directory := missing_directory(config)) is not None:
        return _say_no_cache(directory)  # and no file written: there is nothing to export
    with _readable_cache(config) as cache:
        if args.file == "-":
            count = cache.export_jsonl(sys.stdout)
            err(f"exported {count} entries from {cache.directory}")
            return ExitCode.FAILED if _skipped_rows(cache) else ExitCode.OK
        try:
            count = cache.export_jsonl(args.file)
        except OSError as exc:
            raise UsageError(f"{args.file}: cannot write file: {exc.strerror or exc}") from None
        status = ExitCode.FAILED if _skipped_rows(cache) else ExitCode.OK
    out(f"exported {count} entries to {args.file}")
    return status


def cmd_cache_import(args: argparse.Namespace) -> int:
    with _readable_cache(load_config(args.config)) as cache:
        if _read_only(cache, "nothing imported"):
            return ExitCode.FAILED
        if args.file == "-":
            report = cache.import_jsonl(sys.stdin, name="<stdin>")
        else:
            report = cache.import_jsonl(args.file)
    for error in report.errors:
        err(str(error))
    out(
        f"imported {report.imported}, kept {report.kept} (the cache had them as new or newer), "
        f"expired {report.expired}, failed {report.failed}, invalid {report.invalid}"
    )
    return ExitCode.OK if report.ok else ExitCode.FAILED
