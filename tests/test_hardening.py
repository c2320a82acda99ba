"""Caller mistakes, a closed chain and stepped clocks (issue #11, items 1, 2 and 4).

Every test drives the real openai client over loopback against the fault server.
"""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from fallbackchain import (
    AllTiersFailedError,
    AsyncFallbackChain,
    ChainClosedError,
    FallbackChain,
)
from fallbackchain.testing import Fault

from .conftest import FakeClock, make_config, user

# Requests the SDK refuses to build: nothing reaches the network.
UNSENDABLE: list[tuple[str, dict[str, Any]]] = [
    ("lone surrogate", {"messages": user("\ud800")}),
    ("object in content", {"messages": [{"role": "user", "content": object()}]}),
    ("set as a parameter", {"messages": user("hi"), "temperature": {1}}),
]


@pytest.mark.parametrize(("label", "request_"), UNSENDABLE, ids=[u[0] for u in UNSENDABLE])
def test_a_request_the_sdk_cannot_build_is_raised_once_unchanged_and_never_counted(
    harness, label, request_
):
    server = harness.server
    params = dict(request_)
    messages = params.pop("messages")
    for _ in range(3):  # more than enough to open both breakers if they were counted
        with pytest.raises((TypeError, ValueError)) as raised:
            harness.run(lambda: harness.chain.complete(messages, **params))
        assert not isinstance(raised.value, openai.OpenAIError)
        assert type(raised.value) in (TypeError, UnicodeEncodeError)
    assert len(server.requests) == 0
    for gate in harness.chain.breakers.values():
        assert gate.state == "closed"
        assert gate.fail_counter == 0
    # the next good request is answered live, by the first tier
    _events, response = harness.ask("good")
    assert response.source == "stream"
    assert response.attempts[-1].error is None
    assert len(server.requests) == 1


def test_a_caller_error_raised_before_sending_costs_no_retry(harness):
    with pytest.raises(TypeError):
        harness.run(lambda: harness.chain.complete(user("hi"), temperature={1}))
    assert harness.clock.sleeps == []  # raised on the first attempt: no backoff was planned
    assert len(harness.server.requests) == 0


def test_an_error_mid_stream_is_still_the_providers(harness):
    """The caller-side rule applies only before a response began: a drop still counts."""
    harness.server.push(Fault.drop(after_chunks=2), stream=True, times=1)
    _events, response = harness.ask("drop once")
    assert response.source == "stream"
    assert harness.chain.breakers["stream"].fail_counter == 0  # reset by the success
    assert [a.error is not None for a in response.attempts] == [True, False]


def test_a_closed_chain_raises_at_once_and_counts_nothing(harness):
    server = harness.server
    harness.ask("before close")
    before = len(server.requests)
    if harness.mode == "sync":
        harness.chain.close()
        with pytest.raises(ChainClosedError, match="closed"):
            harness.chain.complete(user("after close"))
        with pytest.raises(ChainClosedError):
            harness.chain.stream(user("after close"))
        harness.chain.close()  # closing twice is harmless
    else:
        harness.run(harness.chain.aclose)
        with pytest.raises(ChainClosedError, match="closed"):
            harness.run(lambda: harness.chain.complete(user("after close")))
        with pytest.raises(ChainClosedError):
            harness.chain.stream(user("after close"))
        harness.run(harness.chain.aclose)
    assert len(server.requests) == before
    for gate in harness.chain.breakers.values():
        assert gate.fail_counter == 0


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chains that make their own client read the test profile's key variable."""
    monkeypatch.setenv("FALLBACKCHAIN_TEST_KEY", "sk-test-hardening")


@pytest.mark.slow  # about a second of real-time stalls
def test_closing_a_chain_mid_request_ends_it_with_chain_closed_and_counts_nothing(
    server, tmp_path, key_env
):
    """A request stalled upstream when its chain closes ends with ChainClosedError, uncounted."""
    server.push(Fault.stall(after_chunks=1, seconds=1.0), stream=True, times=1)
    config = make_config(tmp_path, server.base_url)
    chain = FallbackChain(config)  # the chain owns its client: close() closes it
    stream = chain.stream(user("closing"))
    first = next(iter(stream))
    assert first.text
    import threading

    timer = threading.Timer(0.2, chain.close)
    timer.start()
    with pytest.raises(ChainClosedError):
        list(stream)
    timer.join()
    for gate in chain.breakers.values():
        assert gate.fail_counter == 0
        assert gate.state == "closed"


def test_closing_an_async_chain_mid_request_ends_it_with_chain_closed(server, tmp_path, key_env):
    server.push(Fault.stall(after_chunks=1, seconds=1.0), stream=True, times=1)
    config = make_config(tmp_path, server.base_url)

    async def go() -> None:
        chain = AsyncFallbackChain(config)
        stream = chain.stream(user("closing async"))
        events = aiter(stream)
        assert (await anext(events)).text

        async def close_soon() -> None:
            await asyncio.sleep(0.2)
            await chain.aclose()

        closer = asyncio.create_task(close_soon())
        with pytest.raises(ChainClosedError):
            async for _ in events:
                pass
        await closer
        for gate in chain.breakers.values():
            assert gate.fail_counter == 0

    asyncio.run(go())


# --------------------------------------------------------------------------------------------
# Clocks (item 4)
# --------------------------------------------------------------------------------------------


def test_the_default_clock_is_monotonic_for_intervals_and_wall_for_stamps(
    server, tmp_path, key_env
):
    import time

    chain = FallbackChain(make_config(tmp_path, server.base_url))
    try:
        assert abs(chain._clock() - time.monotonic()) < 1.0
        assert abs(chain.cache._common.clock() - time.time()) < 1.0
    finally:
        chain.close()


def test_a_wall_clock_stepped_back_an_hour_does_not_hold_a_breaker_open(harness_factory):
    h = harness_factory(breaker__fail_max=2, breaker__reset_timeout=30.0, retry__max_attempts=2)
    clock: FakeClock = h.clock
    h.server.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):  # the outage: nothing cached yet
        h.ask("outage")
    assert h.chain.breaker_states()["stream"] == "open"
    clock.step_wall(-3600.0)  # the host's clock is set back an hour
    clock.advance(31.0)
    h.server.default = Fault.ok()
    _events, response = h.ask("recovered")
    assert response.source == "stream"
    assert h.chain.breaker_states()["stream"] == "closed"


def test_cache_stamps_use_the_wall_clock(harness_factory):
    h = harness_factory()
    clock: FakeClock = h.clock
    clock.step_wall(5_000.0)
    h.ask("stamped")
    rows = list(h.chain.cache.export_rows())
    assert len(rows) == 1
    assert all(abs(row.stored_at - clock.wall()) < 1.0 for row in rows)
