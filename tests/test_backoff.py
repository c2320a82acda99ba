"""Retry decisions and backoff are pure functions: tested without sleeping."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fallbackchain import (
    BreakerOpenError,
    DeadlineExceededError,
    FirstTokenTimeoutError,
    IdleTimeoutError,
    QuotaExceededError,
    RateLimitedError,
    RetryConfig,
    ServerError,
    TruncatedStreamError,
    UpstreamConnectionError,
)
from fallbackchain.chain import ResponseIncompleteError
from fallbackchain.chain._backoff import decide, full_jitter, is_transport_fault

CFG = RetryConfig(
    max_attempts=3, base_delay=0.5, max_delay=8.0, max_retry_after=30.0, deadline=60.0
)


@given(
    retry_index=st.integers(min_value=0, max_value=10_000),
    base=st.floats(min_value=0.0, max_value=100.0),
    cap=st.floats(min_value=0.0, max_value=100.0),
    r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
)
def test_full_jitter_stays_between_zero_and_the_capped_exponential(retry_index, base, cap, r):
    delay = full_jitter(retry_index, base, cap, lambda: r)
    assert 0.0 <= delay <= min(cap, base * 2.0 ** min(retry_index, 64)) + 1e-12


def test_full_jitter_ceiling_doubles_per_retry_until_the_cap():
    top = [full_jitter(n, 0.5, 8.0, lambda: 0.999999) for n in range(7)]
    assert top == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0, 8.0, 8.0], rel=1e-5)


def test_full_jitter_uses_the_whole_range_down_to_zero():
    assert full_jitter(3, 0.5, 8.0, lambda: 0.0) == 0.0


def test_retryable_error_is_retried_with_jittered_backoff():
    d = decide(
        ServerError("HTTP 503", status_code=503),
        attempt=1,
        elapsed=0.0,
        config=CFG,
        random=lambda: 0.5,
    )
    assert (d.action, d.delay) == ("retry", 0.25)


def test_second_retry_draws_from_a_doubled_range():
    d = decide(
        UpstreamConnectionError("drop"), attempt=2, elapsed=0.0, config=CFG, random=lambda: 0.5
    )
    assert d.delay == 0.5


def test_retry_after_is_honoured_exactly():
    err = RateLimitedError("HTTP 429", status_code=429, retry_after=7.0)
    d = decide(err, attempt=1, elapsed=0.0, config=CFG, random=lambda: 0.0)
    assert (d.action, d.delay) == ("retry", 7.0)


def test_retry_after_above_the_maximum_skips_the_route_at_once():
    err = RateLimitedError("HTTP 429", status_code=429, retry_after=31.0)
    d = decide(err, attempt=1, elapsed=0.0, config=CFG)
    assert (d.action, d.delay) == ("next_route", 0.0)


def test_the_route_budget_used_moves_to_the_next_route_without_sleeping():
    d = decide(ServerError("HTTP 500", status_code=500), attempt=3, elapsed=0.0, config=CFG)
    assert (d.action, d.delay) == ("next_route", 0.0)


def test_a_route_may_have_its_own_budget():
    err = ServerError("HTTP 500", status_code=500)
    assert decide(err, attempt=1, elapsed=0.0, config=CFG, max_attempts=1).action == "next_route"
    assert decide(err, attempt=3, elapsed=0.0, config=CFG, max_attempts=5).action == "retry"


def test_a_stream_that_keeps_breaking_moves_to_the_routes_next_tier():
    d = decide(TruncatedStreamError("cut"), attempt=3, elapsed=0.0, config=CFG, transport=True)
    assert (d.action, d.delay) == ("next_tier", 0.0)


def test_a_sleep_that_would_cross_the_deadline_is_never_scheduled():
    err = RateLimitedError("HTTP 429", status_code=429, retry_after=5.0)
    d = decide(err, attempt=1, elapsed=56.0, config=CFG)
    assert d.action == "next_route"


@pytest.mark.parametrize("status", [429, 500, 503])
def test_the_wait_after_a_429_or_5xx_is_never_zero_unless_the_server_said_so(status):
    cls = RateLimitedError if status == 429 else ServerError
    d = decide(cls("x", status_code=status), attempt=1, elapsed=0.0, config=CFG, random=lambda: 0)
    assert (d.action, d.delay) == ("retry", CFG.base_delay / 2)
    said = cls("x", status_code=status, retry_after=0.0)
    assert decide(said, attempt=1, elapsed=0.0, config=CFG).delay == 0.0


@given(
    elapsed=st.floats(min_value=0.0, max_value=120.0),
    attempt=st.integers(min_value=1, max_value=10),
    r=st.floats(min_value=0.0, max_value=1.0, exclude_max=True),
    retry_after=st.one_of(st.none(), st.floats(min_value=0.0, max_value=100.0)),
)
def test_no_decision_ever_sleeps_past_the_deadline(elapsed, attempt, r, retry_after):
    err = RateLimitedError("HTTP 429", status_code=429, retry_after=retry_after)
    d = decide(err, attempt=attempt, elapsed=elapsed, config=CFG, random=lambda: r)
    if d.action == "retry":
        assert elapsed + d.delay < CFG.deadline
        assert attempt < CFG.max_attempts
    else:
        assert d.delay == 0.0


def test_insufficient_quota_skips_every_live_tier():
    err = QuotaExceededError(
        "HTTP 429 insufficient_quota", status_code=429, code="insufficient_quota"
    )
    assert decide(err, attempt=1, elapsed=0.0, config=CFG).action == "skip_live"


def test_deadline_exceeded_skips_every_live_tier():
    assert (
        decide(DeadlineExceededError("late"), attempt=1, elapsed=0.0, config=CFG).action
        == "skip_live"
    )


def test_elapsed_past_deadline_skips_every_live_tier():
    assert (
        decide(ServerError("x", status_code=500), attempt=1, elapsed=60.0, config=CFG).action
        == "skip_live"
    )


@pytest.mark.parametrize("error", [FirstTokenTimeoutError("silent"), IdleTimeoutError("stall")])
def test_a_silent_or_stalled_route_is_not_retried_and_waits_behind_the_other_routes(error):
    assert decide(error, attempt=1, elapsed=0.0, config=CFG).action == "defer_route"


def test_breaker_open_moves_on():
    assert (
        decide(BreakerOpenError("open"), attempt=1, elapsed=0.0, config=CFG).action == "next_tier"
    )


def test_x_should_retry_false_is_honoured_on_the_whole_route():
    err = ServerError("HTTP 503", status_code=503, should_retry=False)
    assert decide(err, attempt=1, elapsed=0.0, config=CFG).action == "next_route"


def test_truncated_stream_is_retried():
    assert decide(TruncatedStreamError("cut"), attempt=1, elapsed=0.0, config=CFG).action == "retry"


@pytest.mark.parametrize(
    ("error", "content_seen", "transport"),
    [
        (TruncatedStreamError("cut"), True, True),
        (UpstreamConnectionError("drop"), True, True),
        (UpstreamConnectionError("refused"), False, False),
        (IdleTimeoutError("stall"), True, False),
        (FirstTokenTimeoutError("silent"), False, False),
        (ServerError("x", status_code=503), False, False),
        (RateLimitedError("x", status_code=429), False, False),
    ],
)
def test_faults_belong_to_the_route_or_to_one_streams_transport(error, content_seen, transport):
    assert is_transport_fault(error, content_seen=content_seen) is transport


def test_a_cut_that_would_recur_is_a_route_fault_even_after_content():
    cut = ResponseIncompleteError("max_output_tokens", None)
    assert is_transport_fault(cut, content_seen=True) is False
    assert decide(cut, attempt=1, elapsed=0.0, config=CFG).action == "next_route"
    steered = ResponseIncompleteError("steered", None)  # another attempt may fix it
    assert is_transport_fault(steered, content_seen=True) is True
