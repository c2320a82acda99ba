"""``fallbackchain warm PROMPTS``: warm the cache from a prompts file, with progress on stderr.

What a caller can rely on: bad lines are printed as ``FILE:LINE: ...`` on stderr and the valid
lines still run (with ``--strict``: nothing is sent, exit status 2); progress goes to stderr (a
redrawn bar on a terminal, one plain line per prompt otherwise) and the summary to stdout. A
dry run needs no API key and sends nothing. Ctrl-C or SIGTERM ends the run with exit status
130 after the requests in flight finish; what was written is kept and the same command resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, Final, TextIO

import openai

from .._config import ChainConfig
from .._config_file import load_config
from ..chain import FallbackChain
from ..warming import WarmProgress, WarmReport, load_prompts, warm
from ._cache_commands import require_writable
from ._output import PROG, ExitCode, UsageError, duration, err, out, printable, showing_warnings

__all__ = ["cmd_warm"]


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

    def so_far(self, *, seconds: float) -> WarmReport:
        """The counts shown so far as a report (for a run that was interrupted)."""
        last = self.last
        counts = (last.warmed, last.skipped, last.failed) if last else (0, 0, 0)
        return WarmReport(*counts, invalid=0, tokens=self.tokens, seconds=seconds)

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
        elapsed = duration(time.perf_counter() - self._started)
        self._bar = (
            f"warming [{'#' * filled}{'.' * (self._WIDTH - filled)}] {event.done}/{event.total}"
            f"  warmed {event.warmed}  skipped {event.skipped}  failed {event.failed}  {elapsed}"
        )
        self._write("\r\x1b[K" + self._bar)

    def _write(self, text: str) -> None:
        self._stream.write(printable(text, self._stream))
        self._stream.flush()


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


def _summary(report: WarmReport, invalid: int) -> str:
    """The one-line summary; ``invalid``: the bad lines the command read (it sends the rest)."""
    return (
        f"warmed {report.warmed}, skipped {report.skipped}, failed {report.failed}, "
        f"invalid {invalid}, tokens {report.tokens}, time {duration(report.seconds)}"
    )


def _dry_run_client(config: ChainConfig) -> openai.OpenAI:
    # A dry run sends nothing: a client that is never used, so no API key is needed.
    return openai.OpenAI(base_url=config.openai.base_url, api_key="unused-dry-run", max_retries=0)


def cmd_warm(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    requests, invalid = load_prompts(args.prompts)
    for error in invalid:
        err(str(error))
    if args.strict and invalid:
        raise UsageError(
            f"{len(invalid)} bad line(s) in {args.prompts}; nothing was sent (--strict)"
        )
    if not config.cache.enabled:
        raise UsageError(
            f"{config.source}: key 'cache.enabled': the cache is disabled, so warming "
            "would store nothing"
        )
    if args.dry_run:
        return _dry_run(config, args, requests, len(invalid))
    with _sigterm_interrupts(), FallbackChain(config) as chain:
        progress = _Progress(sys.stderr, tty=sys.stderr.isatty())
        with showing_warnings(progress.message):
            require_writable(chain.cache)
            pruned = chain.cache.prune()
            if pruned:
                progress.message(f"{PROG}: pruned {pruned} expired cache entries")
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
                so_far = progress.so_far(seconds=time.perf_counter() - started)
                out("interrupted: " + _summary(so_far, len(invalid)))
                err(
                    f"{PROG}: interrupted; answers already warmed (and those in flight, "
                    "which were let finish) are kept. Run the same command again to resume: "
                    "warmed prompts are skipped."
                )
                return ExitCode.INTERRUPTED
            progress.finish()
    out(_summary(report, len(invalid)))
    return ExitCode.OK if report.ok and not invalid else ExitCode.FAILED


def _dry_run(
    config: ChainConfig, args: argparse.Namespace, requests: Sequence[Any], invalid: int
) -> int:
    if not os.environ.get(config.openai.api_key_env):
        err(
            f"{PROG}: warning: environment variable {config.openai.api_key_env} is not set; "
            "a real run needs it"
        )

    def show(event: WarmProgress) -> None:
        request = event.request
        if event.outcome == "planned":
            sent = request.sent(config.openai.model)
            out(f"{request.where}: would send {json.dumps(sent, ensure_ascii=False)}")
        elif event.outcome == "skipped":
            out(f"{request.where}: would skip ({event.note})")
        elif event.error is not None:
            err(str(event.error))

    client = _dry_run_client(config)
    unused = {fallback.name: client for fallback in config.fallbacks}
    try:
        with (
            FallbackChain(config, client=client, fallback_clients=unused) as chain,
            showing_warnings(),
        ):
            report = warm(chain, requests, refresh=args.refresh, dry_run=True, progress=show)
    finally:
        client.close()
    out(
        f"dry run: {len(report.planned)} to send, {report.skipped} to skip, "
        f"{report.failed} failed, {invalid} invalid; nothing was sent"
    )
    return ExitCode.OK if report.failed == 0 and invalid == 0 else ExitCode.FAILED
