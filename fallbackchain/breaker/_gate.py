"""A circuit breaker gate: ask permission before an attempt, report its outcome after.

Each live tier owns a :class:`BreakerGate` around a ``pybreaker.CircuitBreaker`` (its
thresholds, name and state storage). The gate never uses ``CircuitBreaker.call()``, because
that holds a lock for the whole protected call (serialising callers), has no asyncio support,
counts cancellation as a failure, and lets any number of half-open trials through. Instead:

* :meth:`BreakerGate.acquire` returns a :class:`Permit` or ``None`` (refused), taking a lock
  only for the few microseconds of the state check;
* the caller runs the attempt (a whole stream, in a thread or a task) without any lock;
* :meth:`Permit.success`, :meth:`Permit.failure` or :meth:`Permit.release` (neutral: the
  consumer cancelled, broke early, or the request was the caller's own mistake) settle it.

Half-open lets exactly **one** probe through; everyone else is refused until it settles (or
its lease, ``probe_lease`` seconds, runs out). Time comes from the injected ``clock``.

**Doubt limits concurrency.** A closed breaker is *trusted* once an attempt has succeeded
(or produced content, :meth:`Permit.vouch`) and until one fails; a new breaker starts in
doubt. Trusted, it admits any number of attempts. In doubt, it admits an attempt only while
``failures + trials in flight < fail_max`` (each such permit is a *trial*, holding a leased
slot until it settles or vouches), and answers :data:`BUSY` otherwise: "ask again shortly"
(:meth:`BreakerGate.wait` waits for a change). So however many callers (or processes, with a
shared store) arrive at once, an upstream that never answered gets at most ``fail_max``
attempts before the breaker opens, not one per caller.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Final, Literal, Protocol, TypeVar, runtime_checkable

from .._optional import pybreaker_without_redis

# pybreaker would import the redis client (~160 ms, and OpenTelemetry with redis >= 8) for a
# storage this module never uses; see _optional for how that is avoided and why it is safe.
with pybreaker_without_redis():
    import pybreaker

__all__ = [
    "BUSY",
    "AsyncGateStore",
    "BreakerGate",
    "BreakerState",
    "Busy",
    "GateStore",
    "MemoryGateStore",
    "Permit",
    "StateChangeCallback",
]

logger = logging.getLogger("fallbackchain.breaker")

BreakerState = Literal["closed", "open", "half-open"]


class StateChangeCallback(Protocol):
    """Called (outside any lock) after a gate changes state."""

    def __call__(self, name: str, old: BreakerState, new: BreakerState) -> None: ...


class Busy(enum.Enum):
    """The type of :data:`BUSY`."""

    BUSY = "busy"


BUSY: Final = Busy.BUSY
""":meth:`BreakerGate.acquire`'s answer when a breaker in doubt has every trial slot taken:
not refused for good, ask again shortly (the breaker may be trusted, or open, by then)."""


class Permit:
    """Permission for one attempt. Settle it exactly once; later calls are ignored.

    ``probe``: the one half-open trial. ``trial``: admitted while the breaker was in doubt.
    Both hold a slot named by ``token``; a normal permit (trusted breaker) has no token.
    """

    __slots__ = ("_gate", "_settled", "_vouched", "probe", "token", "trial")

    def __init__(
        self, gate: BreakerGate, *, probe: bool, token: str | None = None, trial: bool = False
    ) -> None:
        self._gate = gate
        self.probe = probe
        self.trial = trial
        self.token = token  # names this permit's slot: tells a stale probe from the current one
        self._settled = False
        self._vouched = not trial

    def vouch(self) -> None:
        """The attempt produced content: a trial frees its slot and its breaker becomes trusted.

        A no-op for other permits. Call it at the first content; it lets waiting callers in
        without waiting for the whole answer. The permit still has to be settled (a later
        failure still counts).
        """
        if self._claim_vouch():
            self._gate._store.record_vouch(token=self.token)
            self._gate._after_step(None)

    async def avouch(self) -> None:
        """:meth:`vouch` without blocking the event loop on a shared store."""
        if self._claim_vouch():
            await self._gate._astore.arecord_vouch(token=self.token)
            self._gate._after_step(None)

    def success(self) -> None:
        """The attempt succeeded: reset the failure count; a probe closes the breaker."""
        if self._claim_settle():
            gate = self._gate
            gate._after_step(gate._store.record_success(probe=self.probe, token=self.token))

    async def asuccess(self) -> None:
        """:meth:`success` without blocking the event loop on a shared store."""
        if self._claim_settle():
            gate = self._gate
            gate._after_step(await gate._astore.arecord_success(probe=self.probe, token=self.token))

    def failure(self) -> bool:
        """The attempt failed: count it; at ``fail_max`` (or a failed probe) the breaker opens.

        Returns ``True`` when this failure opened the breaker.
        """
        if not self._claim_settle():
            return False
        now, fail_max = self._gate._failure_args()
        step = self._gate._store.record_failure
        return self._gate._after_step(step(now, fail_max, probe=self.probe, token=self.token))

    async def afailure(self) -> bool:
        """:meth:`failure` without blocking the event loop on a shared store."""
        if not self._claim_settle():
            return False
        now, fail_max = self._gate._failure_args()
        step = self._gate._astore.arecord_failure
        return self._gate._after_step(await step(now, fail_max, probe=self.probe, token=self.token))

    def release(self) -> None:
        """Neither success nor failure (cancelled, closed early, caller's error)."""
        if self._claim_settle():
            self._gate._store.record_release(probe=self.probe, token=self.token)
            self._gate._after_step(None)

    async def arelease(self) -> None:
        """:meth:`release` without blocking the event loop on a shared store."""
        if self._claim_settle():
            await self._gate._astore.arecord_release(probe=self.probe, token=self.token)
            self._gate._after_step(None)

    # The decisions shared by each sync/async pair above, which differ only in the store call.

    def _claim_settle(self) -> bool:
        """True the first time: this call settles the permit; later calls are ignored."""
        if self._settled:
            return False
        self._settled = True
        return True

    def _claim_vouch(self) -> bool:
        """True when this call vouches: a trial, not settled and not vouched yet."""
        if self._vouched or self._settled:
            return False
        self._vouched = True
        return True


Grant = Literal["normal", "trial", "probe", "busy"] | None
Transition = tuple[BreakerState, BreakerState]
R = TypeVar("R")


@runtime_checkable
class GateStore(Protocol):
    """Where a gate's state lives. Each method is **one atomic step** across every sharer.

    :class:`MemoryGateStore` keeps it in this process; a shared store (Redis) implements the
    same steps atomically for many processes. Stores are ``pybreaker.CircuitBreakerStorage``
    objects too, so pybreaker's own view (``state``, ``counter``, ``opened_at``) stays true.
    """

    def current_state(self) -> BreakerState:
        """The state now."""
        ...

    def failures(self) -> int:
        """Consecutive failures counted since the last success."""
        ...

    def try_acquire(
        self,
        now: float,
        reset_timeout: float,
        probe_lease: float,
        *,
        fail_max: int,
        token: str,
        trial_lease: float,
    ) -> tuple[Grant, Transition | None]:
        """Decide one admission; ``token`` names the slot if a trial or probe is granted.

        Closed and trusted: ``"normal"``. Closed in doubt: ``"trial"`` while
        ``failures + live trials < fail_max`` (the trial's slot lapses at
        ``now + trial_lease``), else ``"busy"``. Open: ``None`` until ``reset_timeout``, then
        half-open. Half-open: one ``"probe"`` per ``probe_lease``, else ``None``.
        """
        ...

    def record_success(self, *, probe: bool, token: str | None = None) -> Transition | None:
        """Reset the failure count and trust the breaker; a current probe closes it.

        A probe whose slot has since passed to another probe (another ``token``) is stale
        and settles as a normal attempt. A trial frees its slot.
        """
        ...

    def record_failure(
        self, now: float, fail_max: int, *, probe: bool, token: str | None = None
    ) -> Transition | None:
        """Count a failure and doubt the breaker; a trial frees its slot.

        Opens at ``fail_max`` while closed, or when a (current) probe fails.
        """
        ...

    def record_release(self, *, probe: bool, token: str | None = None) -> None:
        """Neutral end of an attempt: a (current) probe or a trial frees its slot."""
        ...

    def record_vouch(self, *, token: str | None) -> None:
        """A trial produced content: it frees its slot, and a closed breaker becomes trusted."""
        ...


@runtime_checkable
class AsyncGateStore(Protocol):
    """The awaitable twin of :class:`GateStore`'s atomic steps (for asyncio chains)."""

    async def atry_acquire(
        self,
        now: float,
        reset_timeout: float,
        probe_lease: float,
        *,
        fail_max: int,
        token: str,
        trial_lease: float,
    ) -> tuple[Grant, Transition | None]:
        """See :meth:`GateStore.try_acquire`."""
        ...

    async def arecord_success(self, *, probe: bool, token: str | None = None) -> Transition | None:
        """See :meth:`GateStore.record_success`."""
        ...

    async def arecord_failure(
        self, now: float, fail_max: int, *, probe: bool, token: str | None = None
    ) -> Transition | None:
        """See :meth:`GateStore.record_failure`."""
        ...

    async def arecord_release(self, *, probe: bool, token: str | None = None) -> None:
        """See :meth:`GateStore.record_release`."""
        ...

    async def arecord_vouch(self, *, token: str | None) -> None:
        """See :meth:`GateStore.record_vouch`."""
        ...


class _SyncAsAsync:
    """Adapts an in-memory (never blocking) :class:`GateStore` to :class:`AsyncGateStore`."""

    __slots__ = ("_store",)

    def __init__(self, store: GateStore) -> None:
        self._store = store

    async def atry_acquire(
        self,
        now: float,
        reset_timeout: float,
        probe_lease: float,
        *,
        fail_max: int,
        token: str,
        trial_lease: float,
    ) -> tuple[Grant, Transition | None]:
        return self._store.try_acquire(
            now, reset_timeout, probe_lease, fail_max=fail_max, token=token, trial_lease=trial_lease
        )

    async def arecord_success(self, *, probe: bool, token: str | None = None) -> Transition | None:
        return self._store.record_success(probe=probe, token=token)

    async def arecord_failure(
        self, now: float, fail_max: int, *, probe: bool, token: str | None = None
    ) -> Transition | None:
        return self._store.record_failure(now, fail_max, probe=probe, token=token)

    async def arecord_release(self, *, probe: bool, token: str | None = None) -> None:
        self._store.record_release(probe=probe, token=token)

    async def arecord_vouch(self, *, token: str | None) -> None:
        self._store.record_vouch(token=token)


class MemoryGateStore(pybreaker.CircuitMemoryStorage):
    """The in-process store: pybreaker's memory storage plus probe and trial slots.

    A short lock guards these few field updates; it is never held across a call.
    """

    def __init__(self) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._lock = threading.Lock()
        self._probe_until: float | None = None
        self._probe_token: str | None = None
        self._trials: dict[str, float] = {}  # token -> lease end
        self.trusted = False

    def current_state(self) -> BreakerState:
        return _as_state(self.state)

    def failures(self) -> int:
        return int(self.counter)

    def try_acquire(
        self,
        now: float,
        reset_timeout: float,
        probe_lease: float,
        *,
        fail_max: int,
        token: str,
        trial_lease: float,
    ) -> tuple[Grant, Transition | None]:
        with self._lock:
            state = _as_state(self.state)
            if state == "closed":
                if self.trusted:
                    return "normal", None
                trials = self._trials
                for stale in [t for t, until in trials.items() if until <= now]:
                    del trials[stale]  # a trial whose holder vanished without settling
                if self.counter + len(trials) >= fail_max:
                    return "busy", None
                trials[token] = now + trial_lease
                return "trial", None
            changed: Transition | None = None
            if state == "open":
                opened_at = self.opened_at
                since = now - opened_at.timestamp() if opened_at is not None else float("inf")
                if since < reset_timeout:
                    return None, None
                self.state = "half-open"
                self._probe_until = self._probe_token = None
                changed = ("open", "half-open")
            if self._probe_until is not None and now < self._probe_until:
                return None, changed
            self._probe_until = now + probe_lease
            self._probe_token = token
            return "probe", changed

    def _settle_slot(self, probe: bool, token: str | None) -> bool:
        """Free the permit's slot; True when it was the current probe (no token: trusted)."""
        if token is not None:
            self._trials.pop(token, None)
        if probe and (token is None or self._probe_token == token):
            self._probe_until = self._probe_token = None
            return True
        return False

    def record_success(self, *, probe: bool, token: str | None = None) -> Transition | None:
        with self._lock:
            self.reset_counter()
            self.trusted = True
            if not self._settle_slot(probe, token):
                return None
            old = _as_state(self.state)
            if old == "closed":
                return None
            self.state = "closed"
            return (old, "closed")

    def record_failure(
        self, now: float, fail_max: int, *, probe: bool, token: str | None = None
    ) -> Transition | None:
        with self._lock:
            self.increment_counter()
            self.trusted = False
            old = _as_state(self.state)
            if not self._settle_slot(probe, token) and not (
                old == "closed" and self.counter >= fail_max
            ):
                return None
            if old == "open":
                return None
            self.opened_at = datetime.fromtimestamp(now, tz=UTC)
            self.state = "open"
            return (old, "open")

    def record_release(self, *, probe: bool, token: str | None = None) -> None:
        if probe or token is not None:
            with self._lock:
                self._settle_slot(probe, token)

    def record_vouch(self, *, token: str | None) -> None:
        with self._lock:
            if token is not None:
                self._trials.pop(token, None)
            if _as_state(self.state) == "closed":
                self.trusted = True


class BreakerGate:
    """One tier's breaker. Thread-safe; usable from threads and asyncio tasks alike.

    ``store`` holds the state (default: a fresh :class:`MemoryGateStore`); pass a shared one
    to share a breaker between chains or processes.
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
        trial_lease: float | None = None,
        on_state_change: StateChangeCallback | None = None,
    ) -> None:
        self._store: GateStore = store if store is not None else MemoryGateStore()
        self._astore: AsyncGateStore = (
            self._store if isinstance(self._store, AsyncGateStore) else _SyncAsAsync(self._store)
        )
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            name=name,
            state_storage=(
                self._store if isinstance(self._store, pybreaker.CircuitBreakerStorage) else None
            ),
        )
        self.name = name
        self._clock = clock
        self._fail_max = fail_max
        self._reset_timeout = reset_timeout
        self._probe_lease = probe_lease if probe_lease is not None else max(reset_timeout, 1.0)
        self._trial_lease = trial_lease if trial_lease is not None else self._probe_lease
        self._on_state_change = on_state_change
        self._token_prefix = secrets.token_hex(8)  # unique across processes sharing a store
        self._token_serial = itertools.count()  # next() is atomic: unique within this gate
        self._changed = threading.Condition()
        self._generation = 0
        self._sync_waiters = 0
        self._async_waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = set()

    @property
    def state(self) -> BreakerState:
        """``"closed"``, ``"open"`` or ``"half-open"``."""
        return self._store.current_state()

    @property
    def fail_counter(self) -> int:
        """Consecutive failures counted since the last success."""
        return self._store.failures()

    def __repr__(self) -> str:
        return f"<BreakerGate {self.name!r} {self.state} failures={self.fail_counter}>"

    def acquire(self) -> Permit | Busy | None:
        """A permit for one attempt, :data:`BUSY`, or ``None`` when the breaker refuses it.

        Closed and trusted: always a permit. Closed in doubt: a trial permit while
        ``failures + trials in flight < fail_max``, else :data:`BUSY` (ask again shortly).
        Open: refused until ``reset_timeout`` has passed since it opened; then it turns
        half-open. Half-open: one probe permit at a time.
        """
        token = self._new_token()
        grant, changed = self._try_acquire(self._store.try_acquire, token)
        return self._permit(grant, changed, token)

    async def aacquire(self) -> Permit | Busy | None:
        """:meth:`acquire` without blocking the event loop on a shared store."""
        token = self._new_token()
        grant, changed = await self._try_acquire(self._astore.atry_acquire, token)
        return self._permit(grant, changed, token)

    def _try_acquire(self, step: Callable[..., R], token: str) -> R:
        """Call ``try_acquire``, or ``atry_acquire`` (``R``: its awaitable), with our settings."""
        return step(
            self._clock(),
            self._reset_timeout,
            self._probe_lease,
            fail_max=self._fail_max,
            token=token,
            trial_lease=self._trial_lease,
        )

    def _new_token(self) -> str:
        """A name for the slot this acquire may take: no system call per attempt."""
        return f"{self._token_prefix}-{next(self._token_serial)}"

    def _permit(self, grant: Grant, changed: Transition | None, token: str) -> Permit | Busy | None:
        if changed:
            self._notify(changed)
        if grant is None:
            return None
        if grant == "normal":
            return Permit(self, probe=False)
        if grant == "busy":
            return BUSY
        return Permit(self, probe=grant == "probe", token=token, trial=grant == "trial")

    def _failure_args(self) -> tuple[float, int]:
        """The ``now`` and ``fail_max`` a store's failure step takes."""
        return self._clock(), self._fail_max

    def _after_step(self, changed: Transition | None) -> bool:
        """After a permit's store step: report a transition, wake waiters; True if it opened."""
        self._notify(changed)
        self._wake()
        return _opened(changed)

    # -- waiting while busy -----------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Changes whenever a permit of this gate settles or vouches in this process.

        Read it before :meth:`acquire`; pass it to :meth:`wait` as ``since``, so that a
        change in between is not missed.
        """
        return self._generation

    def wait(self, seconds: float, *, since: int | None = None) -> None:
        """Block until a permit of this gate settles or vouches in this process, or ``seconds``.

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

    def _notify(self, changed: Transition | None) -> None:
        if changed is None:
            return
        old, new = changed
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


def _opened(changed: Transition | None) -> bool:
    """True when a settle step's transition opened the breaker."""
    return changed is not None and changed[1] == "open"


def _as_state(raw: object) -> BreakerState:
    if raw in ("closed", "open", "half-open"):
        return raw
    if isinstance(raw, bytes):
        return _as_state(raw.decode())
    raise ValueError(f"unknown breaker state {raw!r}")
