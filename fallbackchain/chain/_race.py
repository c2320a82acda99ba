"""A hedge race's rules: who wins, what each other entrant's end means, when the race is over.

A streaming attempt on a route with ``hedge_after`` that shows no content by then is raced
against the next route's first streaming tier (see :meth:`RequestRun.hedge_delay`). The
drivers run the entrants (threads or tasks) and hand each batch of entrants that ended to
:meth:`Race.judge`; it records them in the run and says what to do: which permits to
release or count as failures (and which opened streams to close), and, once the race is
over, which attempt goes on with its opened stream or its error. The entrants still running
then have lost: the driver closes their streams and releases their permits when they end.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any, Final, Literal, NamedTuple

from ..breaker import Busy, Permit
from ._core import RequestRun
from ._steps import Acquire, Opened, TryTier
from ._watch import AttemptWatch

__all__ = ["Dismissal", "Entrant", "Race", "Verdict"]


# Plain classes and NamedTuples, not dataclasses: import time (CONTRIBUTING.md).


class Entrant:
    """One attempt in the race, with its timing rules (compared by identity)."""

    __slots__ = ("attempt", "watch")

    def __init__(self, attempt: TryTier, watch: AttemptWatch) -> None:
        self.attempt: Final = attempt
        self.watch: Final = watch


class Dismissal(NamedTuple):
    """An entrant that ended and does not go on: report ``outcome`` on its permit.

    ``opened``: its opened stream, to close first (it answered, but lost a tie), else ``None``.
    """

    entrant: Entrant
    outcome: Literal["failure", "release"]
    opened: Any = None


class Verdict(NamedTuple):
    """What one batch of ended entrants means: dismissals in order, and the race's end.

    ``end`` ``None``: the race goes on (wait for the next entrant to end). Otherwise the
    attempt that goes on, with its opened stream or the error it ended with; every entrant
    still running has lost (already recorded).
    """

    dismissed: tuple[Dismissal, ...]
    end: Opened | None


class Race:
    """The rules of one hedge race over ``run``, started by the attempt ``first``.

    Not thread-safe: the driver calls it from the request's own thread or task.
    """

    __slots__ = ("first", "run")

    def __init__(self, run: RequestRun, first: TryTier, watch: AttemptWatch) -> None:
        self.run = run
        self.first = Entrant(first, watch)

    def hedge(self) -> Acquire | None:
        """The first attempt is still silent: the tier to hedge with (ask its gate), if any."""
        return self.run.hedge(self.first.attempt)

    def start_hedge(
        self, step: Acquire, permit: Permit | Busy | None, call_timeout: float | None
    ) -> Entrant | None:
        """The hedge's entrant, or ``None`` when its breaker refused (the first runs alone)."""
        attempt = self.run.start_hedge(step, permit)
        if attempt is None:
            return None
        return Entrant(attempt, self.run.watch(attempt, call_timeout))

    def judge(
        self, ended: Sequence[tuple[Entrant, object]], running: Collection[Entrant]
    ) -> Verdict:
        """Entrants that ended (each with its opened stream or the exception it raised).

        ``running``: the entrants still running. The first attempt wins a tie, and fails
        last: when every entrant failed, it is the one that goes on with its error.
        """
        run = self.run
        ordered = sorted(ended, key=lambda pair: pair[0] is not self.first)
        winner = next((pair for pair in ordered if not isinstance(pair[1], BaseException)), None)
        dismissed: list[Dismissal] = []
        for entrant, outcome in reversed(ordered):
            if winner is not None and entrant is winner[0]:
                continue
            if not isinstance(outcome, BaseException):  # answered too, but later in the tie
                run.lost_race(entrant.attempt)
                dismissed.append(Dismissal(entrant, "release", outcome))
                continue
            last = winner is None and not running and entrant is ordered[0][0]
            if last or not isinstance(outcome, Exception):
                return Verdict(tuple(dismissed), self._end(entrant, outcome, running))
            verdict = run.raced(
                entrant.attempt, outcome, entrant.watch, hedge=entrant is not self.first
            )
            if verdict == "end":  # the caller's own mistake: raised, as without a race
                return Verdict(tuple(dismissed), self._end(entrant, outcome, running, False))
            dismissed.append(Dismissal(entrant, "release" if verdict == "neutral" else "failure"))
        if winner is not None:
            return Verdict(tuple(dismissed), self._end(winner[0], winner[1], running))
        return Verdict(tuple(dismissed), None)

    def _end(
        self, entrant: Entrant, outcome: object, running: Collection[Entrant], adopt: bool = True
    ) -> Opened:
        for other in running:  # still running: neutral, closed whenever it ends
            self.run.lost_race(other.attempt)
        if adopt and entrant is not self.first:
            self.run.adopt(entrant.attempt, self.first.attempt)
        return Opened(entrant.attempt, entrant.watch, outcome)
