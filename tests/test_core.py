"""The decision core on its own: step sequences of one request, without I/O (#12).

As tenacity tests its retry state: a :class:`RequestRun` is driven by a tiny loop that plays
a script of attempt outcomes, and the steps it asks for (attempts, sleeps, the cache) are
compared with a table. Real breaker gates (in-memory), a fake clock, jitter fixed at 0.5.
With the defaults (``base_delay`` 0.5, ``max_delay`` 8), full jitter at 0.5 sleeps 0.25 s,
0.5 s, 1 s... before the 2nd, 3rd, 4th attempt on a route.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fallbackchain import (
    BreakerConfig,
    ChainConfig,
    FallbackConfig,
    FirstTokenTimeoutError,
    IdleTimeoutError,
    QuotaExceededError,
    RateLimitedError,
    RetryConfig,
    ServerError,
    TierError,
    TruncatedStreamError,
    UpstreamConnectionError,
)
from fallbackchain.breaker._gate import BreakerGate
from fallbackchain.chain._core import Acquire, AwaitSlot, RequestRun, Sleep, Tier, TryTier, UseCache
from fallbackchain.chain._plan import TierPlan

from .conftest import FakeClock

OK = "ok"
R429 = RateLimitedError("HTTP 429", status_code=429)
R503 = ServerError("HTTP 503", status_code=503)
SILENT = FirstTokenTimeoutError("timed out before the first content")
STALL = IdleTimeoutError("read timed out between chunks")
QUOTA = QuotaExceededError("HTTP 429 insufficient_quota", status_code=429)
NO_RETRY = ServerError("HTTP 503", status_code=503, should_retry=False)


def after_content(error: TierError) -> tuple[TierError, float]:
    """``error`` met after the stream had shown content (its time to first token: 0.1 s)."""
    return error, 0.1


def retry_after(seconds: float) -> RateLimitedError:
    return RateLimitedError("HTTP 429", status_code=429, retry_after=seconds)


def make_tiers(config: ChainConfig, clock: FakeClock) -> list[Tier]:
    return [
        Tier(
            name,
            streams,
            BreakerGate(
                name, fail_max=route.fail_max, reset_timeout=route.reset_timeout, clock=clock
            ),
            route,
        )
        for route in config.routes()
        for name, streams in route.tiers
    ]


def play(
    config: ChainConfig, script: dict[str, list[Any]], clock: FakeClock | None = None
) -> list[str]:
    """Run one request; each tier answers from its own list in ``script`` (then ``OK``).

    Returns the steps taken: a tier's name per attempt (``"stream!"`` when the breaker
    refused it), ``"sleep S"`` per backoff, ``"cache"`` at the end.
    """
    clock = clock or FakeClock()
    run = RequestRun(make_tiers(config, clock), config, clock=clock, random=lambda: 0.5)
    return list(_steps(run, {k: list(v) for k, v in script.items()}, clock))


def _steps(run: RequestRun, script: dict[str, list[Any]], clock: FakeClock) -> Iterator[str]:
    for _ in range(100):
        step = run.next_step()
        if isinstance(step, UseCache):
            yield "cache"
            return
        if isinstance(step, Sleep):
            clock.advance(step.seconds)
            yield f"sleep {step.seconds:g}"
            continue
        assert not isinstance(step, AwaitSlot)
        assert isinstance(step, Acquire)
        attempt = run.start_attempt(step, step.tier.gate.acquire())
        if attempt is None:
            yield f"{step.tier.name}!"
            continue
        yield attempt.tier.name
        if _settle(run, attempt, script.get(attempt.tier.name, [])):
            return
    raise AssertionError("the run never ended")


def _settle(run: RequestRun, attempt: TryTier, outcomes: list[Any]) -> bool:
    outcome = outcomes.pop(0) if outcomes else OK
    if outcome == OK:
        attempt.permit.success()
        run.succeeded(attempt, time_to_first_token=0.1)
        return True
    error, ttft = outcome if isinstance(outcome, tuple) else (outcome, None)
    run.failed(attempt, error, breaker_opened=attempt.permit.failure(), time_to_first_token=ttft)
    return False


DEFAULTS = ChainConfig()
BACKUP = FallbackConfig(name="backup", model="backup-model", base_url="http://127.0.0.1:1/v1")
WITH_BACKUP = ChainConfig(fallbacks=(BACKUP,))

TABLE: list[tuple[str, ChainConfig, dict[str, list[Any]], list[str]]] = [
    ("healthy", WITH_BACKUP, {}, ["stream"]),
    (
        "429 without Retry-After: the route's budget, spaced by backoff, then the next route",
        WITH_BACKUP,
        {"stream": [R429] * 9},
        ["stream", "sleep 0.25", "stream", "sleep 0.5", "stream", "backup"],
    ),
    (
        "Retry-After is waited before every attempt on the route",
        WITH_BACKUP,
        {"stream": [retry_after(2)] * 9},
        ["stream", "sleep 2", "stream", "sleep 2", "stream", "backup"],
    ),
    (
        "a Retry-After above max_retry_after skips the route at once",
        WITH_BACKUP,
        {"stream": [retry_after(60)]},
        ["stream", "backup"],
    ),
    (
        "x-should-retry: false skips the route",
        WITH_BACKUP,
        {"stream": [NO_RETRY]},
        ["stream", "backup"],
    ),
    (
        "a silent route: the next route at once",
        WITH_BACKUP,
        {"stream": [SILENT]},
        ["stream", "backup"],
    ),
    ("a stall: the next route at once", WITH_BACKUP, {"stream": [STALL]}, ["stream", "backup"]),
    (
        "a silent route with no other route: its completion tier",
        DEFAULTS,
        {"stream": [SILENT]},
        ["stream", "completion"],
    ),
    (
        "a silent primary and a failing fallback: the primary's completion tier last",
        WITH_BACKUP,
        {"stream": [SILENT], "backup": [NO_RETRY]},
        ["stream", "backup", "completion"],
    ),
    (
        "a stream that keeps breaking: retried on its tier, then the completion tier",
        DEFAULTS,
        {"stream": [after_content(UpstreamConnectionError("connection error"))] * 3},
        ["stream", "sleep 0.25", "stream", "sleep 0.5", "stream", "completion"],
    ),
    (
        "transport faults do not spend the route's budget",
        DEFAULTS,
        {
            "stream": [after_content(TruncatedStreamError("no finish_reason"))] * 3,
            "completion": [R503, R503],
        },
        [
            "stream",
            "sleep 0.25",
            "stream",
            "sleep 0.5",
            "stream",
            "completion",
            "sleep 0.25",
            "completion",
            "sleep 0.5",
            "completion",
        ],
    ),
    (
        "two 503s, then an answer: retried on the same tier after backoff",
        DEFAULTS,
        {"stream": [R503, R503]},
        ["stream", "sleep 0.25", "stream", "sleep 0.5", "stream"],
    ),
    (
        "quota: every tier of that provider skipped",
        WITH_BACKUP,
        {"stream": [QUOTA]},
        ["stream", "backup"],
    ),
    ("quota with no other provider: the cache", DEFAULTS, {"stream": [QUOTA]}, ["stream", "cache"]),
    (
        "everything down: each route's budget once, then the cache",
        WITH_BACKUP,
        {"stream": [R503] * 9, "backup": [R503] * 9},
        [
            "stream",
            "sleep 0.25",
            "stream",
            "sleep 0.5",
            "stream",
            "backup",
            "sleep 0.25",
            "backup",
            "sleep 0.5",
            "backup",
            "cache",
        ],
    ),
    (
        "a breaker that opens mid-request: the route's next tier takes the retry, after the wait",
        ChainConfig(breaker=BreakerConfig(fail_max=2)),
        {"stream": [R503] * 9},
        ["stream", "sleep 0.25", "stream", "sleep 0.5", "completion"],
    ),
    (
        "one route's own budget (max_attempts per fallback)",
        ChainConfig(
            retry=RetryConfig(max_attempts=1),
            fallbacks=(
                FallbackConfig(
                    name="backup", model="b", base_url="http://127.0.0.1:1/v1", max_attempts=2
                ),
            ),
        ),
        {"stream": [R503], "backup": [R503, R503]},
        ["stream", "backup", "sleep 0.25", "backup", "cache"],
    ),
]


@pytest.mark.parametrize(
    ("config", "script", "expected"),
    [row[1:] for row in TABLE],
    ids=[row[0] for row in TABLE],
)
def test_step_sequences(
    config: ChainConfig, script: dict[str, list[Any]], expected: list[str]
) -> None:
    assert play(config, script) == expected


def test_an_open_breaker_is_skipped_without_an_attempt_or_a_sleep() -> None:
    clock = FakeClock()
    config = ChainConfig(breaker=BreakerConfig(fail_max=1), fallbacks=(BACKUP,))
    tiers = make_tiers(config, clock)
    first = RequestRun(tiers, config, clock=clock, random=lambda: 0.5)
    assert list(_steps(first, {"stream": [R503]}, clock)) == ["stream", "sleep 0.25", "completion"]
    second = RequestRun(tiers, config, clock=clock, random=lambda: 0.5)
    assert list(_steps(second, {}, clock)) == ["stream!", "completion"]


def _woken_early(
    error: Any, *, left: float, then: float = 0.0, attempts: list[Any] | None = None
) -> list[str]:
    """One request's steps when its first sleep ends ``left`` s early: another request's
    failures opened the stream breaker meanwhile (as a driver's real sleep reports it).

    ``then``: seconds that pass before the next ``Acquire`` (a shared store's round trip).
    ``attempts`` receives the run's attempts.
    """
    clock = FakeClock()
    config = ChainConfig(breaker=BreakerConfig(fail_max=2), fallbacks=(BACKUP,))
    tiers = make_tiers(config, clock)
    run = RequestRun(tiers, config, clock=clock, random=lambda: 0.5)
    taken = []
    step = run.next_step()
    assert isinstance(step, Acquire)
    attempt = run.start_attempt(step, step.tier.gate.acquire())
    assert attempt is not None
    error, ttft = error if isinstance(error, tuple) else (error, None)
    run.failed(attempt, error, breaker_opened=attempt.permit.failure(), time_to_first_token=ttft)
    sleep = run.next_step()
    assert isinstance(sleep, Sleep) and sleep.tier is not None and sleep.tier.name == "stream"
    taken.append(f"sleep {sleep.seconds:g} on stream")
    clock.advance(sleep.seconds - left)
    tiers[0].gate.acquire().failure()  # another request's: the breaker opens
    run.woke_early(left)
    clock.advance(then)
    taken += list(_steps(run, {}, clock))
    if attempts is not None:
        attempts.extend(run.attempts)
    return taken


def test_a_routes_wait_cut_short_by_an_opening_is_kept_for_the_routes_next_tier() -> None:
    """Retry-After (or a 5xx's backoff) spaces the provider's requests: the completion tier
    (the same provider) waits the rest; another route would not."""
    assert _woken_early(retry_after(2), left=1.5) == [
        "sleep 2 on stream",
        "stream!",
        "sleep 1.5",
        "completion",
    ]


def test_a_kept_wait_counts_whole_in_the_next_attempts_delay() -> None:
    attempts: list[Any] = []
    _woken_early(retry_after(2), left=1.5, attempts=attempts)
    assert [a.delay_before for a in attempts if a.tier == "completion"] == [2.0]


def test_a_routes_wait_that_ended_meanwhile_is_not_waited_again() -> None:
    """The refusal came 1.6 s after the wake-up (a slow shared store): the 1.5 s are over."""
    assert _woken_early(retry_after(2), left=1.5, then=1.6) == [
        "sleep 2 on stream",
        "stream!",
        "completion",
    ]


def test_a_streams_own_backoff_cut_short_by_an_opening_is_dropped() -> None:
    """A dropped stream's backoff is the stream tier's: once it opens, the next tier at once."""
    assert _woken_early(after_content(UpstreamConnectionError("dropped")), left=0.2) == [
        "sleep 0.25 on stream",
        "stream!",
        "completion",
    ]


def test_no_sleep_is_scheduled_past_the_deadline() -> None:
    config = ChainConfig(retry=RetryConfig(deadline=1.0), fallbacks=(BACKUP,))
    steps = play(config, {"stream": [retry_after(0.8)] * 9})
    assert steps == ["stream", "sleep 0.8", "stream", "backup"]


def test_a_hedge_goes_to_the_next_route_once() -> None:
    clock = FakeClock()
    config = ChainConfig(retry=RetryConfig(hedge_after=1.0), fallbacks=(BACKUP,))
    tiers = make_tiers(config, clock)
    run = RequestRun(tiers, config, clock=clock, random=lambda: 0.5)
    step = run.next_step()
    assert isinstance(step, Acquire)
    attempt = run.start_attempt(step, step.tier.gate.acquire())
    assert attempt is not None and run.hedge_delay(attempt) == 1.0
    target = run.hedge(attempt)
    assert target is not None and target.tier.name == "backup"
    assert run.hedge_delay(attempt) is None  # at most one hedge per request
    hedge = run.start_hedge(target, target.tier.gate.acquire())
    assert hedge is not None
    run.lost_race(attempt)
    attempt.permit.release()
    run.adopt(hedge, attempt)
    hedge.permit.success()
    run.succeeded(hedge, time_to_first_token=0.1)
    assert [(a.tier, a.error) for a in run.attempts] == [
        ("stream", "lost a hedge race"),
        ("backup", None),
    ]
    assert {t.gate.fail_counter for t in tiers} == {0}  # the loser counted by no breaker


def test_whole_first_asks_each_route_for_a_completion_before_its_stream() -> None:
    clock = FakeClock()
    config = ChainConfig(fallbacks=(BACKUP,))
    run = RequestRun(
        make_tiers(config, clock), config, clock=clock, random=lambda: 0.5, whole_first=True
    )
    steps = list(_steps(run, {"completion": [SILENT], "backup": [NO_RETRY]}, clock))
    # silence on a whole completion is still the route's: the other route first, then the
    # primary's stream tier
    assert steps == ["completion", "backup", "stream"]


def test_quota_skips_every_route_on_the_same_account() -> None:
    config = ChainConfig(
        fallbacks=(
            FallbackConfig(name="sibling", model="gpt-4o"),  # the primary's URL and key
            FallbackConfig(name="elsewhere", model="m", base_url="http://127.0.0.1:1/v1"),
        )
    )
    assert play(config, {"stream": [QUOTA]}) == ["stream", "elsewhere"]


# -- the tier plan -------------------------------------------------------------------------

OTHER = FallbackConfig(name="other", model="other-model", base_url="http://127.0.0.1:2/v1")
TWO_FALLBACKS = ChainConfig(fallbacks=(BACKUP, OTHER))


def _names(plan: TierPlan) -> list[str]:
    current = plan.current
    return ([current.name] if current else []) + [t.name for t in plan.ahead()]


@pytest.mark.parametrize(
    ("whole_first", "routes", "moves", "expected"),
    [
        (False, None, [], ["stream", "completion", "backup", "other"]),
        (True, None, [], ["completion", "stream", "backup", "other"]),
        (False, {"primary", "other"}, [], ["stream", "completion", "other"]),
        (False, None, ["tier"], ["completion", "backup", "other"]),
        (False, None, ["route"], ["backup", "other"]),
        (False, None, ["defer"], ["backup", "other", "completion"]),
        (False, None, ["live"], []),
        (False, None, ["defer", "route"], ["other", "completion"]),
    ],
)
def test_the_tier_plan_moves_on(
    whole_first: bool, routes: set[str] | None, moves: list[Any], expected: list[str]
) -> None:
    plan = TierPlan(make_tiers(TWO_FALLBACKS, FakeClock()), whole_first=whole_first, routes=routes)
    for how in moves:
        plan.move_on(how)
    assert _names(plan) == expected


def test_the_tier_plan_jumps_drops_and_finds() -> None:
    tiers = make_tiers(TWO_FALLBACKS, FakeClock())
    plan = TierPlan(tiers, whole_first=False, routes=None)
    stream, completion, backup, other = tiers
    assert plan.hedge_target(stream) is backup
    plan.move_on("defer")  # the primary's completion tier goes behind the fallbacks
    assert plan.hedge_target(backup) is other
    plan.drop_ahead(lambda tier: tier is other)
    assert _names(plan) == ["backup", "completion"]
    assert plan.hedge_target(backup) is None  # the primary was left for silence
    plan.move_on("tier", to=completion)
    assert plan.current is completion
    plan.end()
    assert plan.current is None
