"""The decision core shared by the sync and async chains: one request's state across tiers.

:class:`RequestRun` is a state machine for one request, in the manner of tenacity's retry
state: :meth:`RequestRun.next_step` says what comes next (``Sleep``, ``AwaitSlot``,
``Acquire`` or ``UseCache``), :meth:`~RequestRun.start_attempt` turns a breaker's answer into
an attempt, and the attempt's end is reported (:meth:`~RequestRun.succeeded`,
:meth:`~RequestRun.failed`, :meth:`~RequestRun.abandoned`, or for an error not yet judged
:meth:`~RequestRun.classify`). All policy (tier order, breakers, retry, backoff, deadline,
hedging) lives here and in ``_plan`` (the tier order), ``_backoff`` and ``_race``; ``_flow``
strings these calls into the steps a driver performs (see ``_steps``).

Time spent by the *consumer* between events (a slow reader of the stream) is not the
upstream's fault: the driver reports it with :meth:`RequestRun.pause` and it is excluded from
the deadline and from idle gaps.
"""

from __future__ import annotations

import dataclasses
import logging
import random as _random
from collections.abc import Callable, Collection, Sequence
from typing import Literal

from .._config import ChainConfig
from .._errors import (
    BreakerBusyError,
    BreakerOpenError,
    DeadlineExceededError,
    FirstTokenTimeoutError,
    QuotaExceededError,
    RouteRejectedError,
    TierError,
    UpstreamStatusError,
    is_context_length_error,
    map_error,
    map_rejection,
)
from .._hooks import AttemptEnded, AttemptStarted, FallbackTaken, Hooks, RetryScheduled
from .._results import Attempt
from ..breaker import Busy, Permit
from ._assembly import Display
from ._backoff import decide, is_transport_fault
from ._plan import Move, TierPlan
from ._steps import Acquire, AwaitSlot, Neutral, Sleep, Tier, TryTier, UseCache
from ._watch import AttemptWatch

__all__ = [
    "BUSY_POLL_FIRST",
    "BUSY_POLL_MAX",
    "Acquire",
    "AttemptWatch",
    "AwaitSlot",
    "Neutral",
    "RequestRun",
    "Sleep",
    "Tier",
    "TryTier",
    "UseCache",
]

logger = logging.getLogger("fallbackchain")

BUSY_POLL_FIRST = 0.025
BUSY_POLL_MAX = 0.2
"""Between two asks of a busy breaker (unproven, every limited slot taken) a request waits on
the gate (an ``AwaitSlot`` step) :data:`BUSY_POLL_FIRST` seconds, doubling up to
:data:`BUSY_POLL_MAX`; an attempt at that gate ending, or a limited attempt's first content,
in this process wakes it at once. The whole wait at one tier lasts at most what a limited
attempt may take to prove the route: ``first_token_timeout`` for a streaming tier,
``openai.timeout`` for a non-streaming one; and never past the deadline (run's clock)."""


class RequestRun:
    """The state of one request across its tiers and attempts. Not thread-safe (one driver)."""

    def __init__(
        self,
        tiers: Sequence[Tier],
        config: ChainConfig,
        *,
        clock: Callable[[], float],
        random: Callable[[], float] = _random.random,
        hooks: Hooks | None = None,
        request_id: int = 0,
        whole_first: bool = False,
        deadline: float | None = None,
        max_attempts: int | None = None,
        routes: Collection[str] | None = None,
    ) -> None:
        """Start a request's run; its clock starts now.

        ``whole_first``: within each route, its non-streaming tier before its streaming one
        (``complete()`` with ``openai.complete_streams = false``). A call's own ``deadline``
        and ``max_attempts`` (every route's budget) replace the configured ones; ``routes``
        names the routes it may use (``None``: all).
        """
        self.deadline = config.retry.deadline if deadline is None else deadline
        self._max_attempts = max_attempts
        self._hooks = hooks if hooks is not None else Hooks()  # an empty one is falsy
        self.request_id = request_id
        retry = config.retry
        self._retry = retry if deadline is None else dataclasses.replace(retry, deadline=deadline)
        self._clock = clock
        self._random = random
        self.started = clock()
        self.paused = 0.0
        self.attempts: list[Attempt] = []
        self._plan = TierPlan(tiers, whole_first=whole_first, routes=routes)
        self._number = 0  # attempts at the current tier
        self._route_faults: dict[str, int] = {}
        """Attempts per route, whichever tier, that failed for the route's own reasons (a
        stream's transport faults have the tier's own budget instead)."""
        self._hedged = False  # at most one hedge per request
        self._not_before: dict[str, float] = {}  # a route's Retry-After met during a race
        self._pending_sleep: float | None = None
        self._pending_for_route = False  # that sleep spaces the route's requests (not a stream's)
        self._sleeping_for_route = False  # the same, of the Sleep handed out last
        self._wait_until: float | None = None  # when a route's sleep cut short would have ended
        self._slept = 0.0
        self._pending_wait: float | None = None
        self._since: int | None = None  # the gate's generation at the last Acquire
        self._busy_since: float | None = None
        self._busy_polls = 0
        self.display = Display()
        """What the consumer has been shown; every attempt after the first is matched to it."""

    # -- time ------------------------------------------------------------------------------

    def elapsed(self, now: float | None = None) -> float:
        """Upstream time used so far: wall time since start minus consumer pauses."""
        return (self._clock() if now is None else now) - self.started - self.paused

    def remaining(self, now: float | None = None) -> float:
        """Seconds left before the live deadline (may be negative)."""
        return self.deadline - self.elapsed(now)

    def pause(self, seconds: float) -> None:
        """The consumer held the stream for ``seconds``: not counted against the deadline."""
        if seconds > 0:
            self.paused += seconds

    def read_budget(self, tier: Tier, now: float, call_timeout: float | None = None) -> float:
        """How long one read of an attempt at ``tier`` may wait, from ``now`` (>= 0).

        A stream's read waits for the first token or the next chunk; a whole completion's
        for the whole answer. Never more than a call's own ``timeout`` nor the deadline.
        """
        route = tier.route
        if tier.streaming:
            per_read = max(route.first_token_timeout, route.idle_timeout)
        else:
            per_read = route.timeout
        if call_timeout is not None:
            per_read = min(per_read, call_timeout)
        return min(per_read, max(self.remaining(now), 0.0))

    def whole_timed_out(self, before: float, budget: float) -> TierError:
        """The error for a whole completion asked at ``before`` that took all its ``budget``.

        The deadline's, if that is what bounded the wait; else a silent route's (the class
        the sync driver gets from the SDK's read timeout).
        """
        if self.remaining(before) <= budget:
            return DeadlineExceededError("request deadline reached while waiting for upstream")
        return FirstTokenTimeoutError(f"no answer within {budget:g}s")

    def watch(self, step: TryTier, call_timeout: float | None = None) -> AttemptWatch:
        """The timing rules of the attempt ``step`` (a call's ``timeout`` tightens them)."""
        route = step.tier.route
        first_token, idle = route.first_token_timeout, route.idle_timeout
        if call_timeout is not None:
            first_token, idle = min(first_token, call_timeout), min(idle, call_timeout)
        return AttemptWatch(self, started=step.started, first_token=first_token, idle=idle)

    # -- steps ---------------------------------------------------------------------------

    def next_step(self) -> Sleep | AwaitSlot | Acquire | UseCache:
        """What the driver must do next.

        ``Sleep``: wait, then ask again. ``AwaitSlot``: wait on the tier's gate, then ask
        again. ``Acquire``: get a permit from the tier's gate (sync or awaited) and hand it to
        :meth:`start_attempt`. ``UseCache``: no live tier is left.
        """
        tier = self._plan.current
        if tier is None:
            return UseCache()
        if self._pending_wait is not None:
            seconds, self._pending_wait = self._pending_wait, None
            return AwaitSlot(tier, seconds, self._since)
        if self._pending_sleep is not None:
            delay, self._pending_sleep = self._pending_sleep, None
            self._slept += delay
            self._sleeping_for_route = self._pending_for_route
            return Sleep(delay, tier)
        if self.remaining() <= 0:
            self._plan.end()
            return UseCache()
        hold = self._not_before.pop(tier.provider, 0.0) - self._clock() if self._not_before else 0
        if hold > 0:  # a Retry-After this route sent during a race
            if hold >= self.remaining():
                self._leave_tier(tier.name, "retry-after beyond the deadline", "route")
                return self.next_step()
            self._slept += hold
            self._sleeping_for_route = True
            return Sleep(hold, tier)
        self._since = tier.gate.generation  # a change from here on ends a busy wait
        return Acquire(tier)

    def woke_early(self, left: float) -> None:
        """The last ``Sleep`` ended ``left`` seconds early: its tier's breaker opened.

        The next ``Acquire`` is then refused. Had the wait spaced the route's requests (a
        backoff after a route fault, a ``Retry-After``), the route's next tier waits out the
        rest of it, or the route is left when that rest ends past the deadline; a stream's own
        backoff is dropped, as when an attempt opens the breaker. Should the ``Acquire`` be
        granted after all (a shared store whose state says otherwise), the attempt goes
        ahead: the breaker decides, not this process's view of it.
        """
        self._slept -= left
        self._wait_until = self._clock() + left if self._sleeping_for_route else None

    def start_attempt(self, step: Acquire, permit: Permit | Busy | None) -> TryTier | None:
        """The gate's answer to ``step``: the attempt to make, or ``None`` (no attempt now).

        Refused (``None``): recorded, and the run moves on to the next tier. Busy (the
        breaker is unproven and ``fail_max`` limited attempts are in flight): the next step is an
        ``AwaitSlot`` (see :data:`BUSY_POLL_FIRST`), then the same ``Acquire``, for at most
        ``first_token_timeout`` and the deadline; then it moves on as if refused.
        """
        tier = step.tier
        until, self._wait_until = self._wait_until, None
        if isinstance(permit, Busy):
            self._busy(tier)
            return None
        if permit is None:
            error = BreakerOpenError(f"{tier.name} breaker is open")
            self.attempts.append(Attempt(tier.name, error.message, 0.0, exception=error))
            slept = self._slept
            if self._leave_tier(tier.name, "breaker open", "tier") and until is not None:
                self._keep_routes_wait(until - self._clock(), slept)
            return None
        self._number += 1
        delay, self._slept = self._slept, 0.0
        if self._busy_since is not None:  # waiting for a limited slot counts as delay too
            delay += self._clock() - self._busy_since
            self._busy_since = None
        if self.attempts:
            self.display.new_attempt()
        if self._hooks:
            self._hooks.emit(AttemptStarted(self.request_id, tier.name, self._number, permit.probe))
        logger.debug(
            "attempt %s #%d%s", tier.name, self._number, " (probe)" if permit.probe else ""
        )
        return TryTier(tier, permit, self._number, delay, self._clock())

    def _keep_routes_wait(self, left: float, slept: float) -> None:
        """The route's wait had ``left`` seconds to go when its first tier's breaker refused.

        The route's next tier (now current) waits them out, counting ``slept`` towards its
        attempt's ``delay_before``; past the deadline, the route is left instead.
        """
        if left <= 0:
            return
        following = self._plan.current
        assert following is not None  # _leave_tier said the route goes on
        if left >= self.remaining():
            self._leave_tier(following.name, "the route's wait ends past the deadline", "route")
            return
        self._pending_sleep = left
        self._pending_for_route = True
        self._slept = slept

    def classify(
        self, step: TryTier, exc: Exception, watch: AttemptWatch, *, closed: bool
    ) -> TierError | Neutral:
        """What ``exc``, raised by the attempt at ``step``, means: a failure or a neutral end.

        A :class:`TierError` (mapped, ``from exc``): the upstream failed; the permit is
        reported as a failure, then :meth:`failed`. Otherwise the permit is released and
        nothing is counted: ``"closed"`` once the chain is closed (the close caused it);
        ``"reroute"`` for a client error :meth:`rerouted` moved on from; ``"raise"`` for the
        caller's own mistake (a client error, or an error before anything was sent).
        """
        if closed:
            return "closed"
        error = map_error(exc, content_seen=watch.content_seen, responded=watch.responded)
        if error is not None:
            return error
        return "reroute" if self.rerouted(step, exc) else "raise"

    def rerouted(self, step: TryTier, exc: BaseException) -> bool:
        """A client error at ``step``: ``True`` if the request moved on, ``False`` to raise it.

        A fallback route's rejection of what the primary accepts (see
        :func:`~fallbackchain._errors.map_rejection`) is recorded as a failed attempt and
        skips that route for this request. A context-length error moves to the next tier on
        another model whose ``context_window`` is known and larger than this tier's. Nothing
        is retried on the same model, and no breaker counts either (the driver releases the
        permit).
        """
        here = step.tier
        rejected = self._fallback_rejection(step, exc)
        if rejected is not None:
            self._record(step, "failure", rejected, time_to_first_token=None)
            self._leave_tier(here.name, rejected.message, "route")
            return True
        if not is_context_length_error(exc):
            return False
        larger = self._plan.larger_model(here)
        if larger is None:
            return False
        why = "context length exceeded"
        self._record(step, "abandoned", None, time_to_first_token=None, text=why)
        self._leave_tier(here.name, why, "tier", to=larger)
        return True

    def succeeded(self, step: TryTier, *, time_to_first_token: float | None) -> Attempt:
        """The attempt answered completely (its permit has been reported as a success)."""
        return self._record(step, "success", None, time_to_first_token=time_to_first_token)

    def abandoned(self, step: TryTier) -> None:
        """The attempt ended neutrally (closed early, cancelled, the caller's own error).

        Not added to ``attempts`` (nothing failed); listeners still see it end.
        """
        if self._hooks:
            self._emit_ended(step, "abandoned", duration=self._clock() - step.started)

    def failed(
        self,
        step: TryTier,
        error: TierError,
        *,
        breaker_opened: bool = False,
        time_to_first_token: float | None = None,
    ) -> None:
        """The attempt failed with ``error`` (mapped; its permit was reported as a failure).

        Records it and plans what follows. ``breaker_opened`` (what settling the permit
        returned) moves on at once: no backoff sleep is spent before a try the breaker refuses.
        """
        self._record(step, "failure", error, time_to_first_token=time_to_first_token)
        tier = step.tier
        transport = is_transport_fault(error, content_seen=time_to_first_token is not None)
        if breaker_opened and transport:
            self._leave_tier(tier.name, f"{type(error).__name__}: breaker opened", "tier")
            return
        decision = decide(
            error,
            attempt=step.number if transport else self._count_route_fault(tier),
            elapsed=self.elapsed(),
            config=self._retry,
            random=self._random,
            transport=transport,
            max_attempts=self._max_attempts or tier.route.max_attempts,
        )
        logger.debug(
            "attempt %s #%d failed: %s -> %s (%s)",
            tier.name,
            step.number,
            type(error).__name__,
            decision.action,
            decision.reason,
        )
        why = f"{type(error).__name__}: {decision.reason}"
        if decision.action == "retry":
            # the breaker just opened: the route's next tier takes the retry, after the same wait
            opened = f"{type(error).__name__}: breaker opened"
            if breaker_opened and not self._leave_tier(tier.name, opened, "tier"):
                return
            self._pending_sleep = decision.delay
            self._pending_for_route = not transport
            if self._hooks:
                self._hooks.emit(
                    RetryScheduled(
                        self.request_id,
                        tier.name,
                        decision.delay,
                        getattr(error, "retry_after", None),
                    )
                )
        elif decision.action == "next_tier":
            self._leave_tier(tier.name, why, "tier")
        elif decision.action == "next_route":
            self._leave_tier(tier.name, why, "route")
        elif decision.action == "defer_route":
            self._leave_tier(tier.name, why, "defer")
        elif isinstance(error, QuotaExceededError):  # one account's: others may answer
            account = (tier.route.base_url, tier.route.api_key_env)
            self._plan.drop_ahead(lambda t: (t.route.base_url, t.route.api_key_env) == account)
            self._leave_tier(tier.name, why, "route")
        else:
            self._leave_tier(tier.name, why, "live")

    # -- hedging -------------------------------------------------------------------------
    #
    # A streaming attempt on a route with ``hedge_after`` that shows no content by then is
    # raced against the next route's first tier. The first to show content wins; the other
    # ends neutrally (released, never counted). The driver runs the race; these say what to do.

    def hedge_delay(self, step: TryTier) -> float | None:
        """Seconds without content after which ``step`` is hedged; ``None``: never.

        Only a streaming attempt, on a route with ``hedge_after``, once per request, when a
        tier of another route is still ahead in the plan.
        """
        after = step.tier.route.hedge_after
        if self._hedged or not after or not step.tier.streaming:
            return None
        return after if self._plan.hedge_target(step.tier) is not None else None

    def hedge(self, step: TryTier) -> Acquire | None:
        """Hedge ``step`` now: the tier to ask (get its permit, then :meth:`start_hedge`)."""
        self._hedged = True
        target = self._plan.hedge_target(step.tier)
        return None if target is None else Acquire(target)

    def start_hedge(self, step: Acquire, permit: Permit | Busy | None) -> TryTier | None:
        """The hedge's attempt, or ``None`` when its breaker refused (the attempt goes on alone)."""
        if not isinstance(permit, Permit):
            return None
        tier = step.tier
        if self._hooks:
            self._hooks.emit(AttemptStarted(self.request_id, tier.name, 1, permit.probe, True))
        logger.debug("attempt %s #1 (hedge)", tier.name)
        return TryTier(tier, permit, 1, 0.0, self._clock())

    def raced(
        self, step: TryTier, exc: Exception, watch: AttemptWatch, *, hedge: bool
    ) -> TierError | Literal["neutral", "end"]:
        """``step`` failed while another attempt of a race is still running.

        Recorded at once. A :class:`TierError`: the permit is reported as a failure;
        it counts toward the route's budget, and a ``Retry-After`` holds the route back (or,
        beyond ``max_retry_after``, drops it for this request). ``"neutral"``: the permit is
        released and the race goes on (a fallback's rejection, which also drops
        that route; or what the hedge's provider alone refused). ``"end"``: the caller's own
        mistake met by the hedged attempt: the race ends and it is raised, as without a race.
        """
        error = map_error(exc, content_seen=watch.content_seen, responded=watch.responded)
        if error is None:
            rejected = self._fallback_rejection(step, exc)
            if rejected is not None:
                self._record(step, "failure", rejected, time_to_first_token=None)
                self._drop_route(step.tier.provider)
                return "neutral"
            if not hedge:
                return "end"
            why = "failed in a hedge race"
            self._record(step, "abandoned", None, time_to_first_token=None, text=why)
            return "neutral"
        ttft = watch.time_to_first_token()
        self._record(step, "failure", error, time_to_first_token=ttft)
        if not is_transport_fault(error, content_seen=ttft is not None):
            self._count_route_fault(step.tier)
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:
            if retry_after > self._retry.max_retry_after or retry_after >= self.remaining():
                self._drop_route(step.tier.provider)
            else:
                self._not_before[step.tier.provider] = self._clock() + retry_after
        return error

    def lost_race(self, step: TryTier) -> None:
        """``step`` was still waiting when the other attempt showed content: neutral."""
        self._record(step, "abandoned", None, time_to_first_token=None, text="lost a hedge race")

    def adopt(self, hedge: TryTier, hedged: TryTier) -> None:
        """The request goes on with ``hedge`` (it won, or outlived ``hedged``).

        The rest of ``hedged``'s route moves behind every other route, as for a silent route.
        """
        self._leave_tier(hedged.tier.name, "hedge took over", "defer")
        self._number = hedge.number

    def _drop_route(self, route: str) -> None:
        """Take ``route``'s tiers after the current one out of this request's plan."""
        self._plan.drop_ahead(lambda tier: tier.provider == route)

    # -- helpers -------------------------------------------------------------------------

    def _fallback_rejection(self, step: TryTier, exc: BaseException) -> RouteRejectedError | None:
        """A fallback route's rejection of what the primary accepts; the primary's is None."""
        if step.tier.provider == self._plan.primary:
            return None
        return map_rejection(exc)

    def _count_route_fault(self, tier: Tier) -> int:
        count = self._route_faults.get(tier.provider, 0) + 1
        self._route_faults[tier.provider] = count
        return count

    def _busy(self, tier: Tier) -> None:
        """Plan the next wait for a busy breaker, or give up on this tier."""
        now = self._clock()
        if self._busy_since is None:
            self._busy_since, self._busy_polls = now, 0
        waited = now - self._busy_since
        remaining = self.remaining(now)
        limit = tier.route.first_token_timeout if tier.streaming else tier.route.timeout
        if waited < limit and remaining > 0:
            poll = BUSY_POLL_FIRST * 2 ** min(self._busy_polls, 8)
            self._pending_wait = min(poll, BUSY_POLL_MAX, limit - waited, remaining)
            self._busy_polls += 1
            return
        why = "until the request's deadline" if remaining <= 0 else f"for {waited:.3g}s"
        error = BreakerBusyError(
            f"{tier.name} breaker is unproven and its limited slots stayed full {why}"
        )
        self.attempts.append(Attempt(tier.name, error.message, waited, exception=error))
        self._leave_tier(tier.name, "breaker busy", "tier")

    def _record(
        self,
        step: TryTier,
        outcome: Literal["success", "failure", "abandoned"],
        error: TierError | None,
        *,
        time_to_first_token: float | None,
        text: str | None = None,
    ) -> Attempt:
        duration = self._clock() - step.started
        status = error.status_code if isinstance(error, UpstreamStatusError) else None
        if text is None and error is not None:
            text = error.message
        attempt = Attempt(
            step.tier.name,
            text,
            duration,
            exception=error,
            status_code=status,
            retry_after=getattr(error, "retry_after", None),
            delay_before=step.delay_before,
            time_to_first_token=time_to_first_token,
        )
        self.attempts.append(attempt)
        if self._hooks:
            self._emit_ended(
                step,
                outcome,
                error=type(error).__name__ if error is not None else None,
                status=status,
                duration=duration,
                time_to_first_token=time_to_first_token,
            )
        return attempt

    def _emit_ended(
        self,
        step: TryTier,
        outcome: Literal["success", "failure", "abandoned"],
        *,
        duration: float,
        error: str | None = None,
        status: int | None = None,
        time_to_first_token: float | None = None,
    ) -> None:
        name, number = step.tier.name, step.number
        ended = AttemptEnded(
            self.request_id, name, number, outcome, error, status, duration, time_to_first_token
        )
        self._hooks.emit(ended)

    def _leave_tier(
        self,
        from_tier: str,
        reason: str,
        how: Move,
        *,
        to: Tier | None = None,
    ) -> bool:
        """Leave the current tier (see :data:`Move`; ``to``: the tier ahead to go to).

        Returns ``True`` if the next tier is on the same route. Says so in the log and to
        listeners (``FallbackTaken``).
        """
        here = self._plan.current
        assert here is not None  # only an attempt's (or a tier's) end leaves a tier
        self._plan.move_on(how, to=to)
        self._number = 0
        self._slept = 0.0
        self._busy_since = None
        self._pending_sleep = None
        following = self._plan.current
        to_tier = following.name if following is not None else "cache"
        logger.info("fallback: %s -> %s (%s)", from_tier, to_tier, reason)
        if self._hooks:
            self._hooks.emit(FallbackTaken(self.request_id, from_tier, to_tier, reason))
        return following is not None and following.provider == here.provider
