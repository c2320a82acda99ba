"""Pacing a warm run: at most ``concurrency`` in flight, a pause while the API is down, Retry-After.

What a caller can rely on (never hammer):

* At most ``concurrency`` requests are in flight.
* When every live tier's breaker is open, nothing is sent until the breaker's ``reset_timeout``
  has passed; then one request at a time probes the API, and full concurrency resumes after the
  first live answer. A prompt that failed only because of the outage is tried again after the
  pause (:meth:`Pacer.settled` says which).
* A request that failed after ``429`` answers with ``Retry-After`` holds back new requests for
  that long (at most ``max(retry.max_retry_after, breaker.reset_timeout)``).
* If the API stays down for ``max_wait`` seconds (default: 10 times the longest breaker
  ``reset_timeout``) the pacer says :data:`GIVE_UP`. In testing mode
  (:func:`~fallbackchain.set_testing`) it never asks for a wait.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from .._errors import BreakerOpenError, QuotaExceededError, RateLimitedError
from .._timing import Clock, is_testing
from ..chain import FallbackChain
from ._outcome import SendResult

if TYPE_CHECKING:
    from ..chain import AsyncFallbackChain  # the async driver loads on first use

__all__ = ["GIVE_UP", "Pacer", "max_wait_of"]

_log = logging.getLogger("fallbackchain.warm")

GIVE_UP: Final = "give-up"
""":meth:`Pacer.decide`'s answer when the API stayed down for ``max_wait`` seconds."""


class Pacer:
    """Decides when the next request may be sent. Pure policy over the chain's breaker states."""

    def __init__(
        self,
        chain: FallbackChain | AsyncFallbackChain,
        *,
        concurrency: int,
        clock: Clock,
        max_wait: float,
    ) -> None:
        self._chain = chain
        self._concurrency = concurrency
        self._clock = clock
        self.max_wait = max_wait
        self._resets = _reset_timeouts(chain)
        self._hold_cap = max(chain.config.retry.max_retry_after, *self._resets.values())
        self._opened: dict[str, float] = {}  # when each open breaker was (last) seen to open
        self._hold_until = -math.inf
        self.outage_since: float | None = None
        self._announced = False

    def _observe(self, now: float, tried: Iterable[str] = ()) -> bool:
        """Track open breakers; True when every live tier's breaker is open."""
        states = self._chain.breaker_states()
        tried = set(tried)
        for name, state in states.items():
            if state == "open":
                # A real attempt at an open tier was its probe, which re-opened it just now.
                if name not in self._opened or name in tried:
                    self._opened[name] = now
            else:
                self._opened.pop(name, None)
        return bool(states) and all(state == "open" for state in states.values())

    def decide(self, in_flight: int) -> float | str | None:
        """``None``: send now; a number: wait that long (or for a request to finish)."""
        now = self._clock()
        all_open = self._observe(now)
        if all_open and self.outage_since is None:
            self.outage_since = now
        if self.outage_since is not None and now - self.outage_since >= self.max_wait:
            return GIVE_UP
        limit = 1 if self.outage_since is not None else self._concurrency
        if in_flight >= limit:
            return math.inf
        wait = self._hold_until - now
        if all_open:  # until the first tier may take a probe
            reopen = min(at + self._resets.get(name, 0.0) for name, at in self._opened.items())
            wait = max(wait, reopen - now)
        if wait <= 0 or is_testing():
            return None
        if self.outage_since is not None:
            wait = min(wait, self.outage_since + self.max_wait - now)
            if not self._announced:
                self._announced = True
                _log.warning(
                    "every live tier's breaker is open: sending nothing for %.3gs, then one "
                    "request at a time until the API answers again",
                    wait,
                )
        return max(wait, 0.0)

    def settled(self, result: SendResult) -> bool:
        """Record a finished request; True when it failed only because of an outage."""
        now = self._clock()
        real = [a for a in result.attempts if not isinstance(a.exception, BreakerOpenError)]
        all_open = self._observe(now, {a.tier for a in real})
        if result.warmed or (result.attempts and real and real[-1].exception is None):
            if self.outage_since is not None:
                _log.warning("the API answers again: resuming at full concurrency")
            self.outage_since = None
            self._announced = False
            return False
        waits = [
            a.retry_after
            for a in result.attempts
            if isinstance(a.exception, RateLimitedError)
            and not isinstance(a.exception, QuotaExceededError)
            and a.retry_after is not None
        ]
        if waits:
            hold = min(max(waits), self._hold_cap)
            _log.info("rate limited: holding new requests back for %.3gs (Retry-After)", hold)
            self._hold_until = max(self._hold_until, now + hold)
        if result.client_error or not result.attempts:
            return False
        return all_open or not real


def _reset_timeouts(chain: FallbackChain | AsyncFallbackChain) -> dict[str, float]:
    """Each live tier's breaker ``reset_timeout``, by tier name."""
    return {name: route.reset_timeout for route in chain.config.routes() for name, _ in route.tiers}


def max_wait_of(chain: FallbackChain | AsyncFallbackChain, max_wait: float | None) -> float:
    """``max_wait`` checked, or the default for ``chain`` when it is ``None``.

    The default is 10 times the longest breaker ``reset_timeout`` of ``chain``'s live tiers;
    anything but a number of seconds >= 0 raises :class:`ValueError`.
    """
    if max_wait is None:
        return 10 * max(_reset_timeouts(chain).values())
    if isinstance(max_wait, bool) or not isinstance(max_wait, int | float) or max_wait < 0:
        raise ValueError(f"max_wait must be a number of seconds >= 0, got {max_wait!r}")
    return float(max_wait)
