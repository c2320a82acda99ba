"""Failover by route (#13), with the library's default settings and one fallback.

A route is a provider and model: the primary's stream and completion tiers are one route and
share, per request, one retry budget, one backoff sequence and one ``Retry-After``. A silent
route is left at its first-token or idle timeout for the next route, not asked again. A
fallback that rejects a request the primary accepts is skipped, not blamed on the caller.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from fallbackchain import (
    AllTiersFailedError,
    CacheConfig,
    ChainConfig,
    FallbackConfig,
    FirstTokenTimeoutError,
    IdleTimeoutError,
    OpenAIConfig,
    RetryConfig,
    RouteRejectedError,
)
from fallbackchain.testing import Fault, FaultServer

from .conftest import FakeClock, Harness, text_after_last_reset


def defaults(primary: FaultServer, cache_dir: Path, **fallback: Any) -> ChainConfig:
    """The library's defaults (no test profile), the primary at ``primary``, one fallback."""
    return ChainConfig(
        openai=OpenAIConfig(base_url=primary.base_url, model="primary-model"),
        cache=CacheConfig(directory=str(cache_dir)),
        fallbacks=(
            FallbackConfig(
                name="backup",
                model="backup-model",
                base_url="http://127.0.0.1:1/v1",  # replaced by the harness's client
                **fallback,
            ),
        ),
    )


@pytest.fixture
def chain(mode: str, server: FaultServer, backup: FaultServer, tmp_path: Path) -> Iterator[Any]:
    made: list[Harness] = []

    def make(clock: FakeClock, **fallback: Any) -> Harness:
        config = defaults(server, tmp_path / "cache", **fallback)
        h = Harness(mode, config, server, clock, fallback_servers={"backup": backup})
        made.append(h)
        return h

    yield make
    for h in made:
        h.close()


def primary_requests(server: FaultServer) -> int:
    return server.counts["stream"] + server.counts["completion"]


def test_a_persistent_429_asks_the_primary_max_attempts_times_spaced_by_backoff(
    chain, server, backup, clock
):
    h = chain(clock)
    server.default = Fault.status(429)  # no Retry-After
    events, response = h.ask("hello")
    assert response.source == "backup"
    assert text_after_last_reset(events) == response.text
    assert primary_requests(server) == h.chain.config.retry.max_attempts == 3
    assert server.counts["completion"] == 0  # the completion tier is the same rate-limited model
    # full jitter (random 0.5 here) on the route's attempt count, never zero after a 429
    assert clock.sleeps == pytest.approx([0.25, 0.5])
    assert [a.tier for a in response.attempts] == ["stream", "stream", "stream", "backup"]


def test_retry_after_is_honoured_when_the_route_changes_tier(chain, server, backup, clock, mode):
    h = chain(clock)
    # the stream breaker (fail_max 5) opens in the second request; the route's next attempt
    # goes to its completion tier, and still waits what the server asked
    server.push(Fault.status(429, retry_after=2), stream=True, times=5)
    server.push(Fault.status(429, retry_after=2), stream=False)
    _, first = h.ask("one")  # 3 route attempts: the stream tier's failures 3 of 5
    assert first.source == "backup"
    clock.sleeps.clear()
    _, second = h.ask("two")
    assert [a.tier for a in second.attempts] == ["stream", "stream", "completion", "backup"]
    assert clock.sleeps == [2.0, 2.0]  # the breaker opened: the completion tier waited too
    assert h.chain.breaker_states()["stream"] == "open"


def test_a_retry_after_beyond_the_limit_skips_the_route_at_once(chain, server, backup, clock):
    h = chain(clock)
    server.default = Fault.status(429, retry_after=60)  # max_retry_after is 30 s
    _, response = h.ask("hello")
    assert response.source == "backup"
    assert primary_requests(server) == 1
    assert clock.sleeps == []


def test_a_fallback_that_rejects_a_parameter_is_skipped_not_blamed_on_the_caller(
    chain, server, backup, clock
):
    h = chain(clock)
    h.ask("hello")  # cached
    server.default = Fault.status(503)
    backup.default = Fault.status(400, message="stream_options is not supported")
    _, response = h.ask("hello")
    assert response.source == "cache"
    [rejected] = [a for a in response.attempts if a.tier == "backup"]
    assert isinstance(rejected.exception, RouteRejectedError)
    assert isinstance(rejected.exception.__cause__, openai.BadRequestError)
    assert "stream_options" not in (rejected.error or "")  # the server's text is not copied
    assert backup.counts["stream"] == 1  # not retried on the same route
    assert h.chain.breaker_states()["backup"] == "closed"
    assert h.chain.breakers["backup"].fail_counter == 0  # an incompatibility is not an outage
    with pytest.raises(AllTiersFailedError) as info:  # nothing cached: every attempt listed
        h.ask("never cached")
    assert isinstance(info.value.attempts[-1].exception, RouteRejectedError)


def test_a_rejection_from_the_primary_still_reaches_the_caller_unchanged(
    chain, server, backup, clock
):
    h = chain(clock)
    server.default = Fault.status(422, message="bad parameter")
    with pytest.raises(openai.UnprocessableEntityError):
        h.ask("hello")
    assert backup.counts["stream"] == 0
    assert primary_requests(server) == 1


def test_a_prompt_too_long_for_a_fallback_is_still_the_callers(chain, server, backup, clock):
    h = chain(clock)
    server.default = Fault.status(503)
    backup.default = Fault.status(400, error_code="context_length_exceeded")
    with pytest.raises(openai.BadRequestError):
        h.ask("hello")


# --------------------------------------------------------------------------------------------
# Silence, late first tokens and stalls, in real time with the default timeouts
# --------------------------------------------------------------------------------------------

SILENT = {
    "silent": (Fault.slow_first_byte(seconds=40.0), FirstTokenTimeoutError, "first_token_timeout"),
    "first token after 20 s": (
        Fault.stall(after_chunks=0, seconds=20.0),
        FirstTokenTimeoutError,
        "first_token_timeout",
    ),
    "stall mid-answer": (
        Fault.stall(after_chunks=3, seconds=40.0),
        IdleTimeoutError,
        "idle_timeout",
    ),
}


def _one_silent_scenario(mode: str, name: str, tmp_path: Path) -> tuple[str, str, float, Any, int]:
    fault, _, _ = SILENT[name]
    with FaultServer(words=20) as primary, FaultServer(words=10) as fallback:
        primary.default = fault
        config = defaults(primary, tmp_path / f"{mode}-{name}")
        h = Harness(
            mode,
            config,
            primary,
            FakeClock(),
            real_time=True,
            fallback_servers={"backup": fallback},
        )
        try:
            started = time.monotonic()
            events, response = h.ask("hello")
            took = time.monotonic() - started
            assert text_after_last_reset(events) == response.text
            return mode, name, took, response, primary_requests(primary)
        finally:
            h.close()


@pytest.mark.slow
def test_a_silent_late_or_stalled_primary_is_answered_by_the_fallback_within_its_timeout(
    tmp_path: Path,
) -> None:
    # six scenarios (three faults, sync and async) at once: each waits out a default 10-s timeout
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [
            pool.submit(_one_silent_scenario, mode, name, tmp_path)
            for mode in ("sync", "async")
            for name in SILENT
        ]
        results = [f.result(timeout=60) for f in futures]
    defaults_ = OpenAIConfig()
    for mode, name, took, response, asked in results:
        _, error_type, timeout_name = SILENT[name]
        limit = getattr(defaults_, timeout_name) + 1.0
        assert response.source == "backup", (mode, name)
        assert took < limit, (mode, name, took)
        assert asked == 1, (mode, name)  # exactly one request to the silent model
        assert isinstance(response.attempts[0].exception, error_type), (mode, name)


# --------------------------------------------------------------------------------------------
# Per-route settings
# --------------------------------------------------------------------------------------------


def test_a_fallback_that_rejects_stream_options_is_asked_without_them(chain, server, backup, clock):
    h = chain(clock, stream_usage=False)
    server.default = Fault.status(503)
    _, response = h.ask("hello")
    assert response.source == "backup"
    assert "stream_options" not in backup.requests[-1].body
    assert "stream_options" in server.requests[0].body  # the primary still asks for usage


def test_a_fallback_has_its_own_retry_budget(chain, server, backup, clock):
    h = chain(clock, max_attempts=1)
    server.default = Fault.status(503)
    backup.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError) as info:
        h.ask("hello")
    tiers = [a.tier for a in info.value.attempts]
    assert tiers == ["stream", "stream", "stream", "backup"]


@pytest.mark.slow
def test_a_fallback_may_wait_longer_for_its_first_token(
    mode: str, server: FaultServer, backup: FaultServer, tmp_path: Path
) -> None:
    config = ChainConfig(
        openai=OpenAIConfig(
            base_url=server.base_url, model="m", first_token_timeout=0.3, idle_timeout=0.3
        ),
        cache=CacheConfig(directory=str(tmp_path / "cache")),
        fallbacks=(
            FallbackConfig(
                name="backup",
                model="local",
                base_url="http://127.0.0.1:1/v1",
                first_token_timeout=3.0,  # a local model that takes a while to start
            ),
        ),
    )
    server.default = Fault.slow_first_byte(seconds=5.0)
    backup.default = Fault.slow_first_byte(seconds=0.8)  # slower than the primary's limit
    h = Harness(
        mode, config, server, FakeClock(), real_time=True, fallback_servers={"backup": backup}
    )
    try:
        _, response = h.ask("hello")
        assert response.source == "backup"
        assert backup.counts["stream"] == 1
    finally:
        h.close()


# --------------------------------------------------------------------------------------------
# Hedged first token (opt-in: hedge_after)
# --------------------------------------------------------------------------------------------


def hedged(
    mode: str, primary: FaultServer, backup: FaultServer, tmp_path: Path, **retry: Any
) -> Harness:
    config = ChainConfig(
        openai=OpenAIConfig(base_url=primary.base_url, model="primary-model"),
        retry=RetryConfig(**retry),
        cache=CacheConfig(directory=str(tmp_path / "cache")),
        fallbacks=(FallbackConfig(name="backup", model="backup-model", base_url="http://x/v1"),),
    )
    return Harness(
        mode, config, primary, FakeClock(), real_time=True, fallback_servers={"backup": backup}
    )


@pytest.mark.slow
def test_a_silent_primary_is_hedged_and_the_fallback_answers_in_about_hedge_after(
    mode: str, backup: FaultServer, tmp_path: Path
) -> None:
    with FaultServer(words=20) as primary:  # its own: nothing else may keep it busy
        primary.default = Fault.slow_first_byte(seconds=20.0)
        h = hedged(mode, primary, backup, tmp_path, hedge_after=1.0)
        try:
            started = time.monotonic()
            events, response = h.ask("hello")
            took = time.monotonic() - started
            assert response.source == "backup"
            assert 1.0 <= took < 1.5, took
            assert text_after_last_reset(events) == response.text
            assert "".join(e.text for e in events) == response.text  # nothing shown twice
            assert [(a.tier, a.error) for a in response.attempts] == [
                ("stream", "lost a hedge race"),
                ("backup", None),
            ]
            assert primary_requests(primary) == 1
            # the loser is neutral: released, counted by no breaker
            assert {g.fail_counter for g in h.chain.breakers.values()} == {0}
            if mode == "async":  # the losing request was cancelled, its connection closed
                assert h.run(lambda: asyncio.to_thread(primary.wait_idle, 2.0))
            # (sync: a loser still waiting for headers is closed when that wait ends, at most
            # first_token_timeout later; a thread cannot be interrupted)
        finally:
            h.close()


@pytest.mark.slow
def test_a_primary_that_answers_first_wins_the_race_and_the_hedge_is_dropped(
    mode: str, server: FaultServer, backup: FaultServer, tmp_path: Path
) -> None:
    server.default = Fault.slow_first_byte(seconds=0.6)
    backup.default = Fault.slow_first_byte(seconds=2.0)
    h = hedged(mode, server, backup, tmp_path, hedge_after=0.2)
    try:
        events, response = h.ask("hello")
        assert response.source == "stream"
        assert response.text == h.answer("hello")
        assert "".join(e.text for e in events) == response.text
        assert [(a.tier, a.error) for a in response.attempts] == [
            ("backup", "lost a hedge race"),
            ("stream", None),
        ]
        assert backup.counts["stream"] == 1
        assert h.chain.breakers["backup"].fail_counter == 0
    finally:
        h.close()


@pytest.mark.slow
def test_a_hedge_that_fails_leaves_the_primary_to_answer(
    mode: str, server: FaultServer, backup: FaultServer, tmp_path: Path
) -> None:
    server.default = Fault.slow_first_byte(seconds=0.6)
    backup.default = Fault.status(503)
    h = hedged(mode, server, backup, tmp_path, hedge_after=0.2)
    try:
        _, response = h.ask("hello")
        assert response.source == "stream"
        tiers = [(a.tier, type(a.exception).__name__) for a in response.attempts]
        assert tiers == [("backup", "ServerError"), ("stream", "NoneType")]
        assert backup.counts["stream"] == 1  # one hedge per request
    finally:
        h.close()


@pytest.mark.slow
def test_without_another_route_nothing_is_hedged(
    mode: str, server: FaultServer, tmp_path: Path
) -> None:
    config = ChainConfig(
        openai=OpenAIConfig(base_url=server.base_url, model="m"),
        retry=RetryConfig(hedge_after=0.1),
        cache=CacheConfig(directory=str(tmp_path / "cache")),
    )
    server.default = Fault.slow_first_byte(seconds=0.4)
    h = Harness(mode, config, server, FakeClock(), real_time=True)
    try:
        _, response = h.ask("hello")
        assert response.source == "stream"
        assert primary_requests(server) == 1
    finally:
        h.close()


# --------------------------------------------------------------------------------------------
# A per-call timeout (#15): the bound of each attempt, never sent as-is
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_per_call_timeout_bounds_each_attempt(harness_factory, server):
    h = harness_factory(real_time=True, openai__first_token_timeout=5.0, openai__timeout=5.0)
    server.default = Fault.slow_first_byte(seconds=3.0)
    started = time.monotonic()
    with pytest.raises(AllTiersFailedError) as info:
        h.ask("hello", timeout=0.3)
    assert time.monotonic() - started < 2.0  # the route's own 5-s waits would take 10 s
    assert isinstance(info.value.attempts[0].exception, FirstTokenTimeoutError)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "3", True])
def test_a_per_call_timeout_that_is_not_a_positive_number_is_refused(harness, bad):
    with pytest.raises((TypeError, ValueError), match="timeout"):
        harness.ask("hello", timeout=bad)


# --------------------------------------------------------------------------------------------
# complete() ordering (#14): openai.complete_streams
# --------------------------------------------------------------------------------------------


def test_complete_asks_for_a_whole_completion_first_when_told(harness_factory, server):
    h = harness_factory(openai__complete_streams=False)
    response = h.complete("hello")
    assert response.source == "completion"
    assert (server.counts["stream"], server.counts["completion"]) == (0, 1)
    assert response.text == h.answer("hello")
    # stream() is unchanged: it streams
    _, streamed = h.ask("another")
    assert streamed.source == "stream"
    server.push(Fault.status(503), stream=False, times=3)  # the route's budget, then nothing
    with pytest.raises(AllTiersFailedError):
        h.complete("a third")


def test_complete_streams_first_by_default(harness, server):
    assert harness.complete("hello").source == "stream"
    assert (server.counts["stream"], server.counts["completion"]) == (1, 0)


def test_stream_options_never_reach_a_whole_completion(harness, server):
    server.push(Fault.drop(after_chunks=1), stream=True, times=3)  # the stream keeps breaking
    _, response = harness.ask("hello", stream_options={"include_usage": True})
    assert response.source == "completion"
    assert "stream_options" in server.requests[0].body
    assert "stream_options" not in server.requests[-1].body


# --------------------------------------------------------------------------------------------
# What a review of the race found (each failed before its fix)
# --------------------------------------------------------------------------------------------


def test_an_sse_error_before_any_content_is_the_routes_fault(
    harness_factory, server, backup, clock
):
    h = harness_factory(
        fallbacks=(FallbackConfig(name="backup", model="b", base_url="http://x/v1"),),
        fallback_servers={"backup": backup},
    )
    server.default = Fault.sse_error(after_chunks=0)
    _, response = h.ask("hello")
    assert response.source == "backup"
    # the route's budget, not 3 stream tries and 3 more on the completion tier
    assert (server.counts["stream"], server.counts["completion"]) == (3, 0)
    assert clock.sleeps == pytest.approx([0.005, 0.01])  # never under base_delay / 2


@pytest.mark.slow
def test_a_non_streaming_fallback_is_never_hedged_to(
    mode: str, server: FaultServer, backup: FaultServer, tmp_path: Path
) -> None:
    config = ChainConfig(
        openai=OpenAIConfig(base_url=server.base_url, model="primary-model"),
        retry=RetryConfig(hedge_after=0.2),
        cache=CacheConfig(directory=str(tmp_path / "cache")),
        fallbacks=(FallbackConfig(name="backup", model="b", base_url="http://x/v1", stream=False),),
    )
    server.default = Fault.slow_first_byte(seconds=0.6)
    h = Harness(
        mode, config, server, FakeClock(), real_time=True, fallback_servers={"backup": backup}
    )
    try:
        events, response = h.ask("hello")
        assert response.source == "stream"
        assert "".join(e.text for e in events) == response.text
        assert backup.counts["total"] == 0
    finally:
        h.close()


@pytest.mark.slow
def test_a_hedge_never_goes_back_to_a_route_left_for_silence(
    mode: str, backup: FaultServer, tmp_path: Path
) -> None:
    with FaultServer(words=20) as primary:
        primary.default = Fault.stall(after_chunks=2, seconds=5.0)
        backup.default = Fault.slow_first_byte(seconds=1.0)
        config = ChainConfig(
            openai=OpenAIConfig(
                base_url=primary.base_url, model="m", first_token_timeout=0.5, idle_timeout=0.5
            ),
            retry=RetryConfig(hedge_after=0.3),
            cache=CacheConfig(directory=str(tmp_path / "cache")),
            fallbacks=(
                FallbackConfig(
                    name="backup",
                    model="b",
                    base_url="http://x/v1",
                    first_token_timeout=3.0,  # a slow starter: 1 s to its first token
                    idle_timeout=3.0,
                ),
            ),
        )
        h = Harness(
            mode, config, primary, FakeClock(), real_time=True, fallback_servers={"backup": backup}
        )
        try:
            events, response = h.ask("hello")
            assert response.source == "backup"
            assert (primary.counts["stream"], primary.counts["completion"]) == (1, 0)
            assert text_after_last_reset(events) == response.text
        finally:
            h.close()


@pytest.mark.slow
def test_a_retry_after_met_during_a_race_is_remembered(
    mode: str, backup: FaultServer, tmp_path: Path
) -> None:
    with FaultServer(words=20) as primary:
        primary.default = Fault.slow_first_byte(seconds=1.5)
        backup.push(Fault.status(429, retry_after=60), stream=True)  # the hedge is told "60 s"
        config = ChainConfig(
            openai=OpenAIConfig(
                base_url=primary.base_url, model="m", first_token_timeout=0.5, idle_timeout=0.5
            ),
            retry=RetryConfig(hedge_after=0.2),
            cache=CacheConfig(directory=str(tmp_path / "cache")),
            fallbacks=(FallbackConfig(name="backup", model="b", base_url="http://x/v1"),),
        )
        h = Harness(
            mode, config, primary, FakeClock(), real_time=True, fallback_servers={"backup": backup}
        )
        try:
            _, response = h.ask("hello")
            # beyond max_retry_after (30 s): the route is dropped, not asked again at once
            assert backup.counts["total"] == 1
            assert response.source == "completion"  # the silent primary's last resort
        finally:
            h.close()


# --------------------------------------------------------------------------------------------
# How the chain reads an answer: the JSON as sent, not the SDK's models (#14)
# --------------------------------------------------------------------------------------------


def test_an_answer_without_object_and_created_is_read_as_the_sdk_reads_it(
    harness_factory, server
):
    """Some compatible servers leave fields out; the SDK's own models would not validate it."""
    server.default = Fault.sparse()
    h = harness_factory(openai__complete_streams=False)
    whole = h.complete("hello")
    assert (whole.source, whole.text) == ("completion", h.answer("hello"))
    assert whole.completion.created is None and whole.completion.choices[0].finish_reason == "stop"
    events, streamed = h.ask("another")
    assert (streamed.source, streamed.text) == ("stream", h.answer("another"))
    assert text_after_last_reset(events) == streamed.text
    assert streamed.completion.created == 0 and streamed.completion.object == "chat.completion"
    assert server.counts["total"] == 2  # each answered at its first attempt



def test_an_answer_without_object_and_created_is_served_from_the_cache_in_an_outage(
    harness_factory, server, mode
):
    """What the chain accepted live, its cache serves back: memory first, then disk alone."""
    server.default = Fault.sparse()
    h = harness_factory(openai__complete_streams=False)
    live = h.complete("hello")
    assert live.source == "completion" and live.completion.created is None
    h.chain.cache.flush()
    server.default = Fault.status(503)
    held = h.complete("hello")
    assert (held.source, held.text) == ("cache", live.text)
    assert held.completion._request_id is None  # no request was made for it
    assert h.chain.cache.stats().errors == 0  # a hit, not a logged failure read as a miss
    reopened = harness_factory(openai__complete_streams=False)  # memory empty: the disk row
    from_disk = reopened.complete("hello")
    assert (from_disk.source, from_disk.text) == ("cache", live.text)
    assert from_disk.completion.created is None and from_disk.completion.object is None
    assert reopened.chain.cache.stats().errors == 0
