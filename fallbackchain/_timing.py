"""Clocks, sleeps, and testing mode.

Every wait in fallbackchain goes through an injected ``clock`` (seconds, float) and ``sleep``
(sync) or ``async_sleep``, so tests can run backoff, breaker timers and deadlines without
waiting. :func:`set_testing` is for *your* tests of code that uses a chain: while it is on,
backoff sleeps are skipped (the chain still makes every attempt it would make).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

__all__ = ["AsyncSleep", "Clock", "Sleep", "is_testing", "set_testing"]

Clock = Callable[[], float]
Sleep = Callable[[float], None]
AsyncSleep = Callable[[float], Awaitable[None]]


@dataclass(slots=True)
class _Mode:
    testing: bool = False


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


default_clock: Clock = time.time
default_sleep: Sleep = time.sleep
default_async_sleep: AsyncSleep = asyncio.sleep
