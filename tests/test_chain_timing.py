"""Deadlines and timeouts in real (short) time, concurrency, and cancellation."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from fallbackchain import (
    AllTiersFailedError,
    DeadlineExceededError,
    FirstTokenTimeoutError,
    IdleTimeoutError,
)
from fallbackchain.testing import Fault

from .conftest import Harness, make_config, text_after_last_reset, user

FAST = {"openai__first_token_timeout": 0.3, "openai__idle_timeout": 0.3, "real_time": True}


def test_a_silent_route_fails_over_at_once_without_retrying(harness_factory, server):
    h = harness_factory(**FAST)
    server.push(Fault.slow_first_byte(seconds=3.0), stream=True)
    started = time.monotonic()
    _, response = h.ask("hello")
    took = time.monotonic() - started
    assert response.source == "completion"
    assert isinstance(response.attempts[0].exception, FirstTokenTimeoutError)
    assert server.counts["stream"] == 1
    assert took < 1.5


def test_a_stall_mid_stream_moves_on_without_duplicating_text(harness_factory, server):
    h = harness_factory(**FAST)
    server.push(Fault.stall(after_chunks=4, seconds=3.0), stream=True)
    started = time.monotonic()
    events, response = h.ask("hello")
    assert time.monotonic() - started < 1.5
    assert isinstance(response.attempts[0].exception, IdleTimeoutError)
    assert response.source == "completion"
    assert text_after_last_reset(events) == response.text == h.answer("hello")
    assert "".join(e.text for e in events) == response.text  # continued, nothing repeated


def test_the_deadline_bounds_the_whole_request(harness_factory, server):
    h = harness_factory(
        retry__deadline=0.5,
        openai__first_token_timeout=5.0,
        openai__idle_timeout=5.0,
        openai__timeout=5.0,
        real_time=True,
    )
    server.default = Fault.slow_first_byte(seconds=3.0)
    started = time.monotonic()
    with pytest.raises(AllTiersFailedError) as info:
        h.ask("hello")
    assert time.monotonic() - started < 1.5
    assert any(
        isinstance(a.exception, DeadlineExceededError | FirstTokenTimeoutError)
        for a in info.value.attempts
    )


def test_concurrent_streams_are_not_serialised(harness_factory, server, mode):
    h = harness_factory(real_time=True)
    server.default = Fault.slow_first_byte(seconds=0.4)
    n = 8
    started = time.monotonic()
    if mode == "sync":
        results = []
        threads = [
            threading.Thread(target=lambda: results.append(h.ask("hello"))) for _ in range(n)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        assert len(results) == n
    else:

        async def many():
            async def one():
                return [e async for e in h.chain.stream(user("hello"))]

            return await asyncio.gather(*(one() for _ in range(n)))

        assert len(h.run(many)) == n
    assert time.monotonic() - started < 0.4 * n / 2  # far less than one after another
    assert server.counts["max_active"] >= 2


def test_cancelling_an_async_consumer_is_neutral(server, clock, tmp_path):
    h = Harness("async", make_config(tmp_path, server.base_url), server, clock, real_time=True)
    server.default = Fault.stall(after_chunks=2, seconds=5.0)

    async def go():
        async def consume():
            async for _ in h.chain.stream(user("hello")):
                pass

        task = asyncio.create_task(consume())
        await asyncio.sleep(0.2)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        h.run(go)
        assert h.chain.breakers["stream"].fail_counter == 0
        assert h.chain.breaker_states()["stream"] == "closed"
    finally:
        h.close()


def test_while_the_one_half_open_probe_is_in_flight_others_skip_the_tier_at_once(
    server, clock, tmp_path
):
    h = Harness("sync", make_config(tmp_path, server.base_url), server, clock)
    try:
        server.default = Fault.status(503)
        for _ in range(2):
            with pytest.raises(AllTiersFailedError):
                h.ask("x")
        clock.advance(h.chain.config.breaker.reset_timeout + 0.1)
        server.clear()
        server.push(Fault.slow_first_byte(seconds=0.6), stream=True)  # the probe is slow
        probe_result = []
        probe = threading.Thread(target=lambda: probe_result.append(h.ask("hello")))
        probe.start()
        deadline = time.monotonic() + 5
        while server.counts["active"] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        _, other = h.ask("hello")  # arrives while the probe waits for its first byte
        assert time.monotonic() - started < 0.4
        assert other.attempts[0].error == "stream breaker is open"
        probe.join(5)
        assert probe_result[0][1].source == "stream"
        assert h.chain.breaker_states()["stream"] == "closed"
    finally:
        h.close()
