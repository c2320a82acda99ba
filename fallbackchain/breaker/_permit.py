"""What a gate answers: a :class:`Permit` for one attempt, :data:`BUSY`, or ``None`` (refused)."""

from __future__ import annotations

import enum
from typing import Final, Literal, Protocol

from ._stores import StepKind

__all__ = ["BUSY", "Busy", "Outcome", "Permit"]

Outcome = Literal["success", "failure", "release"]
"""How a permit ends (see :meth:`Permit.end`)."""


class Busy(enum.Enum):
    """The type of :data:`BUSY`."""

    BUSY = "busy"


BUSY: Final = Busy.BUSY
""":meth:`BreakerGate.acquire`'s answer when an unproven breaker has every slot taken:
not refused for good, ask again shortly (the breaker may be proven, or open, by then)."""


class _Gate(Protocol):
    """What a permit needs from its gate: one step applied, sync or awaited."""

    @property
    def in_place(self) -> bool: ...

    def report(self, kind: StepKind, permit: Permit) -> bool: ...

    async def areport(self, kind: StepKind, permit: Permit) -> bool: ...


class Permit:
    """Permission for one attempt. End it exactly once; later calls are ignored.

    ``probe``: the half-open breaker's one probe. ``limited``: admitted while the breaker
    was unproven. Both hold a slot named by ``token`` until they end (or, for a limited
    attempt, until its first content); a normal permit (proven breaker) has no token.
    Each method has an awaitable twin (``a...``) that does not block the event loop on a
    shared store.
    """

    __slots__ = ("_content_seen", "_ended", "_gate", "limited", "probe", "token")

    def __init__(
        self, gate: _Gate, *, probe: bool, token: str | None = None, limited: bool = False
    ) -> None:
        self._gate = gate
        self.probe = probe
        self.limited = limited
        self.token = token  # names this permit's slot: tells a stale probe from the current one
        self._ended = False
        self._content_seen = not limited  # only a limited attempt's first content is news

    def first_content(self) -> None:
        """The attempt produced content: a limited attempt frees its slot and proves the breaker.

        A no-op for other permits. Call it at the first content: waiting callers get in
        without waiting for the whole answer. The permit still has to end (a later failure
        still counts).
        """
        if self._first(content=True):
            self._gate.report("first_content", self)

    async def afirst_content(self) -> None:
        """:meth:`first_content`, awaited."""
        if self._first(content=True):
            await self._gate.areport("first_content", self)

    def success(self) -> None:
        """The attempt succeeded: reset the failure count; a probe closes the breaker."""
        if self._first():
            self._gate.report("success", self)

    async def asuccess(self) -> None:
        """:meth:`success`, awaited."""
        if self._first():
            await self._gate.areport("success", self)

    def failure(self) -> bool:
        """The attempt failed: count it; at ``fail_max`` (or a failed probe) the breaker opens.

        Returns ``True`` when this failure opened the breaker.
        """
        return self._first() and self._gate.report("failure", self)

    async def afailure(self) -> bool:
        """:meth:`failure`, awaited."""
        return self._first() and await self._gate.areport("failure", self)

    def release(self) -> None:
        """Neither success nor failure: no breaker counts it.

        For an attempt that says nothing about the upstream: the consumer cancelled or
        closed the stream early, or the request was the caller's own mistake.
        """
        if self._first():
            self._gate.report("release", self)

    async def arelease(self) -> None:
        """:meth:`release`, awaited."""
        if self._first():
            await self._gate.areport("release", self)

    def end(self, outcome: Outcome) -> bool:
        """:meth:`success`, :meth:`failure` or :meth:`release`; True if the breaker opened."""
        if outcome == "success":
            self.success()
            return False
        if outcome == "failure":
            return self.failure()
        self.release()
        return False

    async def aend(self, outcome: Outcome) -> bool:
        """:meth:`end`, awaited."""
        if outcome == "success":
            await self.asuccess()
            return False
        if outcome == "failure":
            return await self.afailure()
        await self.arelease()
        return False

    @property
    def in_place(self) -> bool:
        """True when its gate's store never waits (in-process).

        :meth:`end` may then run on an event loop: an awaited end would never suspend, so
        no cancellation could cut it short.
        """
        return self._gate.in_place

    def _first(self, *, content: bool = False) -> bool:
        """True the first time: this call ends the permit (``content``: its first content).

        Content after the end, or a second time, is ignored.
        """
        if self._ended or (content and self._content_seen):
            return False
        if content:
            self._content_seen = True
        else:
            self._ended = True
        return True
