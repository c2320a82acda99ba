"""The steps of a request: what the core asks a driver to do, one value per kind of I/O.

The core (:func:`~fallbackchain.chain._flow.request_flow` over a
:class:`~fallbackchain.chain._core.RequestRun`) decides; a driver (threads or asyncio) does
what each step names and hands back what it got (the value listed with the step), or the
exception it met. A driver knows these values and the I/O they name, nothing of the policy.

| step | the driver | hands back |
| --- | --- | --- |
| :class:`Sleep` | sleeps (less, if the tier's breaker opens) | the seconds left if it woke early |
| :class:`AwaitSlot` | waits on the tier's gate | nothing |
| :class:`Acquire` | asks the tier's gate for a permit | the gate's answer |
| :class:`OpenStream` | sends a streamed attempt, reads to its first content | the opened stream |
| :class:`ReadStream` | shows the opened stream's events, reads it to its end | the answer |
| :class:`CloseStream` | closes an opened stream that will not be read | nothing |
| :class:`FetchWhole` | sends a non-streamed attempt | the checked answer |
| :class:`Report` | tells the permit's gate how the attempt ended | what the gate returns |
| :class:`Show` | hands the events to the consumer | nothing |
| :class:`ReadCache` / :class:`WriteCache` | reads / writes the cache | the entry / whether stored |
"""

# The steps are NamedTuples, not frozen dataclasses: import time (CONTRIBUTING.md).

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from .._config import PRIMARY_ROUTE, RouteConfig
from .._results import ChainEvent
from ..breaker import BreakerGate, Permit

if TYPE_CHECKING:
    from ._watch import AttemptWatch

__all__ = [
    "Acquire",
    "AwaitSlot",
    "CloseStream",
    "FetchWhole",
    "Neutral",
    "OpenStream",
    "Opened",
    "ReadCache",
    "ReadStream",
    "Report",
    "Show",
    "Sleep",
    "Step",
    "Tier",
    "TryTier",
    "UseCache",
    "WriteCache",
]


class Tier(NamedTuple):
    """One live tier: its name (the response's ``source``), whether it streams, its breaker.

    ``route`` is the route it belongs to: a provider and model with its resolved settings
    (timeouts, budget, hedging: see :class:`~fallbackchain.RouteConfig`). The primary route
    has a stream and a completion tier; a fallback's route has one.
    """

    name: str
    streaming: bool
    gate: BreakerGate
    route: RouteConfig

    @property
    def provider(self) -> str:
        """The route's name (``"primary"`` or a fallback's), also its client's key."""
        return self.route.name

    @property
    def model(self) -> str | None:
        """The model a fallback asks for; ``None`` for the primary (the request's model)."""
        return None if self.route.name == PRIMARY_ROUTE else self.route.model


class Sleep(NamedTuple):
    """Wait this many seconds before the next try at ``tier``, then ask again.

    A driver sleeping in real time ends the wait early once ``tier``'s breaker opens (see
    :meth:`BreakerGate.sleep_unless_open`): the try would be refused. It hands back the
    seconds that were left (nothing when it slept them all). An injected sleep (tests)
    sleeps the whole wait.
    """

    seconds: float
    tier: Tier | None = None


class AwaitSlot(NamedTuple):
    """``tier``'s breaker is busy: wait on its gate, then ask again.

    The wait ends when one of the gate's attempts ends in this process (the gate's
    generation moves past ``since``), or after ``seconds`` (see :meth:`BreakerGate.wait`).
    """

    tier: Tier
    seconds: float
    since: int | None = None


class Acquire(NamedTuple):
    """Ask ``tier``'s breaker for a permit (``Permit``, ``Busy`` or ``None``: refused)."""

    tier: Tier


class TryTier(NamedTuple):
    """One attempt at ``tier`` under ``permit``; ``number`` is 1-based within the tier."""

    tier: Tier
    permit: Permit
    number: int
    delay_before: float
    started: float


class UseCache:
    """No live tier is left: answer from the cache, or fail with every attempt listed."""

    __slots__ = ()


Neutral = Literal["reroute", "raise", "closed"]
"""An attempt's error that no breaker counts (the permit is released). ``"reroute"``: carry
on at the tier :meth:`RequestRun.rerouted` chose; ``"raise"``: the caller's own mistake,
re-raised unchanged; ``"closed"``: the chain was closed meanwhile (raise ``ChainClosedError``)."""


class OpenStream(NamedTuple):
    """Send ``attempt`` streamed and read until its first content (or its end); show nothing.

    ``hedge_after`` ``None``: hand back what was read. Otherwise race it: if no content came
    within ``hedge_after`` seconds, hedge it (see :class:`~fallbackchain.chain._race.Race`)
    and hand back an :class:`Opened` naming the attempt that goes on.
    """

    attempt: TryTier
    watch: AttemptWatch
    hedge_after: float | None


class Opened(NamedTuple):
    """A race's end: the attempt that goes on, its watch, and its opened stream or its error."""

    attempt: TryTier
    watch: AttemptWatch
    stream: Any  # the driver's opened stream, or the BaseException the attempt ended with


class ReadStream(NamedTuple):
    """Show what :class:`OpenStream` read, then the rest of the stream; hand back its answer."""

    attempt: TryTier
    watch: AttemptWatch
    opened: Any


class CloseStream(NamedTuple):
    """Close what :class:`OpenStream` opened without reading it (the consumer closed meanwhile).

    The connection is released now, not whenever the stream is collected.
    """

    opened: Any


class FetchWhole(NamedTuple):
    """Send ``attempt`` non-streamed; hand back the endpoint's checked answer."""

    attempt: TryTier
    watch: AttemptWatch


class Report(NamedTuple):
    """Tell ``permit``'s gate how its attempt ended; hand back what the gate returns.

    ``"success"`` and ``"failure"`` count for the breaker (a failure returns whether the
    breaker opened); ``"release"`` frees the slot and counts nothing.
    """

    permit: Permit
    outcome: Literal["success", "failure", "release"]


class Show(NamedTuple):
    """Hand these events to the consumer, in order."""

    events: tuple[ChainEvent, ...]


class ReadCache(NamedTuple):
    """Read the cache entry at ``key``; hand back the ``CachedAnswer`` or ``None``.

    A cache that fails is a miss (the driver logs it); it never fails the request.
    """

    key: str


class WriteCache(NamedTuple):
    """Store ``stored`` (the endpoint's encoding) at ``key``; hand back whether it was stored.

    A cache that fails stores nothing (the driver logs it); it never fails the request.
    """

    key: str
    stored: Any


Step = (
    Sleep
    | AwaitSlot
    | Acquire
    | OpenStream
    | ReadStream
    | CloseStream
    | FetchWhole
    | Report
    | Show
    | ReadCache
    | WriteCache
)
"""Every step a request's flow yields to its driver."""
