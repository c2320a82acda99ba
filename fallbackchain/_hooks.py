"""Observability hooks: what a chain tells listeners, as frozen dataclasses.

Pass ``listeners=[...]`` to a chain. A listener is any object with some of the methods of
:class:`ChainListener` (all optional); each receives one frozen event. A listener that raises is
logged (once per listener and method) and ignored: it never breaks a request, unlike
pybreaker's listeners. Events carry no prompt text and no secret: ``request_id`` correlates them,
``key`` is the request's cache key (a hash).

Event order for one request::

    RequestStarted
      (AttemptStarted AttemptEnded [RetryScheduled])*  [FallbackTaken]*  per tier
      [CacheEvent(hit|miss)]                            when the live tiers gave up
      [CacheEvent(store)]                               after a complete live answer
    RequestEnded
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from .breaker import BreakerState

__all__ = [
    "AttemptEnded",
    "AttemptStarted",
    "BreakerChanged",
    "CacheEvent",
    "ChainListener",
    "FallbackTaken",
    "RequestEnded",
    "RequestStarted",
    "RetryScheduled",
]

logger = logging.getLogger("fallbackchain.hooks")


@dataclass(frozen=True, slots=True)
class RequestStarted:
    """A request began. ``model`` is the primary model asked for.

    ``api``: the provider API it goes through, ``"chat"`` (chat completions: ``stream()``,
    ``complete()``, ``chain.chat``) or ``"responses"`` (``chain.responses``); the name of the
    request's :class:`~fallbackchain.chain.Endpoint`.
    """

    request_id: int
    key: str | None
    model: str
    streaming: bool
    api: str = "chat"


@dataclass(frozen=True, slots=True)
class RequestEnded:
    """A request ended: ``source`` answered it, or ``error`` names why it did not.

    ``input_tokens``/``output_tokens``: what the answer was billed, as its provider reported
    (``None`` when it did not say); ``0`` for an answer from the cache, which bills nothing.
    """

    request_id: int
    source: str | None
    error: str | None
    duration: float
    attempts: int
    input_tokens: int | None = None
    output_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    """An attempt at ``tier`` is about to be sent (``number`` is 1-based within the tier).

    ``hedge``: started in parallel with a route that showed no content after ``hedge_after``.
    """

    request_id: int
    tier: str
    number: int
    probe: bool
    hedge: bool = False


@dataclass(frozen=True, slots=True)
class AttemptEnded:
    """An attempt ended. ``outcome`` ``"abandoned"`` is neutral (closed early, caller's error)."""

    request_id: int
    tier: str
    number: int
    outcome: Literal["success", "failure", "abandoned"]
    error_type: str | None
    status_code: int | None
    duration: float
    time_to_first_token: float | None


@dataclass(frozen=True, slots=True)
class RetryScheduled:
    """The same tier will be tried again after ``delay`` seconds.

    ``retry_after`` is what the server asked for, if it did.
    """

    request_id: int
    tier: str
    delay: float
    retry_after: float | None


@dataclass(frozen=True, slots=True)
class FallbackTaken:
    """The request leaves ``from_tier`` for ``to_tier`` (``"cache"`` after the last live tier)."""

    request_id: int
    from_tier: str
    to_tier: str
    reason: str


@dataclass(frozen=True, slots=True)
class CacheEvent:
    """The cache was read (``hit``/``miss``) or written (``store``)."""

    request_id: int
    kind: Literal["hit", "miss", "store"]
    age: float | None = None


@dataclass(frozen=True, slots=True)
class BreakerChanged:
    """A tier's breaker changed state."""

    tier: str
    old: BreakerState
    new: BreakerState


class ChainListener(Protocol):
    """The methods a listener may define; every one is optional."""

    def on_request_start(self, event: RequestStarted) -> None:
        """A request began."""

    def on_request_end(self, event: RequestEnded) -> None:
        """A request ended."""

    def on_attempt_start(self, event: AttemptStarted) -> None:
        """An attempt is about to be sent."""

    def on_attempt_end(self, event: AttemptEnded) -> None:
        """An attempt ended."""

    def on_retry(self, event: RetryScheduled) -> None:
        """A retry was scheduled."""

    def on_fallback(self, event: FallbackTaken) -> None:
        """The request moved to another tier."""

    def on_cache(self, event: CacheEvent) -> None:
        """The cache was read or written."""

    def on_breaker_change(self, event: BreakerChanged) -> None:
        """A breaker changed state."""


_METHODS = {
    RequestStarted: "on_request_start",
    RequestEnded: "on_request_end",
    AttemptStarted: "on_attempt_start",
    AttemptEnded: "on_attempt_end",
    RetryScheduled: "on_retry",
    FallbackTaken: "on_fallback",
    CacheEvent: "on_cache",
    BreakerChanged: "on_breaker_change",
}

Event = (
    RequestStarted
    | RequestEnded
    | AttemptStarted
    | AttemptEnded
    | RetryScheduled
    | FallbackTaken
    | CacheEvent
    | BreakerChanged
)

_request_ids = itertools.count(1)


def next_request_id() -> int:
    """A process-unique id for correlating one request's events."""
    return next(_request_ids)


class Hooks:
    """Dispatches events to listeners, containing their failures. Cheap when there are none."""

    __slots__ = ("_complained", "_listeners")

    def __init__(self, listeners: Sequence[object] = ()) -> None:
        self._listeners = tuple(listeners)
        self._complained: set[tuple[int, str]] = set()

    def __bool__(self) -> bool:
        return bool(self._listeners)

    def emit(self, event: Event) -> None:
        """Give ``event`` to every listener that has the matching method."""
        if not self._listeners:
            return
        name = _METHODS[type(event)]
        for listener in self._listeners:
            method = getattr(listener, name, None)
            if method is None:
                continue
            try:
                method(event)
            except Exception:
                marker = (id(listener), name)
                if marker not in self._complained:
                    self._complained.add(marker)
                    logger.exception(
                        "listener %s.%s failed (ignored; logged once)",
                        type(listener).__name__,
                        name,
                    )
