"""Observability: listeners see every step as frozen events; logs stay quiet and private."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import Any

import openai
import pytest

from fallbackchain import AllTiersFailedError, AsyncFallbackChain, FallbackChain
from fallbackchain._hooks import (
    AttemptEnded,
    AttemptStarted,
    BreakerChanged,
    CacheEvent,
    FallbackTaken,
    RequestEnded,
    RequestStarted,
    RetryScheduled,
)
from fallbackchain.testing import Fault

from .conftest import make_config, user


class Recorder:
    def __init__(self):
        self.events = []

    def __getattr__(self, name):
        if name.startswith("on_"):
            return self.events.append
        raise AttributeError(name)


def kinds(events):
    return [type(e).__name__ for e in events]


def test_a_retried_request_reports_every_step_in_order(make_chain, server):
    rec = Recorder()
    chain = make_chain(rec)
    server.push(Fault.status(503), stream=True)
    chain.complete(user("hello"))
    assert kinds(rec.events) == [
        "RequestStarted", "AttemptStarted", "AttemptEnded", "RetryScheduled",
        "AttemptStarted", "AttemptEnded", "CacheEvent", "RequestEnded",
    ]
    failed, ok = [e for e in rec.events if isinstance(e, AttemptEnded)]
    assert (failed.outcome, failed.error_type, failed.status_code) == ("failure", "ServerError", 503)
    assert ok.outcome == "success" and ok.time_to_first_token is not None
    retry = next(e for e in rec.events if isinstance(e, RetryScheduled))
    assert retry.delay == pytest.approx(0.005)
    assert next(e for e in rec.events if isinstance(e, CacheEvent)).kind == "store"
    end = rec.events[-1]
    assert (end.source, end.error, end.attempts) == ("stream", None, 2)
    assert len({e.request_id for e in rec.events}) == 1


def test_fallbacks_cache_hits_and_breaker_changes_are_reported(make_chain, server):
    rec = Recorder()
    chain = make_chain(rec)
    chain.complete(user("hello"))
    server.default = Fault.status(503)
    rec.events.clear()
    chain.complete(user("hello"))
    moves = [(e.from_tier, e.to_tier) for e in rec.events if isinstance(e, FallbackTaken)]
    assert moves == [("stream", "cache")]  # the route's budget spent on its stream tier (#13)
    assert [e.kind for e in rec.events if isinstance(e, CacheEvent)] == ["hit"]
    rec.events.clear()
    with pytest.raises(AllTiersFailedError):
        chain.complete(user("unknown"))  # stream opens mid-request; completion takes the last try
    moves = [(e.from_tier, e.to_tier) for e in rec.events if isinstance(e, FallbackTaken)]
    assert moves == [("stream", "completion"), ("completion", "cache")]
    changes = [(e.tier, e.old, e.new) for e in rec.events if isinstance(e, BreakerChanged)]
    assert changes == [("stream", "closed", "open")]
    assert [e.kind for e in rec.events if isinstance(e, CacheEvent)] == ["miss"]
    assert rec.events[-1].error == "AllTiersFailedError"


def test_closing_early_is_reported_as_abandoned(make_chain, server):
    rec = Recorder()
    chain = make_chain(rec)
    with chain.stream(user("hello")) as stream:
        next(stream)
    ended = [e for e in rec.events if isinstance(e, AttemptEnded)]
    assert [e.outcome for e in ended] == ["abandoned"]
    assert rec.events[-1].error == "GeneratorExit"


def test_a_failing_listener_never_breaks_a_request_and_is_logged_once(make_chain, server, caplog):
    class Broken:
        def on_attempt_start(self, event):
            raise RuntimeError("listener bug")

    chain = make_chain(Broken())
    server.push(Fault.status(503), stream=True)
    assert chain.complete(user("hello")).source == "stream"
    chain.complete(user("hello"))
    assert caplog.text.count("listener Broken.on_attempt_start failed") == 1


def test_events_are_frozen_and_carry_no_prompt(make_chain, server):
    rec = Recorder()
    chain = make_chain(rec)
    server.push(Fault.drop(after_chunks=2), stream=True)
    chain.complete(user("a private prompt"))
    for event in rec.events:
        assert dataclasses.is_dataclass(event)
        assert "a private prompt" not in repr(event)
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.request_id = 0  # type: ignore[misc]
    assert isinstance(rec.events[0], RequestStarted)
    assert isinstance(rec.events[1], AttemptStarted)
    assert isinstance(rec.events[-1], RequestEnded)


def test_info_logs_one_line_per_fallback_and_breaker_change_and_none_per_attempt(make_chain, server, caplog):
    chain = make_chain()
    caplog.set_level(logging.INFO, logger="fallbackchain")
    chain.complete(user("hello"))
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []  # healthy: silent
    server.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):
        chain.complete(user("x"))
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum("fallback: stream -> cache" in m for m in info) == 1  # one budget per route
    assert sum("fallback: stream -> completion" in m for m in info) == 0
    assert sum("breaker stream: closed -> open" in m for m in info) == 0  # fail_max 5 > 3 attempts
    with pytest.raises(AllTiersFailedError):
        chain.complete(user("x"))
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert sum("breaker stream: closed -> open" in m for m in info) == 1
    assert sum("fallback: stream -> completion" in m for m in info) == 1
    assert sum("fallback: completion -> cache" in m for m in info) == 1
    assert not any(m.startswith("attempt ") for m in info)  # per-attempt lines are DEBUG


def test_a_cached_answer_bills_nothing_and_keeps_the_stored_usage_apart(make_chain, server):
    rec = Recorder()
    chain = make_chain(rec)
    live = chain.complete(user("billed once"))
    billed = live.completion.usage
    assert billed is not None and billed.completion_tokens > 0
    server.default = Fault.status(503)
    cached = chain.complete(user("billed once"))
    assert cached.source == "cache"
    usage = cached.completion.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (0, 0, 0)
    assert cached.stored_usage == billed  # what it cost when it was answered
    assert chain.cache.get(chain.cache_key(user("billed once"))).completion.usage == billed
    first, second = [e for e in rec.events if isinstance(e, RequestEnded)]
    assert (first.input_tokens, first.output_tokens) == (
        billed.prompt_tokens,
        billed.completion_tokens,
    )
    assert (second.input_tokens, second.output_tokens) == (0, 0)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_time_the_consumer_holds_any_event_is_not_the_requests(server, tmp_path, clock, mode):
    """``RequestEnded.duration`` is upstream time: the consumer's pauses are not in it, those
    on a cached answer's events included, sync and async alike."""
    rec = Recorder()
    config = make_config(tmp_path, server.base_url)
    held = 60.0  # the consumer holds every event this long

    def hold_every_event_of_two_requests(stream_of: Any) -> None:
        for prompt in ("x", "x"):  # live, then (the upstream down) from the cache
            stream_of(prompt)
            server.default = Fault.status(503)

    if mode == "sync":
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
        chain = FallbackChain(config, client=client, clock=clock, sleep=clock.sleep, listeners=[rec])

        def read(prompt: str) -> None:
            with chain.stream(user(prompt)) as stream:
                for _ in stream:
                    clock.advance(held)

        with chain:
            hold_every_event_of_two_requests(read)
    else:

        async def go() -> None:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test")
            chain = AsyncFallbackChain(
                config, client=client, clock=clock, sleep=clock.async_sleep, listeners=[rec]
            )
            async with chain:
                for prompt in ("x", "x"):
                    async with chain.stream(user(prompt)) as stream:
                        async for _ in stream:
                            clock.advance(held)
                    server.default = Fault.status(503)

        asyncio.run(go())
    live, cached = [e for e in rec.events if isinstance(e, RequestEnded)]
    assert (live.source, cached.source) == ("stream", "cache")
    assert live.duration < held and cached.duration < held
