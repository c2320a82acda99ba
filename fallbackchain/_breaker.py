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
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Literal, Protocol, runtime_checkable

import pybreaker

__all__ = [
    "AsyncGateStore",
    "BreakerGate",
    "BreakerState",
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


class Permit:
    """Permission for one attempt. Settle it exactly once; later calls are ignored."""

    __slots__ = ("_gate", "_settled", "probe", "token")

    def __init__(self, gate: BreakerGate, *, probe: bool, token: float | None = None) -> None:
        self._gate = gate
        self.probe = probe
        self.token = token  # a probe's lease end as granted: tells a stale probe from the current
        self._settled = False

    def success(self) -> None:
        """The attempt succeeded: reset the failure count; a probe closes the breaker."""
        if not self._settled:
            self._settled = True
            self._gate._on_success(self)

    def failure(self) -> bool:
        """The attempt failed: count it; at ``fail_max`` (or a failed probe) the breaker opens.

        Returns ``True`` when this failure opened the breaker.
        """
        if self._settled:
            return False
        self._settled = True
        return self._gate._on_failure(self)

    def release(self) -> None:
        """Neither success nor failure (cancelled, closed early, caller's error)."""
        if not self._settled:
            self._settled = True
            self._gate._on_release(self)

    async def asuccess(self) -> None:
        """:meth:`success` without blocking the event loop on a shared store."""
        if not self._settled:
            self._settled = True
            self._gate._notify(
                await self._gate._astore.arecord_success(probe=self.probe, token=self.token)
            )

    async def afailure(self) -> bool:
        """:meth:`failure` without blocking the event loop on a shared store."""
        if self._settled:
            return False
        self._settled = True
        gate = self._gate
        changed = await gate._astore.arecord_failure(
            gate._clock(), gate._fail_max, probe=self.probe, token=self.token
        )
        gate._notify(changed)
        return _opened(changed)

    async def arelease(self) -> None:
        """:meth:`release` without blocking the event loop on a shared store."""
        if not self._settled:
            self._settled = True
            await self._gate._astore.arecord_release(probe=self.probe, token=self.token)


Grant = Literal["normal", "probe"] | None
Transition = tuple[BreakerState, BreakerState]


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
        self, now: float, reset_timeout: float, probe_lease: float
    ) -> tuple[Grant, Transition | None]:
        """Grant a normal permit (closed), one probe (after ``reset_timeout``), or none."""
        ...

    def record_success(self, *, probe: bool, token: float | None = None) -> Transition | None:
        """Reset the failure count; a probe closes the breaker.

        ``token`` is the probe's lease end as granted (``now + probe_lease``): a probe whose
        slot has since passed to another probe is stale and settles as a normal attempt.
        """
        ...

    def record_failure(
        self, now: float, fail_max: int, *, probe: bool, token: float | None = None
    ) -> Transition | None:
        """Count a failure; open at ``fail_max`` while closed, or when a (current) probe fails."""
        ...

    def record_release(self, *, probe: bool, token: float | None = None) -> None:
        """Neutral end of an attempt: a (current) probe frees its slot, nothing is counted."""
        ...


@runtime_checkable
class AsyncGateStore(Protocol):
    """The awaitable twin of :class:`GateStore`'s atomic steps (for asyncio chains)."""

    async def atry_acquire(
        self, now: float, reset_timeout: float, probe_lease: float
    ) -> tuple[Grant, Transition | None]:
        """See :meth:`GateStore.try_acquire`."""
        ...

    async def arecord_success(
        self, *, probe: bool, token: float | None = None
    ) -> Transition | None:
        """See :meth:`GateStore.record_success`."""
        ...

    async def arecord_failure(
        self, now: float, fail_max: int, *, probe: bool, token: float | None = None
    ) -> Transition | None:
        """See :meth:`GateStore.record_failure`."""
        ...

    async def arecord_release(self, *, probe: bool, token: float | None = None) -> None:
        """See :meth:`GateStore.record_release`."""
        ...


class _SyncAsAsync:
    """Adapts an in-memory (never blocking) :class:`GateStore` to :class:`AsyncGateStore`."""

    __slots__ = ("_store",)

    def __init__(self, store: GateStore) -> None:
        self._store = store

    async def atry_acquire(
        self, now: float, reset_timeout: float, probe_lease: float
    ) -> tuple[Grant, Transition | None]:
        return self._store.try_acquire(now, reset_timeout, probe_lease)

    async def arecord_success(
        self, *, probe: bool, token: float | None = None
    ) -> Transition | None:
        return self._store.record_success(probe=probe, token=token)

    async def arecord_failure(
        self, now: float, fail_max: int, *, probe: bool, token: float | None = None
    ) -> Transition | None:
        return self._store.record_failure(now, fail_max, probe=probe, token=token)

    async def arecord_release(self, *, probe: bool, token: float | None = None) -> None:
        self._store.record_release(probe=probe, token=token)


class MemoryGateStore(pybreaker.CircuitMemoryStorage):
    """The in-process store: pybreaker's memory storage plus a probe slot, behind a short lock.

    The lock is held only for these few field updates, never across a call.
    """

    def __init__(self) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._lock = threading.Lock()
        self._probe_until: float | None = None

    def current_state(self) -> BreakerState:
        return _as_state(self.state)

    def failures(self) -> int:
        return int(self.counter)

    def try_acquire(
        self, now: float, reset_timeout: float, probe_lease: float
    ) -> tuple[Grant, Transition | None]:
        with self._lock:
            state = _as_state(self.state)
            if state == "closed":
                return "normal", None
            changed: Transition | None = None
            if state == "open":
                opened_at = self.opened_at
                since = now - opened_at.timestamp() if opened_at is not None else float("inf")
                if since < reset_timeout:
                    return None, None
                self.state = "half-open"
                self._probe_until = None
                changed = ("open", "half-open")
            if self._probe_until is not None and now < self._probe_until:
                return None, changed
            self._probe_until = now + probe_lease
            return "probe", changed

    def _current(self, probe: bool, token: float | None) -> bool:
        """A probe that still holds the slot (no token: trusted, as before tokens)."""
        return probe and (token is None or self._probe_until == token)

    def record_success(self, *, probe: bool, token: float | None = None) -> Transition | None:
        with self._lock:
            self.reset_counter()
            if not self._current(probe, token):
                return None
            self._probe_until = None
            old = _as_state(self.state)
            if old == "closed":
                return None
            self.state = "closed"
            return (old, "closed")

    def record_failure(
        self, now: float, fail_max: int, *, probe: bool, token: float | None = None
    ) -> Transition | None:
        with self._lock:
            self.increment_counter()
            old = _as_state(self.state)
            if self._current(probe, token):
                self._probe_until = None
            elif not (old == "closed" and self.counter >= fail_max):
                return None
            if old == "open":
                return None
            self.opened_at = datetime.fromtimestamp(now, tz=UTC)
            self.state = "open"
            return (old, "open")

    def record_release(self, *, probe: bool, token: float | None = None) -> None:
        if probe:
            with self._lock:
                if self._current(probe, token):
                    self._probe_until = None


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
        clock: Callable[[], float] = time.time,
        store: GateStore | None = None,
        probe_lease: float | None = None,
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
        self._on_state_change = on_state_change

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

    def acquire(self) -> Permit | None:
        """A permit for one attempt, or ``None`` when the breaker refuses it.

        Closed: always a permit. Open: refused until ``reset_timeout`` has passed since it
        opened; then it turns half-open. Half-open: one probe permit at a time.
        """
        now = self._clock()
        grant, changed = self._store.try_acquire(now, self._reset_timeout, self._probe_lease)
        return self._permit(now, grant, changed)

    async def aacquire(self) -> Permit | None:
        """:meth:`acquire` without blocking the event loop on a shared store."""
        now = self._clock()
        grant, changed = await self._astore.atry_acquire(
            now, self._reset_timeout, self._probe_lease
        )
        return self._permit(now, grant, changed)

    def _permit(self, now: float, grant: Grant, changed: Transition | None) -> Permit | None:
        if changed:
            self._notify(changed)
        if grant is None:
            return None
        if grant == "probe":  # the store recorded the lease end now + probe_lease: its token
            return Permit(self, probe=True, token=now + self._probe_lease)
        return Permit(self, probe=False)

    def _on_success(self, permit: Permit) -> None:
        self._notify(self._store.record_success(probe=permit.probe, token=permit.token))

    def _on_failure(self, permit: Permit) -> bool:
        changed = self._store.record_failure(
            self._clock(), self._fail_max, probe=permit.probe, token=permit.token
        )
        self._notify(changed)
        return _opened(changed)

    def _on_release(self, permit: Permit) -> None:
        self._store.record_release(probe=permit.probe, token=permit.token)

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


def _opened(changed: Transition | None) -> bool:
    """True when a settle step's transition opened the breaker."""
    return changed is not None and changed[1] == "open"


def _as_state(raw: object) -> BreakerState:
    if raw in ("closed", "open", "half-open"):
        return raw
    if isinstance(raw, bytes):
        return _as_state(raw.decode())
    raise ValueError(f"unknown breaker state {raw!r}")
