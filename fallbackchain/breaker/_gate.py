"""A circuit breaker gate: ask permission before an attempt, report its outcome after.

Each live tier owns a :class:`BreakerGate`. Its state lives in a store (``_stores``): in
this process that is pybreaker's breaker and storage (the transitions, the counters, the
listeners); shared between processes, one Redis hash. The gate adds what pybreaker's
``CircuitBreaker.call()`` cannot give, because ``call()`` holds a lock for the whole protected
call (serialising callers), has no asyncio support, counts cancellation as a failure, and lets
any number of half-open attempts through. Instead:

* :meth:`BreakerGate.acquire` (or ``await`` :meth:`~BreakerGate.aacquire`) returns a
  :class:`Permit`, :data:`BUSY` or ``None`` (refused), in one short store step;
* the caller runs the attempt (a whole stream, in a thread or a task) without any lock;
* :meth:`Permit.success`, :meth:`Permit.failure` or :meth:`Permit.release` (neutral: the
  consumer cancelled, broke early, or the request was the caller's own mistake) end it.

Half-open lets exactly **one** probe through; everyone else is refused until it ends (or its
lease, ``probe_lease`` seconds, runs out). Time comes from the injected ``clock``.

**An unproven breaker limits concurrency.** A closed breaker is *proven* once an attempt has
succeeded (or produced content, :meth:`Permit.first_content`) and until one fails; a new
breaker starts unproven. Proven, it admits any number of attempts. Unproven, it admits an
attempt only while ``failures + limited attempts in flight < fail_max`` (each such permit is
*limited*, holding a leased slot until it ends or produces content), and answers
:data:`BUSY` otherwise: "ask again shortly" (:meth:`BreakerGate.wait` waits for a change). So
however many callers (or processes, with a shared store) arrive at once, an upstream that
never answered gets at most ``fail_max`` attempts before the breaker opens, not one per caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from typing import Protocol

from ._permit import BUSY, Busy, Permit
from ._stores import (
    BreakerState,
    Decision,
    GateSettings,
    GateStore,
    MemoryGateStore,
    Step,
    StepKind,
    Transition,
)

__all__ = ["BreakerGate", "StateChangeCallback"]

logger = logging.getLogger("fallbackchain.breaker")

_UNTIMED: tuple[StepKind, ...] = ("success", "release", "first_content")
_IN_PLACE = MemoryGateStore.aapply  # an aapply that never awaits anything


class StateChangeCallback(Protocol):
    """Called (outside any lock) after a gate changes state."""

    def __call__(self, name: str, old: BreakerState, new: BreakerState) -> None: ...


class BreakerGate:
    """One tier's breaker. Thread-safe; usable from threads and asyncio tasks alike.

    ``store`` holds the state (default: a fresh :class:`MemoryGateStore`); pass a shared one
    to share a breaker between chains or processes. ``on_state_change`` hears each transition
    this gate's steps make.
    """

    def __init__(
        self,
        name: str,
        *,
        fail_max: int,
        reset_timeout: float,
        clock: Callable[[], float] = time.monotonic,
        store: GateStore | None = None,
        probe_lease: float | None = None,
        limited_lease: float | None = None,
        on_state_change: StateChangeCallback | None = None,
    ) -> None:
        self.name = name
        self._store: GateStore = store if store is not None else MemoryGateStore()
        self._clock = clock
        probe_lease = probe_lease if probe_lease is not None else max(reset_timeout, 1.0)
        self._settings = GateSettings(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            probe_lease=probe_lease,
            limited_lease=limited_lease if limited_lease is not None else probe_lease,
        )
        self._normal_steps = {k: Step(k, self._settings) for k in _UNTIMED}
        self._on_state_change = on_state_change
        self._token_prefix = secrets.token_hex(8)  # unique across processes sharing a store
        self._token_serial = itertools.count()  # next() is atomic: unique within this gate
        self._changed = threading.Condition()
        self._generation = 0
        self._sync_waiters = 0
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()
        # When this process saw the breaker open (this gate's clock), until it saw another
        # transition: backoff sleeps for this gate's tier end when it opens.
        self._opened_at: float | None = None
        self._openings = 0  # openings seen here: a sleeper wakes for the next one
        self._open_sleepers: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    @property
    def state(self) -> BreakerState:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        return self._store.current_state()

    @property
    def fail_counter(self) -> int:
        """Consecutive failures counted since the last success."""
        return self._store.failures()

    @property
    def store(self) -> GateStore:
        """Where this gate's state lives (a :class:`MemoryGateStore` has pybreaker's breaker)."""
        return self._store

    def __repr__(self) -> str:
        return f"<BreakerGate {self.name!r} {self.state} failures={self.fail_counter}>"

    def acquire(self) -> Permit | Busy | None:
        """A permit for one attempt, :data:`BUSY`, or ``None`` when the breaker refuses it.

        Closed and proven: always a permit. Closed and unproven: a limited permit while
        ``failures + limited attempts in flight < fail_max``, else :data:`BUSY` (ask again
        shortly). Open: refused until ``reset_timeout`` has passed since it opened; then it
        turns half-open. Half-open: one probe permit at a time.
        """
        ask = self._ask()
        return self._answer(ask, self._store.apply(ask))

    async def aacquire(self) -> Permit | Busy | None:
        """:meth:`acquire` without blocking the event loop on a shared store."""
        ask = self._ask()
        return self._answer(ask, await self._store.aapply(ask))

    @property
    def in_place(self) -> bool:
        """True when the store takes a step in place, without I/O (the in-process store).

        Then :meth:`acquire` and a permit's sync methods may run on an event loop: their
        awaited twins would never suspend. Asked of the store's class each time: a store may
        be swapped, or subclassed to wait.
        """
        return type(self._store).aapply is _IN_PLACE

    def report(self, kind: StepKind, permit: Permit) -> bool:
        """Report ``permit``'s end (or first content) to the store; True if the breaker opened.

        What :class:`Permit` calls; callers use the permit's methods.
        """
        return self._after(self._store.apply(self._permit_step(kind, permit)))

    async def areport(self, kind: StepKind, permit: Permit) -> bool:
        """:meth:`report` without blocking the event loop on a shared store."""
        return self._after(await self._store.aapply(self._permit_step(kind, permit)))

    def _ask(self) -> Step:
        # The token names the slot this ask may take: no system call per attempt.
        token = f"{self._token_prefix}-{next(self._token_serial)}"
        return Step("ask", self._settings, self._clock(), token)

    def _permit_step(self, kind: StepKind, permit: Permit) -> Step:
        if kind == "failure":
            return Step(kind, self._settings, self._clock(), permit.token, permit.probe)
        if permit.token is None:  # a normal permit's steps are the same every time
            return self._normal_steps[kind]
        return Step(kind, self._settings, None, permit.token, permit.probe)

    def _answer(self, ask: Step, decision: Decision) -> Permit | Busy | None:
        if decision.changed is not None:
            self._notify(decision.changed)
        admission = decision.admission
        if admission is None:
            return None
        # Not open, whatever this process saw before (a shared store's state restored after
        # its outage reports no transition): a sleep may not end early on its account.
        self._opened_at = None
        if admission == "normal":
            return Permit(self, probe=False)
        if admission == "busy":
            return BUSY
        return Permit(
            self, probe=admission == "probe", token=ask.token, limited=admission == "limited"
        )

    def _after(self, decision: Decision) -> bool:
        """After a permit's step: report a transition, wake waiters; True if it opened."""
        self._wake()
        if decision.changed is None:
            return False
        self._notify(decision.changed)
        return decision.changed[1] == "open"

    # -- waiting while busy -----------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Changes whenever a permit of this gate ends or sees content in this process.

        Read it before :meth:`acquire`; pass it to :meth:`wait` as ``since``, so that a
        change in between is not missed.
        """
        return self._generation

    def wait(self, seconds: float, *, since: int | None = None) -> None:
        """Block until a permit of this gate ends or sees content in this process, or ``seconds``.

        What a caller told :data:`BUSY` does before asking again. Returns at once when
        :attr:`generation` is no longer ``since``. It waits for other attempts, so it is a
        real wait (not an injected sleep); ``seconds`` bounds it, for changes made by other
        processes, which send no wake-up.
        """
        with self._changed:
            self._sync_waiters += 1
            try:
                if since is None or self._generation == since:
                    self._changed.wait(seconds)
            finally:
                self._sync_waiters -= 1

    async def await_change(self, seconds: float, *, since: int | None = None) -> None:
        """:meth:`wait` for asyncio: the event loop runs meanwhile."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        entry = (loop, waiter)
        with self._changed:
            self._async_waiters.add(entry)
        try:
            if since is None or self._generation == since:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(seconds):
                        await waiter
        finally:
            with self._changed:
                self._async_waiters.discard(entry)

    def _wake(self) -> None:
        """Bump :attr:`generation`; wake every waiting caller (cheap when none waits).

        A waiter registers before it compares the generation, and this bumps it before it
        looks for waiters, so a change is either seen by the comparison or woken here.
        """
        self._generation += 1
        if not (self._sync_waiters or self._async_waiters):
            return
        with self._changed:
            self._changed.notify_all()
            for loop, waiter in self._async_waiters:
                with contextlib.suppress(RuntimeError):  # that loop is closed: nothing waits
                    loop.call_soon_threadsafe(_resolve, waiter)

    # -- backoff sleeps that end when the breaker opens -------------------------------------

    def sleep_unless_open(self, seconds: float) -> float:
        """Sleep ``seconds`` (real time), or less: until this process sees the breaker open.

        What a request does before it retries this gate's tier: once the breaker opens, the
        retry would be refused, so the rest of the wait is worth nothing. Returns at once while
        the breaker is open as this process saw it: it opened here less than ``reset_timeout``
        ago (nothing can close it sooner) and no transition was seen since. An opening by
        another process sharing the store sends no wake-up: the sleep runs its course.
        Returns the seconds that were left when it woke early (0.0: it slept them all).
        """
        until = time.monotonic() + seconds
        with self._changed:
            if not self._seen_open():
                openings = self._openings
                if not self._changed.wait_for(lambda: self._openings != openings, seconds):
                    return 0.0
        return max(until - time.monotonic(), 0.0)

    async def asleep_unless_open(self, seconds: float) -> float:
        """:meth:`sleep_unless_open` for asyncio: the event loop runs meanwhile."""
        loop = asyncio.get_running_loop()
        until = loop.time() + seconds
        waiter: asyncio.Future[None] = loop.create_future()
        entry = (loop, waiter)
        with self._changed:
            self._open_sleepers.add(entry)
        try:
            if not self._seen_open():
                try:
                    async with asyncio.timeout(seconds):
                        await waiter
                except TimeoutError:
                    return 0.0
        finally:
            with self._changed:
                self._open_sleepers.discard(entry)
        return max(until - loop.time(), 0.0)

    def _seen_open(self) -> bool:
        at = self._opened_at
        return at is not None and self._clock() - at < self._settings.reset_timeout

    def _opened(self) -> None:
        """Record that the breaker opened, seen here; wake whoever sleeps on this gate."""
        with self._changed:  # a sleeper checks and starts waiting holding it: none is missed
            self._opened_at = self._clock()
            self._openings += 1
            self._changed.notify_all()  # AwaitSlot's waiters too: their ask would be refused
            for loop, waiter in self._open_sleepers:
                with contextlib.suppress(RuntimeError):  # that loop is closed: nothing waits
                    loop.call_soon_threadsafe(_resolve, waiter)

    def _notify(self, changed: Transition) -> None:
        old, new = changed
        if new == "open":
            self._opened()
        else:
            with self._changed:
                self._opened_at = None
        logger.info("breaker %s: %s -> %s", self.name, old, new)
        if self._on_state_change is None:
            return
        try:
            self._on_state_change(self.name, old, new)
        except Exception:  # a listener must never break a request
            logger.exception("breaker state-change listener failed (ignored)")


def _resolve(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)
