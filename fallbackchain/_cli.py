"""The ``fallbackchain`` command: write and check a config, show status, warm and manage the cache.

::

    fallbackchain init [PATH] [--template NAME] [--model MODEL] [--base-url URL]
                              [--api-key-env NAME] [--fallback NAME=MODEL[@URL]]... [--force]
    fallbackchain check-config [CONFIG]
    fallbackchain status
    fallbackchain warm PROMPTS [--concurrency N] [--refresh] [--dry-run] [--strict]
                               [--max-wait SECONDS]
    fallbackchain cache stats [--json]
    fallbackchain cache clear [--yes]
    fallbackchain cache prune
    fallbackchain cache export FILE      (FILE "-" is stdout)
    fallbackchain cache import FILE      (FILE "-" is stdin)
    fallbackchain demo [--record FILE]
    fallbackchain --version

What a caller (a script, CI) can rely on:

* **The config file.** Every command that reads one (all but ``demo``) takes ``--config
  CONFIG``; without it, ``$FALLBACKCHAIN_CONFIG``; without that, ``./fallbackchain.toml``.
  ``check-config CONFIG`` and ``init PATH`` take it positionally too. ``init`` writes it
  (never over an existing file without ``--force``), and what it writes passes
  ``check-config``.
* **status** exits 1 when state the config uses cannot be read: a Redis server holding
  shared breakers or the cache, or a cache directory that cannot be opened.

* **Exit status.** 0: everything worked. 1: the command ran but something failed (a prompt
  was not warmed, a line was invalid, an import line was bad, a clear was not confirmed).
  2: a usage or input error stopped it before it did anything (bad arguments, an unreadable
  or invalid config, a missing prompts file, a missing API key, any bad line with
  ``--strict``). 130: interrupted (Ctrl-C or SIGTERM); whatever was written is kept and the
  same command resumes.
* **Errors** are one line on stderr with no traceback: ``fallbackchain: error: ...`` for the
  error that stopped the command, ``FILE:LINE: ...`` for a bad or failed line.
* **Output.** Results (the summary, ``stats``, dry-run plans, exported JSON Lines on ``-``)
  go to stdout; progress goes to stderr: a redrawn bar when stderr is a terminal, one plain
  line per prompt otherwise. No secret is ever printed (``check-config`` shows the *name* of
  the API key variable and whether it is set, and masks credentials in URLs).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import math
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final, TextIO

import openai

from ._backends import gate_store, response_cache
from ._config import ChainConfig, load_config
from ._errors import ConfigError
from ._redact import mask_url
from ._templates import (
    DEFAULT_TEMPLATE,
    FallbackSpec,
    parse_fallback,
    render_config,
    template_names,
)
from ._warm import WARM_RECORD, WarmProgress, WarmReport, load_prompts, warm
from .cache import Cache, InputFileError
from .chain import FallbackChain

__all__ = ["main"]

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

_PROG: Final = "fallbackchain"

CONFIG_ENV: Final = "FALLBACKCHAIN_CONFIG"
"""The environment variable naming the config file when ``--config`` is not given."""
DEFAULT_CONFIG: Final = "fallbackchain.toml"
"""The config file used when neither ``--config`` nor ``$FALLBACKCHAIN_CONFIG`` is given."""


class _UsageError(Exception):
    """Stops a command before it did anything: one line on stderr, exit status 2."""


# --------------------------------------------------------------------------------------------
# Output helpers
# --------------------------------------------------------------------------------------------


def _printable(text: str, stream: TextIO) -> str:
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


def _out(text: str = "") -> None:
    sys.stdout.write(_printable(text + "\n", sys.stdout))
    sys.stdout.flush()


def _err(text: str) -> None:
    sys.stderr.write(_printable(text + "\n", sys.stderr))
    sys.stderr.flush()


def _duration(seconds: float) -> str:
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


def _timestamp(value: float) -> str:
    return datetime.fromtimestamp(value, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class _Progress:
    """Prints warm progress on stderr: a bar on a terminal, plain lines otherwise."""

    _WIDTH: Final = 24

    def __init__(self, stream: TextIO, *, tty: bool) -> None:
        self._stream = stream
        self._tty = tty
        self._bar = ""
        self._started = time.perf_counter()
        self.last: WarmProgress | None = None
        self.tokens = 0

    def __call__(self, event: WarmProgress) -> None:
        self.last = event
        self.tokens += event.tokens
        where = event.request.where
        if event.outcome == "failed" and event.error is not None:
            line = str(event.error)
        elif event.outcome == "warmed":
            line = f"{where}: warmed ({event.tokens} tokens)"
        else:
            line = f"{where}: {event.outcome}" + (f" ({event.note})" if event.note else "")
        if self._tty:
            if event.outcome == "failed":
                self.message(line)
            self._draw(event)
        else:
            self._write(f"[{event.done}/{event.total}] {line}\n")

    def message(self, text: str) -> None:
        """Print a whole line (above the bar on a terminal)."""
        if self._tty and self._bar:
            self._write("\r\x1b[K" + text + "\n" + self._bar)
        else:
            self._write(text + "\n")

    def finish(self) -> None:
        """Remove the bar (the summary follows on stdout)."""
        if self._tty and self._bar:
            self._write("\r\x1b[K")
            self._bar = ""

    def _draw(self, event: WarmProgress) -> None:
        filled = self._WIDTH * event.done // max(event.total, 1)
        elapsed = _duration(time.perf_counter() - self._started)
        self._bar = (
            f"warming [{'#' * filled}{'.' * (self._WIDTH - filled)}] {event.done}/{event.total}"
            f"  warmed {event.warmed}  skipped {event.skipped}  failed {event.failed}  {elapsed}"
        )
        self._write("\r\x1b[K" + self._bar)

    def _write(self, text: str) -> None:
        self._stream.write(_printable(text, self._stream))
        self._stream.flush()


class _LogHandler(logging.Handler):
    """Shows fallbackchain warnings (an outage pause, a cache problem) through the progress."""

    def __init__(self, progress: _Progress | None) -> None:
        super().__init__(logging.WARNING)
        self._progress = progress

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(record, WARM_RECORD, False):
            return  # per-prompt lines: the command prints those itself
        try:
            text = f"{_PROG}: {record.getMessage()}"
        except Exception:  # noqa: BLE001 - a bad log call must not end the command
            self.handleError(record)
            return
        if self._progress is not None:
            self._progress.message(text)
        else:
            _err(text)


@contextlib.contextmanager
def _showing_warnings(progress: _Progress | None = None) -> Iterator[None]:
    logger = logging.getLogger("fallbackchain")
    handler = _LogHandler(progress)
    previous = logger.level
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.WARNING:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt (main thread only), so a kill ends cleanly too."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except (ValueError, OSError):  # not the main thread, or no SIGTERM here
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# --------------------------------------------------------------------------------------------
# warm
# --------------------------------------------------------------------------------------------


def _summary(
    *, warmed: int, skipped: int, failed: int, invalid: int, tokens: int, seconds: float
) -> str:
    return (
        f"warmed {warmed}, skipped {skipped}, failed {failed}, invalid {invalid}, "
        f"tokens {tokens}, time {_duration(seconds)}"
    )


def _dry_run_client(config: ChainConfig) -> openai.OpenAI:
    # A dry run sends nothing: a client that is never used, so no API key is needed.
    return openai.OpenAI(base_url=config.openai.base_url, api_key="unused-dry-run", max_retries=0)


def _cmd_warm(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    requests, invalid = load_prompts(args.prompts)
    for error in invalid:
        _err(str(error))
    if args.strict and invalid:
        raise _UsageError(
            f"{len(invalid)} bad line(s) in {args.prompts}; nothing was sent (--strict)"
        )
    if not config.cache.enabled:
        raise _UsageError(
            f"{config.source}: key 'cache.enabled': the cache is disabled, so warming "
            "would store nothing"
        )
    if args.dry_run:
        return _dry_run(config, args, requests, len(invalid))
    with _sigterm_interrupts(), FallbackChain(config) as chain:
        progress = _Progress(sys.stderr, tty=sys.stderr.isatty())
        with _showing_warnings(progress):
            _require_disk(chain.cache)
            pruned = chain.cache.prune()
            if pruned:
                progress.message(f"{_PROG}: pruned {pruned} expired cache entries")
            started = time.perf_counter()
            try:
                report = warm(
                    chain,
                    requests,
                    concurrency=args.concurrency,
                    refresh=args.refresh,
                    progress=progress,
                    max_wait=args.max_wait,
                )
            except KeyboardInterrupt:
                progress.finish()
                last = progress.last
                _out(
                    "interrupted: "
                    + _summary(
                        warmed=last.warmed if last else 0,
                        skipped=last.skipped if last else 0,
                        failed=last.failed if last else 0,
                        invalid=len(invalid),
                        tokens=progress.tokens,
                        seconds=time.perf_counter() - started,
                    )
                )
                _err(
                    f"{_PROG}: interrupted; answers already warmed (and those in flight, "
                    "which were let finish) are kept. Run the same command again to resume: "
                    "warmed prompts are skipped."
                )
                return EXIT_INTERRUPTED
            progress.finish()
    _out(_report_summary(report, len(invalid)))
    return EXIT_OK if report.ok and not invalid else EXIT_FAILED


def _report_summary(report: WarmReport, invalid: int) -> str:
    return _summary(
        warmed=report.warmed,
        skipped=report.skipped,
        failed=report.failed,
        invalid=invalid,
        tokens=report.tokens,
        seconds=report.seconds,
    )


def _dry_run(
    config: ChainConfig, args: argparse.Namespace, requests: Sequence[Any], invalid: int
) -> int:
    if not os.environ.get(config.openai.api_key_env):
        _err(
            f"{_PROG}: warning: environment variable {config.openai.api_key_env} is not set; "
            "a real run needs it"
        )

    def show(event: WarmProgress) -> None:
        request = event.request
        if event.outcome == "planned":
            model = request.model or config.openai.model
            sent = {"model": model, "messages": request.messages, **request.options}
            _out(f"{request.where}: would send {json.dumps(sent, ensure_ascii=False)}")
        elif event.outcome == "skipped":
            _out(f"{request.where}: would skip ({event.note})")
        elif event.error is not None:
            _err(str(event.error))

    client = _dry_run_client(config)
    unused = {fallback.name: client for fallback in config.fallbacks}
    try:
        with (
            FallbackChain(config, client=client, fallback_clients=unused) as chain,
            _showing_warnings(),
        ):
            report = warm(chain, requests, refresh=args.refresh, dry_run=True, progress=show)
    finally:
        client.close()
    _out(
        f"dry run: {len(report.planned)} to send, {report.skipped} to skip, "
        f"{report.failed} failed, {invalid} invalid; nothing was sent"
    )
    return EXIT_OK if report.failed == 0 and invalid == 0 else EXIT_FAILED


# --------------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------------


def _open_cache(config: ChainConfig) -> Cache:
    if not config.cache.enabled:
        raise _UsageError(f"{config.source}: key 'cache.enabled': the cache is disabled")
    return response_cache(config, time.time)  # the same backend a chain would use


def _require_readable(cache: Cache) -> None:
    if not cache.disk_available:
        raise _UsageError(
            f"the cache at {cache.directory} cannot be opened (see the warning above)"
        )


def _require_disk(cache: Cache) -> None:
    """The cache must be open for writing (warming a read-only cache would store nothing)."""
    _require_readable(cache)
    if cache.read_only:
        raise _UsageError(
            f"the cache at {cache.directory} could only be opened read-only (see the warning "
            "above): answers would not be stored"
        )


def _read_only(cache: Cache, nothing_done: str) -> bool:
    """True (and one line on stderr) when the cache could only be opened for reading."""
    if not cache.read_only:
        return False
    _err(
        f"{_PROG}: the cache at {cache.directory} could only be opened read-only (a read-only "
        f"filesystem, a full disk or no write permission; see the warning above): {nothing_done}"
    )
    return True


def _skipped_rows(cache: Cache) -> int:
    """Rows this command's scans could not read (each logged above); prints a line if any."""
    skipped = cache.stats().skipped
    if skipped:
        _err(
            f"{_PROG}: skipped {skipped} unreadable cache "
            f"{'row' if skipped == 1 else 'rows'} (see the warning above)"
        )
    return skipped


def _cmd_cache_stats(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    ttl = config.cache.ttl
    with _showing_warnings(), _open_cache(config) as cache:
        _require_readable(cache)
        stats = cache.stats(scan=True)
        status = EXIT_FAILED if _skipped_rows(cache) else EXIT_OK
        read_only = cache.read_only
    if args.json:
        _out(
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
    _out(f"directory: {stats.directory}")
    expired = f" ({stats.expired} expired, removed by `cache prune`)" if stats.expired else ""
    _out(f"entries:   {stats.entries}{expired}")
    _out(f"bytes:     {stats.bytes}")
    for label, value in (("oldest", stats.oldest), ("newest", stats.newest)):
        shown = "-" if value is None else f"{_timestamp(value)} ({_duration(now - value)} ago)"
        _out(f"{label}:    {shown}")
    _out(f"ttl:       {ttl:g}s ({_duration(ttl)})")
    _out("hits/misses: not known here (each running process counts its own: Cache.stats())")
    if read_only:
        _out("read-only: yes (answers are served; nothing can be stored, cleared or pruned)")
    return status


def _confirm(question: str) -> bool:
    sys.stderr.write(question)
    sys.stderr.flush()
    answer = sys.stdin.readline()
    return answer.strip().lower() in ("y", "yes")


def _cmd_cache_clear(args: argparse.Namespace) -> int:
    with _showing_warnings(), _open_cache(load_config(args.config)) as cache:
        _require_readable(cache)
        entries = cache.stats().entries
        if _read_only(cache, f"nothing removed ({entries} entries)"):
            return EXIT_FAILED
        if entries == 0:
            _out(f"the cache at {cache.directory} is already empty")
            return EXIT_OK
        if not args.yes and not _confirm(
            f"remove all {entries} entries from {cache.directory}? [y/N] "
        ):
            _err(f"{_PROG}: not cleared (answer y, or pass --yes)")
            return EXIT_FAILED
        removed = cache.clear()
        after = cache.stats()
    _out(f"removed {removed} entries from {cache.directory}")
    if after.entries and after.errors:  # rows left by a failure, not written since by others
        _err(f"{_PROG}: {after.entries} entries remain (see the warning above)")
        return EXIT_FAILED
    return EXIT_OK


def _cmd_cache_prune(args: argparse.Namespace) -> int:
    with _showing_warnings(), _open_cache(load_config(args.config)) as cache:
        _require_readable(cache)
        if _read_only(cache, "nothing pruned"):
            return EXIT_FAILED
        removed = cache.prune()
        status = EXIT_FAILED if _skipped_rows(cache) else EXIT_OK
    _out(f"removed {removed} expired entries from {cache.directory}")
    return status


def _cmd_cache_export(args: argparse.Namespace) -> int:
    with _showing_warnings(), _open_cache(load_config(args.config)) as cache:
        _require_readable(cache)
        if args.file == "-":
            count = cache.export_jsonl(sys.stdout)
            _err(f"exported {count} entries from {cache.directory}")
            return EXIT_FAILED if _skipped_rows(cache) else EXIT_OK
        try:
            count = cache.export_jsonl(args.file)
        except OSError as exc:
            raise _UsageError(f"{args.file}: cannot write file: {exc.strerror or exc}") from None
        status = EXIT_FAILED if _skipped_rows(cache) else EXIT_OK
    _out(f"exported {count} entries to {args.file}")
    return status


def _cmd_cache_import(args: argparse.Namespace) -> int:
    with _showing_warnings(), _open_cache(load_config(args.config)) as cache:
        _require_readable(cache)
        if _read_only(cache, "nothing imported"):
            return EXIT_FAILED
        if args.file == "-":
            report = cache.import_jsonl(sys.stdin, name="<stdin>")
        else:
            report = cache.import_jsonl(args.file)
    for error in report.errors:
        _err(str(error))
    _out(
        f"imported {report.imported}, kept {report.kept} (the cache had them as new or newer), "
        f"expired {report.expired}, failed {report.failed}, invalid {report.invalid}"
    )
    return EXIT_OK if report.ok else EXIT_FAILED


# --------------------------------------------------------------------------------------------
# check-config
# --------------------------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _toml_line(name: str, value: object) -> str:
    """``name = value`` as TOML (URLs masked), noting whether a key variable is set."""
    if value is None:
        return f"# {name}: not set"
    if name.endswith("_url") and isinstance(value, str):
        value = mask_url(value)
    line = f"{name} = {_toml_value(value)}"
    if name == "api_key_env" and isinstance(value, str) and value:
        line += "  # set" if os.environ.get(value) else "  # NOT SET in this environment"
    return line


def _toml_table(section: object, *, header: str) -> list[str]:
    lines = [f"\n{header}"]
    for field in dataclasses.fields(section):  # type: ignore[arg-type]
        lines.append(_toml_line(field.name, getattr(section, field.name)))
    return lines


def _route_lines(config: ChainConfig) -> list[str]:
    """Every route's resolved settings, as TOML comments (the output stays loadable)."""
    lines = [
        "",
        "# Routes in the order they are tried, every value resolved (a fallback's unset keys",
        "# take the [openai], [retry] and [breaker] values):",
    ]
    for route in config.routes():
        tiers = ", ".join(name for name, _ in route.tiers)
        lines.append(f"#\n# route {route.name!r} (tiers: {tiers})")
        for field in dataclasses.fields(route):
            if field.name == "name":
                continue
            value = getattr(route, field.name)
            if field.name == "hedge_after" and value is None:
                lines.append("#   hedge_after = off")
                continue
            lines.append(f"#   {_toml_line(field.name, value)}")
    return lines


def _cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _out(f"# OK: {config.source} (the effective config, defaults included; no secrets)")
    _print_config(config)
    if not os.environ.get(config.openai.api_key_env):
        _err(
            f"{_PROG}: warning: environment variable {config.openai.api_key_env} is not set; "
            "requests (and `warm`) need it"
        )
    return EXIT_OK


def _print_config(config: ChainConfig) -> None:
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            _out("\n".join(_toml_table(value, header=f"[{field.name}]")))
        elif isinstance(value, tuple):
            for entry in value:
                _out("\n".join(_toml_table(entry, header=f"[[{field.name}]]")))
    _out("\n".join(_route_lines(config)))


def _breaker_lines(config: ChainConfig) -> tuple[list[str], bool]:
    """One line per tier's breaker, and whether the shared store (Redis) could be read."""
    tiers = [name for route in config.routes() for name, _ in route.tiers]
    if config.breaker.storage == "memory":
        return [
            f'  {tier}: kept in each process (storage = "memory"); not visible from here'
            for tier in tiers
        ], True
    lines = []
    reachable = True
    for tier in tiers:
        store = gate_store(config, tier)
        state, failures = store.current_state(), store.failures()
        # A Redis store that could not read Redis answers from local state: not the fleet's.
        if getattr(store, "using_redis", True):
            lines.append(f"  {tier}: {state} (failures {failures})")
        else:
            reachable = False
            url = mask_url(config.breaker.redis_url)
            lines.append(f"  {tier}: unknown (Redis at {url} is unreachable)")
    return lines, reachable


def _cmd_status(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    _out(f"# status of {config.source}")
    _out("breakers:")
    with _showing_warnings():
        lines, reachable = _breaker_lines(config)
    for line in lines:
        _out(line)
    _out("cache:")
    if config.cache.enabled:
        with _showing_warnings(), _open_cache(config) as cache:
            stats = cache.stats(scan=True) if cache.disk_available else None
        if stats is None:
            reachable = False
            _out(f"  {cache.directory}: cannot be opened (see the warning above)")
        else:
            now = time.time()
            ages = [
                "-" if value is None else f"{_duration(now - value)} ago"
                for value in (stats.oldest, stats.newest)
            ]
            _out(f"  {stats.directory}: {stats.entries} entries, {stats.bytes} bytes")
            _out(f"  oldest {ages[0]}, newest {ages[1]}, {stats.expired} expired")
    else:
        _out("  disabled (cache.enabled = false)")
    _out("config in effect (no secrets):")
    _print_config(config)
    if not reachable:
        _err(f"{_PROG}: error: state this config uses cannot be read (see above)")
        return EXIT_FAILED
    return EXIT_OK


# --------------------------------------------------------------------------------------------
# init
# --------------------------------------------------------------------------------------------


def _cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.config)
    text = render_config(
        args.template,
        model=args.model,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        fallbacks=tuple(args.fallbacks),
    )
    _check_rendered(text, path)
    if path.exists() and not args.force:
        _err(f"{_PROG}: {path} already exists; not overwritten (pass --force to replace it)")
        return EXIT_FAILED
    try:
        _write_config(path, text, replace=args.force)
    except FileExistsError:
        _err(f"{_PROG}: {path} already exists; not overwritten (pass --force to replace it)")
        return EXIT_FAILED
    except OSError as exc:
        raise _UsageError(f"{path}: cannot write file: {exc.strerror or exc}") from None
    config = load_config(path)
    _out(f"wrote {path}")
    key = config.openai.api_key_env
    if not os.environ.get(key):
        _out(f"next: export {key}=... (the API key), then: {_PROG} check-config --config {path}")
    return EXIT_OK


def _check_rendered(text: str, path: Path) -> None:
    """Load ``text`` with the real loader before anything is written (bad flag values)."""
    with tempfile.TemporaryDirectory(prefix="fallbackchain-init-") as scratch:
        probe = Path(scratch, path.name or "fallbackchain.toml")
        probe.write_text(text, encoding="utf-8")
        try:
            load_config(probe)
        except ConfigError as exc:
            message = str(exc).replace(str(probe), f"{path} (not written)")
            raise _UsageError(message) from None


def _write_config(path: Path, text: str, *, replace: bool) -> None:
    """Write ``text`` to ``path``: never clobbers without ``replace``, never half-written."""
    if not replace:
        with path.open("x", encoding="utf-8") as new:  # fails if it appeared meanwhile
            new.write(text)
        return
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as scratch:
        scratch.write(text)
    try:
        # NamedTemporaryFile makes it 0600: keep the replaced file's mode (a config is no secret).
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        os.chmod(scratch.name, mode)
        os.replace(scratch.name, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(scratch.name)
        raise


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo  # noqa: PLC0415 - only the demo needs the story's imports

    color = sys.stdout.isatty() and not os.environ.get("NO_COLOR")
    record = Path(args.record) if args.record else None
    result = run_demo(sys.stdout, color=color, record=record)
    if record is not None:
        _err(f"{_PROG}: events written to {record}")
    return EXIT_OK if result.upstream_during_open_breakers == 0 else EXIT_FAILED


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _version() -> str:
    from . import __version__  # noqa: PLC0415 - the package imports nothing from here

    return f"{_PROG} {__version__}"


def _fallback(text: str) -> FallbackSpec:
    try:
        return parse_fallback(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _command(
    commands: Any, name: str, summary: str, *, config: bool = True, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand; its one-line ``summary`` shows in the list of commands and atop its --help.

    With ``config`` it takes ``--config`` (resolved by :func:`_resolve_config`).
    """
    parents = [_config_option()] if config else []
    heading = f"{summary[0].upper()}{summary[1:]}."
    command: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=f"{heading} {description}" if description else heading,
        parents=parents,
    )
    command.set_defaults(uses_config=config, config_must_exist=True, config_alias=None)
    return command


def _config_option() -> argparse.ArgumentParser:
    option = argparse.ArgumentParser(add_help=False)
    option.add_argument(
        "--config",
        default=argparse.SUPPRESS,  # absent: $FALLBACKCHAIN_CONFIG, then ./fallbackchain.toml
        metavar="CONFIG",
        help=f"the TOML config file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG})",
    )
    return option


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=(
            "Write and check a fallbackchain config, show what is in effect, and warm and "
            "manage the response cache."
        ),
        epilog=(
            f"Every command that reads a config takes --config CONFIG, else ${CONFIG_ENV}, "
            f"else ./{DEFAULT_CONFIG}. "
            "Exit status: 0 ok, 1 something failed, 2 usage or input error, 130 interrupted."
        ),
    )
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    n = _command(
        commands,
        "init",
        "write a commented config file to start from",
        description=(
            f"PATH defaults to --config, ${CONFIG_ENV} or ./{DEFAULT_CONFIG}. The file "
            "is the chosen template with the given primary and fallbacks; it is checked "
            "before it is written. An existing file is kept (exit status 1) unless --force."
        ),
    )
    n.add_argument("config_alias", nargs="?", metavar="PATH", help="where to write the config")
    n.add_argument(
        "--template",
        choices=template_names(),
        default=DEFAULT_TEMPLATE,
        help="the shipped template to start from (default: %(default)s)",
    )
    n.add_argument("--model", metavar="MODEL", help="the primary model ([openai] model)")
    n.add_argument("--base-url", metavar="URL", help="the primary's OpenAI-compatible endpoint")
    n.add_argument(
        "--api-key-env", metavar="NAME", help="the NAME of the variable holding the API key"
    )
    n.add_argument(
        "--fallback",
        dest="fallbacks",
        action="append",
        type=_fallback,
        default=[],
        metavar="NAME=MODEL[@URL]",
        help="a fallback model, tried in the order given (URL: its endpoint, if not the "
        "primary's); repeat for more",
    )
    n.add_argument("--force", action="store_true", help="replace an existing file")
    n.set_defaults(handler=_cmd_init, config_must_exist=False)

    k = _command(
        commands,
        "check-config",
        "validate a config file and print the effective config",
        description="No secret is printed: only the names of key variables, and whether set.",
    )
    k.add_argument(
        "config_alias", nargs="?", metavar="CONFIG", help="the config file (the same as --config)"
    )
    k.set_defaults(handler=_cmd_check_config)

    st = _command(
        commands,
        "status",
        "breaker states, cache size and age range, and the config in effect",
        description="Exit status 1 when shared state (Redis) or the cache cannot be read.",
    )
    st.set_defaults(handler=_cmd_status)

    w = _command(
        commands,
        "warm",
        "answer every prompt of a JSON Lines file live, filling the cache",
        description=(
            "Send each prompt of PROMPTS (JSON Lines: chat.completions.create arguments, or "
            '{"prompt": "text"}) through the chain\'s live tiers, writing each answer to the '
            "cache. Already-cached prompts are skipped, so an interrupted run resumes."
        ),
    )
    w.add_argument("prompts", metavar="PROMPTS", help="the prompts file (JSON Lines)")
    w.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        metavar="N",
        help="requests in flight at once (default: %(default)s)",
    )
    w.add_argument("--refresh", action="store_true", help="ask again for cached prompts too")
    w.add_argument(
        "--dry-run", action="store_true", help="validate and show what would be sent; send nothing"
    )
    w.add_argument("--strict", action="store_true", help="send nothing if any line is bad")
    w.add_argument(
        "--max-wait",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="give up on the rest when every breaker stays open this long "
        "(default: 10 x breaker.reset_timeout)",
    )
    w.set_defaults(handler=_cmd_warm)

    c = _command(
        commands, "cache", "inspect, clear, prune, export or import the cache", config=False
    )
    cache_commands = c.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    s = _command(cache_commands, "stats", "entries, bytes, oldest and newest")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(handler=_cmd_cache_stats)
    cl = _command(cache_commands, "clear", "remove every entry (asks first)")
    cl.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    cl.set_defaults(handler=_cmd_cache_clear)
    p = _command(cache_commands, "prune", "remove entries older than the ttl")
    p.set_defaults(handler=_cmd_cache_prune)
    e = _command(cache_commands, "export", "write every servable entry as JSON Lines")
    e.add_argument("file", metavar="FILE", help='the file to write ("-": stdout)')
    e.set_defaults(handler=_cmd_cache_export)
    i = _command(
        cache_commands, "import", "load an export; never replaces a newer entry with an older one"
    )
    i.add_argument("file", metavar="FILE", help='the file to read ("-": stdin)')
    i.set_defaults(handler=_cmd_cache_import)

    d = _command(
        commands,
        "demo",
        "the resilience story against local fault servers (no API key)",
        config=False,
    )
    d.add_argument("--record", metavar="FILE", help="write every event as JSON Lines to FILE")
    d.set_defaults(handler=_cmd_demo)
    return parser


def _resolve_config(args: argparse.Namespace) -> str:
    """The config path of a command, found the same way for every command.

    ``--config`` (or a command's positional alias: ``check-config CONFIG``, ``init PATH``),
    else ``$FALLBACKCHAIN_CONFIG``, else ``./fallbackchain.toml``. Every command but ``init``
    needs the file to exist: a missing file is a usage error saying where the path came from.
    """
    flag: str | None = getattr(args, "config", None)
    alias: str | None = args.config_alias
    if flag is not None and alias is not None and Path(flag) != Path(alias):
        raise _UsageError(f"two config files given: {alias} and --config {flag}; pass one")
    given = alias if alias is not None else flag
    if given is not None:
        return given  # a missing file is load_config's error, naming the file
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    if from_env:
        if args.config_must_exist and not Path(from_env).is_file():
            raise _UsageError(f"{from_env}: config file not found (from ${CONFIG_ENV})")
        return from_env
    if args.config_must_exist and not Path(DEFAULT_CONFIG).is_file():
        raise _UsageError(
            f"no config: ./{DEFAULT_CONFIG} does not exist; pass --config CONFIG, set "
            f"${CONFIG_ENV}, or write one with `{_PROG} init`"
        )
    return DEFAULT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse reported
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        if args.uses_config:
            args.config = _resolve_config(args)
        return handler(args)
    except (ConfigError, InputFileError, _UsageError) as exc:
        _err(f"{_PROG}: error: {exc}")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _err(f"{_PROG}: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # stdout closed early (`... | head`): not an error worth a trace
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep interpreter exit quiet
        return EXIT_FAILED
