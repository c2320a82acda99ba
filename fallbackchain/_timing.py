"""Clocks, sleeps, and testing mode.

A chain reads time from one injected :class:`TimeSource`: ``monotonic()`` for every interval
(deadlines, timeouts, backoff, in-process breaker timers), which a stepped wall clock cannot
move, and ``wall()`` only for stamps that are stored or shared (a cache row's ``stored_at``).
Breakers shared through Redis take their stamps from the Redis server's clock (see
``breaker/_redis_store``), so one host's skewed clock cannot hold a cluster's breaker open. Backoff
and busy waits go through an injected ``sleep`` (sync) or ``async_sleep``, so tests run them
without waiting.

:func:`set_testing` is for *your* tests of code that uses a chain: while it is on, backoff
sleeps are skipped (the chain still makes every attempt it would make).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import NamedTuple, Protocol, runtime_checkable

__all__ = [
    "AsyncSleep",
    "Clock",
    "Sleep",
    "SystemClock",
    "TimeSource",
    "is_testing",
    "set_testing",
    "time_source",
]

Clock = Callable[[], float]
"""One reading of one clock, in seconds."""
Sleep = Callable[[float], None]
AsyncSleep = Callable[[float], Awaitable[None]]


# Plain classes and a NamedTuple, not dataclasses: import time (CONTRIBUTING.md).


class _Mode:
    __slots__ = ("testing",)

    def __init__(self) -> None:
        self.testing = False


_MODE = _Mode()


class _TestingToggle:
    """Returned by :func:`set_testing`; also a context manager restoring the previous mode."""

    def __init__(self, previous: bool) -> None:
        self._previous = previous

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc_info: object) -> None:
        _MODE.testing = self._previous


def set_testing(testing: bool = True) -> _TestingToggle:
    """Turn testing mode on or off (no backoff sleeps); also a context manager.

    Example::

    with fallbackchain.set_testing(True):
        ...  # chains retry without sleeping
    """
    previous = _MODE.testing
    _MODE.testing = testing
    return _TestingToggle(previous)


def is_testing() -> bool:
    """True while testing mode is on."""
    return _MODE.testing


def sleep_unless_testing(sleep: Sleep, seconds: float) -> None:
    """Sleep through ``sleep`` unless testing mode is on."""
    if seconds > 0 and not _MODE.testing:
        sleep(seconds)


async def async_sleep_unless_testing(sleep: AsyncSleep, seconds: float) -> None:
    """Await ``sleep`` unless testing mode is on."""
    if seconds > 0 and not _MODE.testing:
        await sleep(seconds)



@runtime_checkable
class TimeSource(Protocol):
    """The two clocks a chain reads: intervals from ``monotonic``, stored stamps from ``wall``."""

    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never steps back (``time.monotonic``)."""
        ...

    def wall(self) -> float:
        """Seconds since the epoch (``time.time``); may jump when the host's clock is set."""
        ...


class SystemClock:
    """The host's clocks: ``time.monotonic`` and ``time.time``."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()


class _OneClock(NamedTuple):
    """A bare callable serving as both clocks (a test's fake clock)."""

    read: Clock

    def monotonic(self) -> float:
        return self.read()

    def wall(self) -> float:
        return self.read()


def time_source(clock: TimeSource | Clock | None) -> TimeSource:
    """``clock`` as a :class:`TimeSource`: the system's when ``None``; a bare callable is both."""
    if clock is None:
        return SystemClock()
    if isinstance(clock, TimeSource):
        return clock
    return _OneClock(clock)


default_sleep: Sleep = time.sleep
default_async_sleep: AsyncSleep = asyncio.sleep
