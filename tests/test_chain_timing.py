"""Deadlines and timeouts in real (short) time, concurrency, and cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow  # about a second of real-time first-byte delays per mode
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_the_idle_watchdog_follows_a_consumer_that_waits_from_new_tasks(tmp_path):
    """asyncio.wait_for runs each anext in a new task on 3.11: a stall must still be caught.

    A stub stream stalls *inside* anext (as a slow-drip body does), so the SDK's per-read
    timeout cannot catch it first: only the chain's own watchdog can. Every other test here
    uses the real client; this one isolates the watchdog.
    """
    from openai.types.chat import ChatCompletion, ChatCompletionChunk

    from fallbackchain import AsyncFallbackChain

    def chunk(text):
        return ChatCompletionChunk.model_validate(
            {
                "id": "c",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "m",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
            }
        )

    class StallingStream:
        def __init__(self):
            self.sent = 0

        async def __aenter__(self):
            return self

        async def __aexit__(self, *exc):
            return None

        def __aiter__(self):
            return self

        async def __anext__(self):
            if self.sent == 3:
                await asyncio.sleep(30)  # bytes trickle, no chunk completes
            self.sent += 1
            return chunk(f"w{self.sent} ")

    answer = ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 1,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "logprobs": None,
                    "message": {"role": "assistant", "content": "w1 w2 w3 w4"},
                }
            ],
        }
    )

    class Completions:
        async def create(self, **kwargs):
            return StallingStream() if kwargs["stream"] else answer

    class StubClient:
        chat = type("Chat", (), {"completions": Completions()})()

        def with_options(self, **kwargs):
            return self

    config = make_config(tmp_path, openai__idle_timeout=0.3, openai__first_token_timeout=0.3)
    chain = AsyncFallbackChain(config, client=StubClient())

    async def go():
        stream = chain.stream(user("hello"))
        events, it = [], aiter(stream)
        while True:
            try:
                events.append(await asyncio.wait_for(anext(it), 5))
            except StopAsyncIteration:
                await chain.aclose()
                return events, stream.response

    started = time.monotonic()
    events, response = asyncio.run(go())
    assert time.monotonic() - started < 2.0
    assert isinstance(response.attempts[0].exception, IdleTimeoutError)
    assert response.source == "completion"
    assert text_after_last_reset(events) == "w1 w2 w3 w4"


@pytest.mark.slow
def test_a_cancel_while_settling_a_shared_breaker_never_leaks_the_probe(server, clock, tmp_path):
    """With a store that awaits (Redis), cancelling the consumer mid-settle must still settle."""
    from fallbackchain.breaker import MemoryGateStore

    class SlowStore(MemoryGateStore):
        async def aapply(self, step):
            if step.kind == "success":
                await asyncio.sleep(0.2)
            return self.apply(step)

    h = Harness("async", make_config(tmp_path, server.base_url), server, clock)
    gate = h.chain.breakers["stream"]
    gate._store = SlowStore()
    for _ in range(5):
        gate.acquire().failure()
    clock.advance(h.chain.config.breaker.reset_timeout + 1)

    async def go():
        task = asyncio.create_task(h.chain.complete(user("hello")))
        await asyncio.sleep(0.1)  # the probe's stream is done; it is settling now
        while not task.done() and server.counts["stream"] == 0:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.3)  # the shielded settle finishes

    try:
        h.run(go)
        assert gate.state == "closed"  # the probe's success was recorded despite the cancel
    finally:
        h.close()


def _two_requests(h: Any, server: Any, expect: Any = None) -> dict[str, Any]:
    """A, then B once A's first request reached the server; each one's (seconds, outcome)."""
    took: dict[str, Any] = {}

    def outcome(name: str, run: Any) -> None:
        started = time.monotonic()
        try:
            result: Any = run()
        except AllTiersFailedError as exc:
            result = exc
        took[name] = (time.monotonic() - started, result)

    if h.mode == "sync":
        a = threading.Thread(target=outcome, args=("a", lambda: h.ask("a")[1]))
        a.start()
        while server.counts["total"] < 1:
            time.sleep(0.005)
        outcome("b", lambda: h.ask("b")[1])
        a.join(10)
        return took

    async def drain(name: str) -> Any:
        async with h.chain.stream(user(name)) as stream:
            async for _ in stream:
                pass
            return stream.response

    async def both() -> None:
        async def one(name: str) -> None:
            started = time.monotonic()
            try:
                result: Any = await drain(name)
            except AllTiersFailedError as exc:
                result = exc
            took[name] = (time.monotonic() - started, result)

        a = asyncio.ensure_future(one("a"))
        while server.counts["total"] < 1:
            await asyncio.sleep(0.005)
        await one("b")
        await a

    h.loop.run_until_complete(both())
    return took


SLOW_BACKOFF = {
    "real_time": True,
    "random": lambda: 0.99,  # each backoff sleeps 0.99 of its bound: 1.98 s
    "breaker__fail_max": 2,
    "retry__max_attempts": 2,
    "retry__base_delay": 2.0,
    "retry__max_delay": 2.0,
}


@pytest.mark.slow
def test_a_streams_backoff_ends_when_another_request_opens_the_breaker(harness_factory, server):
    """A dropped stream's backoff is its own: once the breaker opens, the next tier at once.

    A's stream drops after content and A sleeps 1.98 s before retrying the stream tier; B's
    drop opens the stream breaker. A's retry would be refused: it goes on to the completion
    tier without sleeping the rest, as B (whose failure opened it) does.
    """
    h = harness_factory(**SLOW_BACKOFF)
    server.push(Fault.drop(after_chunks=2), stream=True, times=None)
    took = _two_requests(h, server)
    (a_took, a), (b_took, b) = took["a"], took["b"]
    assert (a.source, b.source) == ("completion", "completion")
    assert a_took < 1.0  # without the wake-up: at least 1.98 s
    assert b_took < 1.0
    assert h.chain.breaker_states()["stream"] == "open"


@pytest.mark.slow
def test_a_routes_retry_after_is_kept_when_another_request_opens_the_breaker(
    harness_factory, server
):
    """A wait the route asked for (Retry-After, a backoff after a 5xx) is the route's.

    A gets a 429 with Retry-After: 2 and waits; B's 429 opens the stream breaker. A wakes,
    its stream retry refused, but the completion tier is the same provider: A waits out the
    rest of the 2 s before asking it, as B does.
    """
    h = harness_factory(**SLOW_BACKOFF)
    server.default = Fault.status(429, retry_after=2)
    took = _two_requests(h, server)
    assert took["a"][0] >= 1.9  # without the carry-over: about 0.05 s
    assert took["b"][0] >= 1.9
    assert isinstance(took["a"][1], AllTiersFailedError)
