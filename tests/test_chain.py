"""The chain, end to end: the real openai client (sync and async) against the fault server.

Every test runs twice (``mode`` = sync, async). Backoff sleeps and breaker timers use an
injected fake clock, so nothing here really sleeps except the explicit timeout tests.
"""

from __future__ import annotations

import openai
import pytest

from fallbackchain import (
    AllTiersFailedError,
    BreakerBusyError,
    BreakerOpenError,
    FallbackChainError,
    MalformedChunkError,
    QuotaExceededError,
    ServerError,
    StreamEventError,
    StreamNotFinishedError,
    TruncatedStreamError,
    UpstreamConnectionError,
)
from fallbackchain.testing import Fault

from .conftest import text_after_last_reset

# -- the happy path ------------------------------------------------------------------------


def test_healthy_stream_delivers_the_answer_as_deltas(harness, server):
    events, response = harness.ask("hello")
    assert all(e.type == "delta" and e.source == "stream" for e in events)
    assert "".join(e.text for e in events) == harness.answer("hello") == response.text
    assert len(events) > 5  # streamed, not buffered
    assert response.source == "stream"
    assert [a.tier for a in response.attempts] == ["stream"]
    assert response.attempts[0].error is None
    assert response.completion.choices[0].finish_reason == "stop"
    assert response.completion.usage is not None
    assert server.counts["stream"] == 1


def test_complete_returns_the_same_answer_through_the_stream_tier(harness, server):
    response = harness.complete("hello")
    assert response.text == harness.answer("hello")
    assert response.source == "stream"
    assert server.counts["completion"] == 0


def test_response_is_not_available_before_the_stream_ends(harness):
    stream = harness.chain.stream([{"role": "user", "content": "x"}])
    with pytest.raises(StreamNotFinishedError):
        _ = stream.response
    if harness.mode == "sync":
        stream.close()
    else:
        harness.run(stream.aclose)


def test_model_none_means_the_configured_model(harness, server):
    harness.ask("hello")
    assert server.requests[-1].body["model"] == harness.chain.config.openai.model


def test_params_reach_the_api(harness, server):
    harness.ask("hello", temperature=0.2, max_tokens=50)
    body = server.requests[-1].body
    assert (body["temperature"], body["max_tokens"]) == (0.2, 50)


# -- mid-stream failures: retried, never duplicated ------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        (Fault.drop(after_chunks=4), UpstreamConnectionError),
        (Fault.early_end(after_chunks=4), TruncatedStreamError),
        (Fault.sse_error(after_chunks=4), StreamEventError),
        (Fault.malformed(after_chunks=4), MalformedChunkError),
    ],
)
def test_a_broken_stream_is_retried_without_duplicating_text(harness, server, fault, error_type):
    server.push(fault, stream=True)
    events, response = harness.ask("hello")
    answer = harness.answer("hello")
    assert response.text == answer
    assert text_after_last_reset(events) == answer
    # the retry repeated the same text, so only the new part was delivered: no reset needed
    assert [e.type for e in events].count("reset") == 0
    assert "".join(e.text for e in events) == answer
    assert response.source == "stream"
    assert [type(a.exception) for a in response.attempts] == [error_type, type(None)]
    assert server.counts["stream"] == 2


def test_silent_truncation_is_never_accepted_as_complete(harness, server):
    server.push(Fault.early_end(after_chunks=3), stream=True, times=3)
    events, response = harness.ask("hello")
    stream_attempts = [a for a in response.attempts if a.tier == "stream"]
    assert [type(a.exception) for a in stream_attempts] == [TruncatedStreamError] * 3
    assert response.source == "completion"
    assert response.text == harness.answer("hello")
    assert text_after_last_reset(events) == response.text
    # only the complete answer reached the cache, never the truncated one
    key = harness.chain.cache_key([{"role": "user", "content": "hello"}])
    assert harness.chain.cache.get(key).completion.choices[0].message.content == response.text


def test_a_replacement_that_differs_from_shown_text_is_preceded_by_a_reset(harness, server):
    harness.ask("hello")  # cached: the server's answer for "hello"
    server.clear()
    server.reset_counts()
    # a stream that shows text, then an outage: the cache answer differs from what was shown
    server.push(Fault.drop(after_chunks=3), stream=True)
    server.default = Fault.status(503)
    cache = harness.chain.cache
    original, held = cache.get, cache.get_held  # async chains ask the memory layer first
    cache.get = lambda key: _with_text(original(key), "a different cached answer")
    cache.get_held = lambda key: _with_text(held(key), "a different cached answer")
    events, response = harness.ask("hello")
    assert response.source == "cache"
    assert "reset" in [e.type for e in events]
    assert text_after_last_reset(events) == "a different cached answer" == response.text


def _with_text(cached, text):
    import dataclasses

    if cached is None:
        return None

    completion = cached.completion.model_copy(deep=True)
    completion.choices[0].message.content = text
    return dataclasses.replace(cached, completion=completion)


# -- status errors, Retry-After, the SDK's own retries ----------------------------------------


def test_5xx_is_retried_with_full_jitter_on_the_same_route(harness, server, clock):
    server.push(Fault.status(503), stream=True, times=2)
    _, response = harness.ask("hello")
    assert response.source == "stream"
    assert response.text == harness.answer("hello")
    assert [a.tier for a in response.attempts] == ["stream"] * 3
    # random() is pinned to 0.5: U(0, 0.01 * 2^n) -> 0.005, 0.01
    assert clock.sleeps == pytest.approx([0.005, 0.01])
    assert isinstance(response.attempts[0].exception, ServerError)
    assert response.attempts[0].status_code == 503


def test_a_persistent_5xx_spends_the_routes_budget_once_not_once_per_tier(harness, server, clock):
    """A 5xx describes the model: its stream and completion tiers share one budget (#13)."""
    server.push(Fault.status(503), stream=True, times=3)
    with pytest.raises(AllTiersFailedError) as info:
        harness.ask("hello")
    assert [a.tier for a in info.value.attempts] == ["stream"] * 3
    assert server.counts["completion"] == 0
    assert clock.sleeps == pytest.approx([0.005, 0.01])


def test_a_stream_that_keeps_breaking_falls_back_to_the_routes_completion_tier(
    harness, server, clock
):
    """A drop after content is one stream's transport: the completion tier still answers."""
    server.push(Fault.drop(after_chunks=2), stream=True, times=3)
    events, response = harness.ask("hello")
    assert response.source == "completion"
    assert [a.tier for a in response.attempts] == ["stream"] * 3 + ["completion"]
    assert text_after_last_reset(events) == harness.answer("hello")
    assert len(clock.sleeps) == 2  # backoff between the stream's tries; none before completion


def test_sdk_retries_are_switched_off_even_on_an_injected_client(harness_factory, server):
    h = harness_factory(sdk_max_retries=5)
    server.default = Fault.status(500)
    with pytest.raises(AllTiersFailedError):
        h.ask("hello")
    assert server.counts["stream"] == 3  # max_attempts, not 3 * (1 + 5)
    assert server.counts["completion"] == 0  # one budget per route, whichever tier (#13)


def test_retry_after_is_honoured(harness, server, clock):
    server.push(Fault.status(429, retry_after=1.5), stream=True)
    _, response = harness.ask("hello")
    assert clock.sleeps == [1.5]
    assert response.attempts[0].retry_after == 1.5
    assert response.attempts[1].delay_before == 1.5


def test_retry_after_ms_is_honoured(harness, server, clock):
    server.push(Fault.status(429, retry_after_ms=250), stream=True)
    harness.ask("hello")
    assert clock.sleeps == [0.25]


def test_retry_after_above_the_maximum_skips_the_route_at_once(harness, server, clock):
    server.push(Fault.status(429, retry_after=60), stream=True)
    with pytest.raises(AllTiersFailedError) as info:
        harness.ask("hello")
    assert clock.sleeps == []
    assert [a.tier for a in info.value.attempts] == ["stream"]
    assert server.counts["stream"] == 1
    assert server.counts["completion"] == 0  # the same model, asked to wait 60 s (#13)


def test_x_should_retry_false_is_honoured_on_the_whole_route(harness, server, clock):
    server.push(Fault.status(503, should_retry=False), stream=True)
    with pytest.raises(AllTiersFailedError):
        harness.ask("hello")
    assert server.counts["stream"] == 1
    assert server.counts["completion"] == 0


def test_x_should_retry_true_makes_an_odd_status_retryable(harness, server):
    server.push(Fault.status(418, should_retry=True), stream=True)
    _, response = harness.ask("hello")
    assert response.source == "stream"
    assert server.counts["stream"] == 2


def test_no_sleep_ever_crosses_the_deadline(harness_factory, server, clock):
    h = harness_factory(retry__deadline=1.0, retry__max_retry_after=5.0)
    server.default = Fault.status(429, retry_after=2)
    with pytest.raises(AllTiersFailedError):
        h.ask("hello")
    assert clock.sleeps == []


# -- errors that are the caller's own: propagate unchanged ---------------------------------


@pytest.mark.parametrize(
    ("status", "exc_type", "code"),
    [
        (400, openai.BadRequestError, None),
        (400, openai.BadRequestError, "context_length_exceeded"),
        (401, openai.AuthenticationError, None),
        (403, openai.PermissionDeniedError, None),
        (404, openai.NotFoundError, None),
        (422, openai.UnprocessableEntityError, None),
    ],
)
def test_client_errors_propagate_unchanged_unretried_and_uncounted(
    harness, server, status, exc_type, code
):
    server.push(Fault.status(status, error_code=code), stream=True)
    with pytest.raises(exc_type) as info:
        harness.ask("hello")
    assert type(info.value) is exc_type
    assert server.counts["total"] == 1
    assert {g.fail_counter for g in harness.chain.breakers.values()} == {0}


# -- quota, outages, the cache ---------------------------------------------------------------


def test_insufficient_quota_skips_live_tiers_and_the_cache_answers(harness, server):
    harness.ask("hello")  # warm the cache
    server.reset_counts()
    server.push(Fault.status(429, error_code="insufficient_quota", error_type="insufficient_quota"))
    _, response = harness.ask("hello")
    assert response.source == "cache"
    assert response.text == harness.answer("hello")
    assert server.counts["total"] == 1  # not retried, completion tier skipped
    assert isinstance(response.attempts[0].exception, QuotaExceededError)
    assert harness.chain.breakers["stream"].fail_counter == 1


def test_outage_with_a_cached_answer_serves_it(harness, server, clock):
    harness.ask("hello")
    server.default = Fault.status(503)
    clock.advance(10)
    events, response = harness.ask("hello")
    assert response.source == "cache"
    assert response.cache_age == pytest.approx(10, abs=1)
    assert text_after_last_reset(events) == harness.answer("hello")
    assert response.completion.choices[0].message.content == response.text


def test_outage_without_a_cached_answer_raises_one_error_listing_every_attempt(harness, server):
    server.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError) as info:
        harness.ask("never asked before")
    tiers = [a.tier for a in info.value.attempts]
    assert tiers == ["stream"] * 3  # one budget for the route (#13)
    assert "never asked before" not in str(info.value)
    assert "HTTP 503" in str(info.value)
    assert isinstance(info.value, FallbackChainError)


def test_open_breakers_answer_from_cache_without_touching_the_network(harness, server):
    harness.ask("hello")
    server.default = Fault.status(503)
    # 3 failures per request on the route: the stream breaker opens within the second request,
    # then the completion tier takes the route's tries until its own breaker opens
    for _ in range(4):
        with pytest.raises(AllTiersFailedError):
            harness.ask("other prompt")
    assert harness.chain.breaker_states() == {"stream": "open", "completion": "open"}
    assert server.counts["total"] == 1 + 5 + 5  # fail_max per tier, as before routes
    before = server.counts["total"]
    _, response = harness.ask("hello")
    assert response.source == "cache"
    assert server.counts["total"] == before
    assert [a.error for a in response.attempts] == [
        "stream breaker is open",
        "completion breaker is open",
    ]


def test_a_probe_closes_the_breakers_when_the_api_recovers(harness, server, clock):
    server.default = Fault.status(503)
    for _ in range(2):
        with pytest.raises(AllTiersFailedError):
            harness.ask("x")
    assert harness.chain.breaker_states()["stream"] == "open"
    server.default = Fault.ok()
    clock.advance(harness.chain.config.breaker.reset_timeout + 0.1)
    _, response = harness.ask("hello")
    assert response.source == "stream"
    assert harness.chain.breaker_states()["stream"] == "closed"


def test_every_complete_live_answer_is_written_through(harness, server):
    _, response = harness.ask("hello")
    cached = harness.chain.cache.get(
        harness.chain.cache_key([{"role": "user", "content": "hello"}])
    )
    assert cached is not None
    assert cached.completion.choices[0].message.content == response.text


def test_content_filtered_answers_are_never_cached(harness, server):
    server.push(Fault.finish("content_filter"), stream=True)
    _, response = harness.ask("hello")
    assert response.completion.choices[0].finish_reason == "content_filter"
    assert harness.chain.cache.stats().stores == 0


def test_transport_options_do_not_change_the_cache_key(harness, server):
    harness.ask("hello", extra_headers={"x-trace": "1"})
    server.default = Fault.status(503)
    _, response = harness.ask("hello", extra_headers={"x-trace": "2"})
    assert response.source == "cache"


def test_answer_shaping_params_do_change_the_cache_key(harness, server):
    harness.ask("hello", temperature=0)
    server.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):
        harness.ask("hello", temperature=1)


# -- closing early and cancellation are neutral -------------------------------------------------


def test_closing_a_stream_early_is_not_a_failure(harness, server):
    if harness.mode == "sync":
        with harness.chain.stream([{"role": "user", "content": "hello"}]) as stream:
            next(stream)
            next(stream)
    else:

        async def go():
            async with harness.chain.stream([{"role": "user", "content": "hello"}]) as stream:
                await anext(stream)
                await anext(stream)

        harness.run(go)
    assert harness.chain.breakers["stream"].fail_counter == 0
    assert harness.chain.breaker_states()["stream"] == "closed"
    assert server.wait_idle(5.0)  # the connection was released


def test_a_half_open_probe_abandoned_early_frees_the_probe_slot(harness, server, clock):
    server.default = Fault.status(503)
    for _ in range(2):
        with pytest.raises(AllTiersFailedError):
            harness.ask("x")
    server.default = Fault.ok()
    clock.advance(harness.chain.config.breaker.reset_timeout + 0.1)
    if harness.mode == "sync":
        with harness.chain.stream([{"role": "user", "content": "hello"}]) as stream:
            next(stream)
    else:

        async def go():
            async with harness.chain.stream([{"role": "user", "content": "hello"}]) as stream:
                await anext(stream)

        harness.run(go)
    assert harness.chain.breaker_states()["stream"] == "half-open"
    _, response = harness.ask("hello")
    assert response.source == "stream"


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504])
def test_every_retryable_status_is_retried_on_the_same_tier(harness, server, status):
    server.push(Fault.status(status), stream=True)
    _, response = harness.ask("hello")
    assert response.source == "stream"
    assert server.counts["stream"] == 2
    assert response.attempts[0].status_code == status


def test_a_breaker_that_opens_mid_request_stops_the_retries_at_once(harness_factory, server, clock):
    h = harness_factory(breaker__fail_max=2, retry__max_attempts=3)
    server.push(Fault.status(503), stream=True, times=3)
    _, response = h.ask("hello")
    assert server.counts["stream"] == 2  # the third try was refused by the now-open breaker
    assert response.source == "completion"
    assert [a.tier for a in response.attempts] == ["stream", "stream", "completion"]
    # no sleep before the third stream try, which the open breaker refuses; the route's
    # backoff before its completion tier (never zero after a 5xx, #13)
    assert clock.sleeps == pytest.approx([0.005, 0.01])


def test_a_client_error_is_not_counted_as_a_success_either(harness, server):
    """pybreaker counts excluded errors as successes (resetting the count); the chain doesn't."""
    server.push(Fault.status(500), stream=True, times=2)
    server.push(Fault.status(400), stream=True)
    with pytest.raises(openai.BadRequestError):
        harness.ask("hello")  # two stream failures, then the third try is the caller's 400
    assert harness.chain.breakers["stream"].fail_counter == 2


# --------------------------------------------------------------------------------------------
# Doubt: a breaker that has not seen the upstream answer lets fail_max attempts in at once
# --------------------------------------------------------------------------------------------


def test_a_burst_into_an_outage_costs_at_most_fail_max_requests_per_tier(harness_factory, server):
    """pybreaker admits every caller of a closed breaker, so a burst of N costs N per tier."""
    h = harness_factory(breaker__fail_max=3, breaker__reset_timeout=3600.0)
    server.default = Fault.status(503)
    results = h.burst(12)
    assert all(isinstance(out, AllTiersFailedError) for out, _ in results)
    assert server.counts["stream"] == 3
    assert server.counts["completion"] == 3
    assert {h.chain.breakers[t].state for t in ("stream", "completion")} == {"open"}


@pytest.mark.slow
def test_a_burst_at_a_cold_start_waits_only_for_the_first_content(harness_factory, server):
    """Callers over the limit wait for a trial's first content, then all go: nobody fails."""
    h = harness_factory(breaker__fail_max=3)
    # The three trials' streams pause after their first words (under the read timeout).
    server.push(Fault.stall(after_chunks=2, seconds=0.6), stream=True, times=3)
    results = h.burst(12)
    assert [out.source for out, _ in results] == ["stream"] * 12
    assert server.counts["total"] == 12
    stalled = {r.body["messages"][0]["content"] for r in server.requests if r.fault.kind == "stall"}
    assert len(stalled) == 3
    ended = {out.text: at for out, at in results}
    prompts = {h.answer(f"burst {i}"): f"burst {i}" for i in range(12)}
    trial_ends = [at for text, at in ended.items() if prompts[text] in stalled]
    other_ends = [at for text, at in ended.items() if prompts[text] not in stalled]
    # The nine were let in at the trials' first content, not after a whole answer.
    assert max(other_ends) < min(trial_ends)


@pytest.mark.slow
def test_a_burst_on_a_non_streamed_tier_waits_as_long_as_a_trial_may_take(harness_factory, server):
    """A non-streamed trial proves itself only by answering: waiters wait up to openai.timeout."""
    h = harness_factory(
        real_time=True,
        breaker__fail_max=1,
        breaker__reset_timeout=60.0,
        openai__first_token_timeout=0.2,
        openai__timeout=5.0,
    )
    h.chain.breakers["stream"].acquire().failure()  # open: only the completion tier is live
    server.push(Fault.stall(seconds=0.5), stream=False, times=1)  # the trial answers in 0.5 s
    results = h.burst(4)
    assert [getattr(out, "source", out) for out, _ in results] == ["completion"] * 4


def test_a_busy_wait_ends_when_a_trial_could_have_proved_itself(harness_factory, server, clock):
    """Trials that never settle hold other callers for first_token_timeout at most."""
    h = harness_factory(breaker__fail_max=2, retry__max_attempts=1)
    gate = h.chain.breakers["stream"]
    held = [gate.acquire(), gate.acquire()]  # two trials in flight, as if in other threads
    assert all(p.limited for p in held)
    waits: list[float] = []

    def wait(seconds: float, *, since: int | None = None) -> None:
        waits.append(seconds)
        clock.advance(seconds)

    async def await_change(seconds: float, *, since: int | None = None) -> None:
        wait(seconds)

    gate.wait = wait  # type: ignore[method-assign]
    gate.await_change = await_change  # type: ignore[method-assign]
    _, response = h.ask("hello")
    assert response.source == "completion"
    busy = response.attempts[0]
    assert isinstance(busy.exception, BreakerBusyError)
    assert isinstance(busy.exception, BreakerOpenError)  # code handling "open" handles it too
    limit = h.chain.config.openai.first_token_timeout
    assert busy.duration == pytest.approx(limit)
    assert sum(waits) == pytest.approx(limit)
    assert waits[:4] == pytest.approx([0.025, 0.05, 0.1, 0.2])  # doubling, then at most 0.2
    assert max(waits) <= 0.2
    assert server.counts["stream"] == 0


def test_a_request_is_keyed_only_when_a_cache_or_a_listener_uses_the_key(
    make_chain, monkeypatch
):
    """The cache key is work on every request's path: not done when nothing reads it."""
    from fallbackchain.chain._endpoint import ChatEndpoint

    keyed: list[str] = []
    original = ChatEndpoint.cache_key

    def counting(self, request):
        keyed.append(request["model"])
        return original(self, request)

    monkeypatch.setattr(ChatEndpoint, "cache_key", counting)
    started: list[object] = []

    class Listener:
        def on_request_start(self, event):
            started.append(event.key)

    plain = make_chain(cache__enabled=False)
    plain.complete([{"role": "user", "content": "hi"}])
    plain.complete([{"role": "user", "content": "hi"}], cache="off")
    assert keyed == []  # no cache: nothing would read the key
    assert plain.cache_key([{"role": "user", "content": "hi"}]).startswith("fc1-")
    assert len(keyed) == 1  # asked for: still given

    cached = make_chain()
    cached.complete([{"role": "user", "content": "hi"}])
    assert len(keyed) == 2  # read and written under it
    cached.complete([{"role": "user", "content": "hi"}], cache="off")
    assert len(keyed) == 2  # the call switched the cache off

    heard = make_chain(Listener(), cache__enabled=False)
    heard.complete([{"role": "user", "content": "hi"}])
    assert len(keyed) == 3 and started[-1].startswith("fc1-")  # RequestStarted.key
