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
from typing import Literal, Protocol

import pybreaker

__all__ = ["BreakerGate", "BreakerState", "Permit", "StateChangeCallback"]

logger = logging.getLogger("fallbackchain.breaker")

BreakerState = Literal["closed", "open", "half-open"]


class StateChangeCallback(Protocol):
    """Called (outside any lock) after a gate changes state."""

    def __call__(self, name: str, old: BreakerState, new: BreakerState) -> None: ...


class Permit:
    """Permission for one attempt. Settle it exactly once; later calls are ignored."""

    __slots__ = ("_gate", "_settled", "probe")

    def __init__(self, gate: BreakerGate, *, probe: bool) -> None:
        self._gate = gate
        self.probe = probe
        self._settled = False

    def success(self) -> None:
        """The attempt succeeded: reset the failure count; a probe closes the breaker."""
        if not self._settled:
            self._settled = True
            self._gate._on_success(self)

    def failure(self) -> None:
        """The attempt failed: count it; at ``fail_max`` (or a failed probe) the breaker opens."""
        if not self._settled:
            self._settled = True
            self._gate._on_failure(self)

    def release(self) -> None:
        """Neither success nor failure (cancelled, closed early, caller's error)."""
        if not self._settled:
            self._settled = True
            self._gate._on_release(self)


class BreakerGate:
    """One tier's breaker. Thread-safe; usable from threads and asyncio tasks alike."""

    def __init__(
        self,
        name: str,
        *,
        fail_max: int,
        reset_timeout: float,
        clock: Callable[[], float] = time.time,
        storage: pybreaker.CircuitBreakerStorage | None = None,
        probe_lease: float | None = None,
        on_state_change: StateChangeCallback | None = None,
    ) -> None:
        self.breaker = pybreaker.CircuitBreaker(
            fail_max=fail_max,
            reset_timeout=reset_timeout,
            name=name,
            state_storage=storage or pybreaker.CircuitMemoryStorage(pybreaker.STATE_CLOSED),
        )
        self.name = name
        self._storage = self.breaker._state_storage
        self._clock = clock
        self._lock = threading.Lock()
        self._probe_lease = probe_lease if probe_lease is not None else max(reset_timeout, 1.0)
        self._probe_until: float | None = None
        self._on_state_change = on_state_change

    # -- reading --------------------------------------------------------------------------

    @property
    def state(self) -> BreakerState:
        """The stored state: ``"closed"``, ``"open"`` or ``"half-open"``."""
        return _as_state(self._storage.state)

    @property
    def fail_counter(self) -> int:
        """Consecutive failures counted since the last success."""
        return int(self._storage.counter)

    def __repr__(self) -> str:
        return f"<BreakerGate {self.name!r} {self.state} failures={self.fail_counter}>"

    # -- permission ----------------------------------------------------------------------

    def acquire(self) -> Permit | None:
        """A permit for one attempt, or ``None`` when the breaker refuses it.

        Closed: always a permit. Open: refused until ``reset_timeout`` has passed since it
        opened; then it turns half-open. Half-open: one probe permit at a time.
        """
        changed: tuple[BreakerState, BreakerState] | None = None
        with self._lock:
            state = self.state
            if state == "closed":
                return Permit(self, probe=False)
            now = self._clock()
            if state == "open":
                opened_at = self._storage.opened_at
                since = now - opened_at.timestamp() if opened_at is not None else float("inf")
                if since < self.breaker.reset_timeout:
                    return None
                self._set_state("half-open")
                changed = ("open", "half-open")
                self._probe_until = None
            if self._probe_until is not None and now < self._probe_until:
                permit = None
            else:
                self._probe_until = now + self._probe_lease
                permit = Permit(self, probe=True)
        if changed:
            self._notify(*changed)
        return permit

    # -- settling (called by Permit) ---------------------------------------------------------

    def _on_success(self, permit: Permit) -> None:
        changed: tuple[BreakerState, BreakerState] | None = None
        with self._lock:
            self._storage.reset_counter()
            if permit.probe:
                self._probe_until = None
                old = self.state
                if old != "closed":
                    self._set_state("closed")
                    changed = (old, "closed")
        if changed:
            self._notify(*changed)

    def _on_failure(self, permit: Permit) -> None:
        changed: tuple[BreakerState, BreakerState] | None = None
        with self._lock:
            self._storage.increment_counter()
            old = self.state
            if permit.probe:
                self._probe_until = None
                if old != "open":
                    self._open()
                    changed = (old, "open")
            elif old == "closed" and self._storage.counter >= self.breaker.fail_max:
                self._open()
                changed = (old, "open")
        if changed:
            self._notify(*changed)

    def _on_release(self, permit: Permit) -> None:
        if permit.probe:
            with self._lock:
                self._probe_until = None

    # -- helpers -------------------------------------------------------------------------

    def _open(self) -> None:
        self._storage.opened_at = datetime.fromtimestamp(self._clock(), tz=UTC)
        self._set_state("open")

    def _set_state(self, state: BreakerState) -> None:
        self._storage.state = state
        if state == "closed":
            self._storage.reset_counter()

    def _notify(self, old: BreakerState, new: BreakerState) -> None:
        logger.info("breaker %s: %s -> %s", self.name, old, new)
        if self._on_state_change is None:
            return
        try:
            self._on_state_change(self.name, old, new)
        except Exception:  # a listener must never break a request
            logger.exception("breaker state-change listener failed (ignored)")


def _as_state(raw: object) -> BreakerState:
    if raw in ("closed", "open", "half-open"):
        return raw
    if isinstance(raw, bytes):
        return _as_state(raw.decode())
    raise ValueError(f"unknown breaker state {raw!r}")
