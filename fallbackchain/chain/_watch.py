"""One attempt's timing rules (first token, idle gap, deadline) as pure checks on clock readings.

The drivers read the clock around each wait and ask an :class:`AttemptWatch` how long the next
wait may last and whether the one that ended went over; the watch never reads a clock itself.
"""

from __future__ import annotations

from typing import Protocol

from .._errors import DeadlineExceededError, FirstTokenTimeoutError, IdleTimeoutError, TierError

__all__ = ["AttemptWatch", "RunTime"]


class RunTime(Protocol):
    """The request's time as a watch reads it (its ``RequestRun``): deadline and pauses."""

    deadline: float
    started: float
    paused: float

    def remaining(self, now: float | None = None) -> float: ...


class AttemptWatch:
    """Timing rules for one attempt, as pure checks.

    Before the first content the limit is ``first_token_timeout`` counted from the attempt's
    start; after it, ``idle_timeout`` per wait for the next chunk; always, the request's
    remaining deadline. :meth:`budget` says how long the next wait may last;
    :meth:`after_wait` raises the right error if a wait went over it.
    """

    __slots__ = (
        "_first_token",
        "_run",
        "_started",
        "content_seen",
        "first_token_at",
        "idle",
        "responded",
    )

    def __init__(self, run: RunTime, *, started: float, first_token: float, idle: float) -> None:
        self._run = run
        self._started = started
        self._first_token = first_token
        self.idle = idle
        """The longest wait for a chunk once content began (a driver's per-chunk check)."""
        self.content_seen = False
        self.responded = False
        """Set by the driver once the SDK call returned: a response has begun."""
        self.first_token_at: float | None = None

    def _limit(self, now: float) -> tuple[float, type[TierError]]:
        kind: type[TierError]
        if self.content_seen:
            limit, kind = self.idle, IdleTimeoutError
        else:
            # No event reaches the consumer before the first content, so no pause to subtract.
            limit = self._first_token - (now - self._started)
            kind = FirstTokenTimeoutError
        remaining = self._run.remaining(now)
        if remaining < limit:
            return remaining, DeadlineExceededError
        return limit, kind

    def budget(self, now: float) -> float:
        """How long the next wait (for headers or a chunk) may last, in seconds (>= 0).

        The same limits as :meth:`_limit`, computed flat: it runs once per chunk.
        """
        run = self._run
        remaining = run.deadline - (now - run.started - run.paused)
        limit = self.idle if self.content_seen else self._first_token - (now - self._started)
        return max(0.0, min(limit, remaining))

    def expired(self, before: float) -> TierError:
        """The error for a wait that began at ``before`` and ran out of budget."""
        _, kind = self._limit(before)
        if kind is DeadlineExceededError:
            return DeadlineExceededError("request deadline reached while waiting for upstream")
        if kind is IdleTimeoutError:
            return IdleTimeoutError(f"no chunk for {self.idle:g}s (idle_timeout)")
        return FirstTokenTimeoutError(f"no content within {self._first_token:g}s")

    def after_wait(self, before: float, after: float, *, got_content: bool) -> bool:
        """Check a finished wait; raise its timeout error if it took longer than allowed.

        Returns ``True`` once: for the wait that brought the attempt's first content (a
        limited breaker permit reports it then). Called once per chunk, so the common case is
        two comparisons: the wait against the phase's limit (first token: absolute from the
        attempt's start; then the idle gap), and ``after`` against the request's deadline.
        """
        run = self._run
        if self.content_seen:
            over = after - before > self.idle
        else:
            over = after - self._started > self._first_token
        if over or after - run.started - run.paused > run.deadline:
            raise self.expired(before)
        if got_content and not self.content_seen:
            self.content_seen = True
            self.first_token_at = after
            return True
        return False

    def answered_whole(self, at: float) -> None:
        """A non-streamed attempt answered at ``at``: its response and content came at once."""
        self.responded = self.content_seen = True
        self.first_token_at = at

    def time_to_first_token(self) -> float | None:
        """Seconds from the attempt's start to its first content, if any arrived."""
        if self.first_token_at is None:
            return None
        return self.first_token_at - self._started
