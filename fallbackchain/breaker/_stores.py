"""Where a breaker's state lives: the steps a store takes, and the in-process store.

A gate never changes its state itself: it hands its store one :class:`Step` at a time, and
each step is **atomic** across everything sharing the store (threads here; processes, for
the Redis store). A store answers a :class:`Decision`: what an ``"ask"`` admits, and the
transition the step made, if any.

:class:`MemoryGateStore` is pybreaker: a ``pybreaker.CircuitBreaker`` over pybreaker's memory
storage holds the state, the failure count and the opening time, makes every transition
(``open()``, ``half_open()``, ``close()``) and tells its listeners about them. The store adds
what pybreaker lacks: the probe's slot, the limited attempts' slots, and whether the breaker
is proven (see the glossary in ``fallbackchain.breaker``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal, NamedTuple, Protocol, runtime_checkable

from .._optional import pybreaker_without_redis

# pybreaker would import the redis client (~160 ms, and OpenTelemetry with redis >= 8) for a
# storage this module never uses; see _optional for how that is avoided and why it is safe.
with pybreaker_without_redis():
    import pybreaker

__all__ = [
    "Admission",
    "BreakerState",
    "Decision",
    "GateSettings",
    "GateStore",
    "MemoryGateStore",
    "Step",
    "StepKind",
    "Transition",
]

BreakerState = Literal["closed", "open", "half-open"]
Transition = tuple[BreakerState, BreakerState]

Admission = Literal["normal", "limited", "probe", "busy"] | None
"""An ask's answer. ``"normal"``: a proven breaker admits it. ``"limited"``: an unproven
breaker admits it into a slot. ``"probe"``: the half-open breaker's one probe. ``"busy"``:
unproven, every slot taken, ask again shortly. ``None``: refused (open, or the probe is out)."""

StepKind = Literal["ask", "success", "failure", "release", "first_content"]


@dataclass(frozen=True, slots=True)
class GateSettings:
    """A gate's limits, sent with every step (a store may serve several gates)."""

    fail_max: int
    reset_timeout: float
    probe_lease: float  # a probe's slot lapses this long after it was taken
    limited_lease: float  # and a limited attempt's slot, this long


class Step(NamedTuple):
    """One atomic step on a breaker's state, apart from how it is sent.

    ``now`` is the gate's clock (only ``"ask"`` and ``"failure"`` read it); ``token`` names the
    permit's slot (``None``: a normal permit, which holds none); ``probe``: the permit is a
    probe.
    """

    kind: StepKind
    settings: GateSettings
    now: float | None = None
    token: str | None = None
    probe: bool = False


class Decision(NamedTuple):
    """A step's result: what an ask admits (``None`` for the other steps) and any transition."""

    admission: Admission
    changed: Transition | None = None


@runtime_checkable
class GateStore(Protocol):
    """Where a gate's state lives. :meth:`apply` takes **one atomic step** across every sharer.

    ``"ask"``: closed and proven, ``"normal"``; closed and unproven, ``"limited"`` while
    ``failures + live limited slots < fail_max`` (a slot lapses at ``now + limited_lease``),
    else ``"busy"``; open, ``None`` until ``reset_timeout`` has passed, then half-open;
    half-open, one ``"probe"`` per ``probe_lease``, else ``None``.
    ``"success"``: reset the failure count, the breaker is proven; the current probe closes it
    (a probe whose slot has passed to another is stale and counts as a normal attempt).
    ``"failure"``: count it, the breaker is unproven; it opens at ``fail_max`` while closed, or
    when the current probe fails. ``"release"``: neutral; frees the permit's slot.
    ``"first_content"``: frees a limited attempt's slot; a closed breaker is proven.
    """

    def current_state(self) -> BreakerState:
        """The state now."""
        ...

    def failures(self) -> int:
        """Consecutive failures counted since the last success."""
        ...

    def apply(self, step: Step) -> Decision:
        """Take ``step``."""
        ...

    async def aapply(self, step: Step) -> Decision:
        """Take ``step`` without blocking the event loop (a shared store awaits its I/O)."""
        ...


class _Storage(pybreaker.CircuitMemoryStorage):
    """pybreaker's memory storage, whose failure count can also be set at once."""

    def restore(self, failures: int, opened_at: datetime | None) -> None:
        # pybreaker's storage API counts up by one only; its own field takes a count at once.
        self._fail_counter = failures
        self._opened_at = opened_at


class _Transitions(pybreaker.CircuitBreakerListener):
    """Collects the breaker's state changes during a step, for the step's :class:`Decision`."""

    def __init__(self) -> None:
        self.seen: list[Transition] = []

    def state_change(
        self,
        cb: pybreaker.CircuitBreaker,
        old_state: pybreaker.CircuitBreakerState | None,
        new_state: pybreaker.CircuitBreakerState,
    ) -> None:
        if old_state is not None:
            self.seen.append((_as_state(old_state.name), _as_state(new_state.name)))

    def take(self) -> Transition | None:
        """The step's transition (a step makes at most one), and forget it."""
        seen, self.seen = self.seen, []
        return seen[-1] if seen else None


class MemoryGateStore:
    """The in-process store: pybreaker's breaker and storage, plus probe and limited slots.

    ``breaker`` is the ``pybreaker.CircuitBreaker`` that holds this state: read it, or add a
    ``pybreaker.CircuitBreakerListener`` to hear its transitions (one that raises breaks the
    step: pybreaker does not catch it). Drive it only through a gate: pybreaker's ``call()``
    would bypass the slots. A short lock guards each step; it is never held across a call.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._storage = _Storage(pybreaker.STATE_CLOSED)
        self._transitions = _Transitions()
        self.breaker = pybreaker.CircuitBreaker(
            state_storage=self._storage, listeners=[self._transitions]
        )
        self._probe: tuple[str, float] | None = None  # (token, lease end)
        self._limited: dict[str, float] = {}  # token -> lease end
        self._proven = False

    def current_state(self) -> BreakerState:
        return _as_state(self._storage.state)

    def failures(self) -> int:
        return self._storage.counter

    async def aapply(self, step: Step) -> Decision:
        return self.apply(step)  # never blocks: a few field updates under a short lock

    def apply(self, step: Step) -> Decision:
        with self._lock:
            admission = _STEPS[step.kind](self, step)
            if not self._transitions.seen:
                return _DECIDED[admission]
            return Decision(admission, self._transitions.take())

    def restore(
        self, state: BreakerState, failures: int, opened_at: float | None, *, proven: bool
    ) -> None:
        """Continue from a state seen elsewhere, holding no slot (``opened_at``: gate's clock)."""
        with self._lock:
            self._storage.state = state
            # pybreaker notices a state set from outside and tells its listeners: not a
            # transition of this store. Its closed state resets the count: counts come after.
            _ = self.breaker.state
            self._transitions.take()
            stamp = None if opened_at is None else datetime.fromtimestamp(opened_at, tz=UTC)
            self._storage.restore(failures, stamp)
            self._probe, self._proven = None, proven
            self._limited.clear()

    # -- the steps, under the lock ------------------------------------------------------------

    def _ask(self, step: Step) -> Admission:
        state, now, token = self.current_state(), step.now or 0.0, step.token or ""
        if state == "closed":
            return self._ask_closed(step)
        if state == "open":
            # Decided here: pybreaker's open state reads the wall clock, and only inside call().
            opened_at = self._storage.opened_at
            since = now - opened_at.timestamp() if opened_at is not None else float("inf")
            if since < step.settings.reset_timeout:
                return None
            self.breaker.half_open()
            self._probe = None
        if self._probe is not None and now < self._probe[1]:
            return None
        self._probe = (token, now + step.settings.probe_lease)
        return "probe"

    def _ask_closed(self, step: Step) -> Admission:
        if self._proven:
            return "normal"
        slots = self._limited
        now = step.now or 0.0
        for lapsed in [t for t, until in slots.items() if until <= now]:
            del slots[lapsed]  # a limited attempt whose holder vanished without ending
        if self._storage.counter + len(slots) >= step.settings.fail_max:
            return "busy"
        slots[step.token or ""] = now + step.settings.limited_lease
        return "limited"

    def _free_slot(self, step: Step) -> bool:
        """Free the permit's slot; True when it was the current probe (no token: any probe)."""
        if step.token is None and not step.probe:
            return False  # a normal permit holds no slot
        if step.token is not None:
            self._limited.pop(step.token, None)
        current = self._probe is not None and self._probe[0] == step.token
        if step.probe and (step.token is None or current):
            self._probe = None
            return True
        return False

    def _success(self, step: Step) -> Admission:
        self._storage.reset_counter()
        self._proven = True
        if self._free_slot(step) and self.current_state() != "closed":
            self.breaker.close()
        return None

    def _failure(self, step: Step) -> Admission:
        # pybreaker's view of the limits: the gate's (a store shared by two gates takes each).
        self.breaker.fail_max = step.settings.fail_max
        self.breaker.reset_timeout = step.settings.reset_timeout
        self._storage.increment_counter()
        self._proven = False
        state = self.current_state()
        at_max = state == "closed" and self._storage.counter >= self.breaker.fail_max
        current_probe = self._free_slot(step)
        if (current_probe or at_max) and state != "open":
            self.breaker.open()
            # pybreaker stamps the wall clock; the gate's timers run on its injected clock.
            self._storage.opened_at = datetime.fromtimestamp(step.now or 0.0, tz=UTC)
        return None

    def _release(self, step: Step) -> Admission:
        self._free_slot(step)
        return None

    def _first_content(self, step: Step) -> Admission:
        if step.token is not None:
            self._limited.pop(step.token, None)
        if self.current_state() == "closed":
            self._proven = True
        return None


_STEPS = {
    "ask": MemoryGateStore._ask,
    "success": MemoryGateStore._success,
    "failure": MemoryGateStore._failure,
    "release": MemoryGateStore._release,
    "first_content": MemoryGateStore._first_content,
}


_DECIDED: dict[Admission, Decision] = {
    admission: Decision(admission) for admission in ("normal", "limited", "probe", "busy", None)
}


def _as_state(raw: object) -> BreakerState:
    """A state name as pybreaker gives it."""
    if raw in ("closed", "open", "half-open"):
        return raw
    raise ValueError(f"unknown breaker state {raw!r}")
