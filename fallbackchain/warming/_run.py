"""One warm run's decisions, without I/O: the queue of prompts, skip and resume, the tally.

Both drivers (:func:`~fallbackchain.warming.warm` in threads, ``awarm`` on asyncio) ask
:meth:`WarmRun.next_step` what to do, do only the I/O the step names, and hand the result back
(tenacity's split of ``iter()`` from its sync and async loops), so both behave alike.

What a caller can rely on:

* **Skip and resume.** A prompt whose answer is already cached is *skipped* unless ``refresh``;
  a repeated prompt is skipped too. Every answer is written through as it arrives, so a run
  that stopped (Ctrl-C, a kill, an exception from ``progress``) loses nothing it wrote, and
  running it again picks up where it stopped.
* **Failures are per prompt.** A failed prompt is logged on the ``fallbackchain.warm`` logger
  with its file and line (the record carries the :data:`WARM_RECORD` attribute) and the run
  goes on. A prompt that failed only because of an outage is sent again after the pause, up to
  10 sends; in testing mode nothing is sent again.
* **Dry run.** With ``dry_run`` every prompt is validated and looked up but nothing is sent:
  :attr:`WarmReport.planned` lists what would be.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter, deque
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Final, Literal, Protocol, TypedDict, TypeVar

from .._timing import Clock, is_testing
from ..cache import CachedAnswer, LineError
from ..chain import FallbackChain, Sleep
from ._outcome import Prompt, SendResult, request_key
from ._pacing import GIVE_UP, Pacer, max_wait_of
from ._prompts import WarmRequest, strict_error

if TYPE_CHECKING:
    from ..chain import AsyncFallbackChain  # the async driver loads on first use

__all__ = [
    "WARM_RECORD",
    "Collect",
    "LookUp",
    "Send",
    "Step",
    "WarmOptions",
    "WarmOutcome",
    "WarmProgress",
    "WarmReport",
    "WarmRun",
]

_log = logging.getLogger("fallbackchain.warm")

_MAX_TRIES: Final = 10  # sends of one prompt (outage retries included) before it counts failed
WARM_RECORD: Final = "fallbackchain_warm_item"
"""The attribute marking a log record about one prompt (a front end that prints its own
per-prompt lines can leave these out)."""

WarmOutcome = Literal["warmed", "skipped", "failed", "planned"]
"""What happened to one prompt; ``planned`` only in a dry run (it would be sent)."""


# --------------------------------------------------------------------------------------------
# What a run reports
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WarmProgress:
    """Reported once per prompt as it is settled (from the thread or task running the warm)."""

    done: int
    """How many of the ``total`` valid prompts are settled, this one included."""
    total: int
    request: WarmRequest
    """The prompt settled."""
    outcome: WarmOutcome
    warmed: int
    """The running counts: ``warmed``, ``skipped`` and ``failed`` (``planned`` ones count as
    neither in a dry run)."""
    skipped: int
    failed: int
    tokens: int = 0
    """This prompt's ``usage.total_tokens`` when it was warmed."""
    error: LineError | None = None
    """Why it failed, naming its file and line (only for a failed prompt)."""
    note: str | None = None
    """Why it was skipped (only for a skipped prompt)."""


@dataclass(frozen=True, slots=True)
class WarmReport:
    """The summary of one run.

    ``invalid`` counts bad input lines; ``errors`` lists them and every failed prompt, in line
    order. ``tokens`` is the total ``usage.total_tokens`` of the warmed answers; ``seconds`` the
    wall time of the run. ``planned`` (dry run only) lists the prompts that would be sent.
    """

    warmed: int
    skipped: int
    failed: int
    invalid: int
    tokens: int
    seconds: float
    errors: tuple[LineError, ...] = ()
    planned: tuple[WarmRequest, ...] = ()

    @property
    def ok(self) -> bool:
        """True when nothing failed and every line was valid."""
        return self.failed == 0 and self.invalid == 0


class WarmOptions(TypedDict, total=False):
    """The keyword options :func:`warm` and :func:`awarm` share; each may be left out.

    ``concurrency`` (default 4): requests in flight at most. ``refresh``: ask again for cached
    prompts too. ``strict``: raise :class:`InputFileError` before anything is sent when any line
    is bad. ``dry_run``: validate and look up every prompt, send nothing. ``progress``: called
    once per prompt as it is settled. ``max_wait`` (default: 10 times the longest breaker
    ``reset_timeout``): how long every live tier's breaker may stay open before the remaining
    prompts are failed unsent. ``clock`` (default: the chain's): what the pacing reads.
    """

    concurrency: int
    refresh: bool
    strict: bool
    dry_run: bool
    progress: Callable[[WarmProgress], None] | None
    max_wait: float | None
    clock: Clock | None


# --------------------------------------------------------------------------------------------
# The steps a driver carries out
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _PromptStep:
    """A step about one prompt."""

    item: Prompt


class LookUp(_PromptStep):
    """Read the cache for ``item.key``, then tell :meth:`WarmRun.looked_up` what was there."""

    __slots__ = ()


class Send(_PromptStep):
    """Start asking the chain for ``item`` (it is in flight until collected)."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Collect:
    """Wait for a request in flight to finish, then hand what finished to :meth:`WarmRun.collect`.

    ``timeout``: the longest wait in seconds (``None``: no limit).
    """

    timeout: float | None


Step = LookUp | Send | Sleep | Collect  # Sleep: the chain core's, nothing in flight


class Finished(Protocol):
    """A finished request in flight: a thread's future or an asyncio task."""

    def result(self) -> SendResult: ...


_F = TypeVar("_F", bound=Finished)


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


class WarmRun:
    """The state and every decision of one run, shared by the sync and async drivers.

    Built with the prompts already read: ``requests`` (valid) and ``invalid`` (bad lines).
    Raises :class:`ValueError` when ``concurrency < 1``, ``max_wait < 0`` or the chain's cache
    is disabled, :class:`InputFileError` for any bad line when ``strict``, and
    :class:`TypeError` for an option :class:`WarmOptions` does not have.
    """

    def __init__(
        self,
        chain: FallbackChain | AsyncFallbackChain,
        requests: Sequence[WarmRequest],
        invalid: Sequence[LineError],
        options: WarmOptions,
    ) -> None:
        unknown = sorted(set(options) - WarmOptions.__optional_keys__)
        if unknown:
            raise TypeError(f"unexpected keyword argument {unknown[0]!r}")
        concurrency = options.get("concurrency", 4)
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
        if not chain.config.cache.enabled:
            raise ValueError(
                "the chain's cache is disabled (cache.enabled = false): warming would store nothing"
            )
        if options.get("strict", False) and invalid:
            raise strict_error(invalid)
        for error in invalid:
            _log.warning("%s", error, extra={WARM_RECORD: True})
        self.chain = chain
        self.concurrency = concurrency
        self.total = len(requests)
        self.invalid = list(invalid)
        self.refresh = options.get("refresh", False)
        self.dry_run = options.get("dry_run", False)
        self.progress = options.get("progress")
        self.pending: deque[Prompt] = deque(Prompt(r) for r in requests)
        self.pacer = Pacer(
            chain,
            concurrency=concurrency,
            clock=options.get("clock") or chain.clock,
            max_wait=max_wait_of(chain, options.get("max_wait")),
        )
        self.settled: Counter[WarmOutcome] = Counter()  # prompts settled, by outcome
        self.tokens = 0  # of the warmed answers
        self.errors: list[LineError] = []  # failed prompts (bad lines are in `invalid`)
        self.planned: list[WarmRequest] = []  # a dry run's prompts that would be sent
        self.seen: dict[str, WarmRequest] = {}
        self.gave_up = False
        self.started = time.perf_counter()

    def take(self) -> Prompt | None:
        """The next prompt to look up or send; settles repeats and uncacheable ones."""
        while self.pending:
            item = self.pending.popleft()
            if item.looked_up:
                return item
            request = item.request
            try:
                key = request_key(self.chain, request)
            except (TypeError, ValueError) as exc:
                self.fail(item, f"{type(exc).__name__}: {exc}")
                continue
            if key is None:
                self.fail(item, "cannot be cached: a value has no JSON form")
                continue
            first = self.seen.get(key)
            if first is not None:
                self.settle(item, "skipped", note=f"same request as line {first.line}")
                continue
            self.seen[key] = request
            item.key = key
            return item
        return None

    def admit(self, item: Prompt, cached: CachedAnswer | None) -> bool:
        """After the cache lookup: True to send ``item``; else it is settled here."""
        item.looked_up = True
        if cached is not None and not self.refresh:
            self.settle(item, "skipped", note="already cached")
            return False
        item.old = cached
        if self.dry_run:
            self.settle(item, "planned")
            return False
        return True

    def push_back(self, item: Prompt) -> None:
        self.pending.appendleft(item)

    # The whole loop's decisions; a driver only does the I/O each step names (tenacity's
    # split of ``iter()`` from the sync and async loops), so both drivers behave alike.

    def next_step(self, in_flight: int) -> Step | None:
        """What the driver does next, with ``in_flight`` requests running; ``None``: done."""
        while True:
            wait: float | None = None
            item = self.take()
            if item is not None:
                if not item.looked_up:
                    return LookUp(item)
                decision = self.pacer.decide(in_flight)
                if decision is None:
                    return Send(item)
                self.push_back(item)
                if decision == GIVE_UP:
                    self.give_up()
                    continue
                wait = float(decision)
            if not in_flight:
                if item is None:
                    return None
                return Sleep(wait or 0.0)
            return Collect(wait if wait is not None and math.isfinite(wait) else None)

    def looked_up(self, item: Prompt, cached: CachedAnswer | None) -> None:
        """After a :class:`LookUp`: an admitted item is the next one to take."""
        if self.admit(item, cached):
            self.push_back(item)

    def collect(self, in_flight: dict[_F, Prompt], done: Container[_F]) -> None:
        """After a :class:`Collect`: settle the finished requests, in submission order."""
        for request in [f for f in in_flight if f in done]:
            self.finished(in_flight.pop(request), request.result())

    def give_up(self) -> None:
        """Settle every prompt not sent yet as failed (the API stayed down too long)."""
        self.gave_up = True
        message = (
            "not sent: every live tier's breaker stayed open for "
            f"{self.pacer.max_wait:g}s; run again later to warm the rest"
        )
        while self.pending:
            self.fail(self.pending.popleft(), message)

    def finished(self, item: Prompt, result: SendResult) -> None:
        item.tries += 1
        outage = self.pacer.settled(result)
        if result.warmed:
            self.settle(item, "warmed", tokens=result.tokens)
        elif outage and not self.gave_up and not is_testing() and item.tries < _MAX_TRIES:
            self.push_back(item)  # failed only because the API is down: try again after the wait
        else:
            self.fail(item, result.message or "failed")

    def fail(self, item: Prompt, message: str) -> None:
        """Settle ``item`` as failed: one :class:`LineError` naming its line, logged."""
        request = item.request
        error = LineError(request.file, request.line, f"failed: {message}")
        self.settled["failed"] += 1
        self.errors.append(error)
        _log.warning("%s", error, extra={WARM_RECORD: True})
        self._tell(replace(self._settled(item, "failed"), error=error))

    def settle(
        self, item: Prompt, outcome: WarmOutcome, *, tokens: int = 0, note: str | None = None
    ) -> None:
        """Settle ``item`` as warmed (with its ``tokens``), skipped (``note``: why) or planned."""
        self.settled[outcome] += 1
        self.tokens += tokens
        if outcome == "planned":
            self.planned.append(item.request)
        self._tell(replace(self._settled(item, outcome), tokens=tokens, note=note))

    def _settled(self, item: Prompt, outcome: WarmOutcome) -> WarmProgress:
        """The progress event of ``item`` (already counted), before its tokens, error and note."""
        n = self.settled  # this one included: settle() and fail() count it first
        return WarmProgress(
            n.total(), self.total, item.request, outcome, n["warmed"], n["skipped"], n["failed"]
        )

    def _tell(self, event: WarmProgress) -> None:
        if self.progress is not None:
            self.progress(event)

    def report(self) -> WarmReport:
        """The summary so far (the whole run's once :meth:`next_step` said it is done)."""
        errors = tuple(sorted([*self.invalid, *self.errors], key=lambda e: (e.file, e.line)))
        seconds = time.perf_counter() - self.started
        n, invalid, planned = self.settled, len(self.invalid), tuple(self.planned)
        return WarmReport(
            n["warmed"], n["skipped"], n["failed"], invalid, self.tokens, seconds, errors, planned
        )
