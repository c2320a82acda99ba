"""A stream closed from another thread or task ends the reader's iteration, as the SDK's does.

The SDK's ``Stream.close()`` / ``AsyncStream.close()`` may be called while another thread or
task is iterating (a UI's cancel button, a watchdog): the response is closed and the reader's
loop ends. A generator cannot be closed while it runs, so the chain's streams close the
upstream stream being read instead, end the request neutrally (no breaker counts it, no other
attempt is sent) and let the reader's iteration end: at once for a task; for a thread blocked
in a read, when that read returns (at the latest after ``idle_timeout``), where before it
raised ``ValueError`` in the closing thread and the reader went on to another attempt.
"""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace
from typing import Any

import pytest

from fallbackchain.chain._steps import CloseStream
from fallbackchain.testing import Fault

from .conftest import user

pytestmark = pytest.mark.slow  # real time: an upstream stall, closed after 0.3 s

STALL = 10.0  # the upstream goes silent mid-answer for this long (never waited out)


def _stalled(h: Any) -> None:
    h.server.push(Fault.stall(after_chunks=3, seconds=STALL), stream=True)


def _read_closing_from_elsewhere(h: Any, open_stream: Any, close_after: float = 0.3) -> Any:
    """Iterate ``open_stream()``; close it from another thread/task; what was read, and when."""
    if h.mode == "sync":
        stream = open_stream()
        timer = threading.Timer(close_after, stream.close)
        timer.start()
        started = time.monotonic()
        items = list(stream)
        timer.join()
        return items, time.monotonic() - started

    async def go() -> tuple[list[Any], float]:
        stream = open_stream()
        if asyncio.iscoroutine(stream):
            stream = await stream

        async def closer() -> None:
            await asyncio.sleep(close_after)
            await stream.close() if hasattr(stream, "close") else await stream.aclose()

        task = asyncio.create_task(closer())
        started = time.monotonic()
        items = [item async for item in stream]
        await task
        return items, time.monotonic() - started

    return h.run(go)


IDLE = 1.0


def _limit(h: Any) -> float:
    return 0.9 if h.mode == "async" else IDLE + 1.5  # a task at once; a thread after its read


def test_a_chain_stream_closed_elsewhere_ends_the_readers_loop(harness_factory: Any) -> None:
    h = harness_factory(real_time=True, openai__idle_timeout=IDLE)
    _stalled(h)
    items, took = _read_closing_from_elsewhere(h, lambda: h.chain.stream(user("x")))
    assert took < _limit(h)  # never the stall
    assert [e.type for e in items if e.type == "delta"]  # what came before the stall
    assert h.server.counts["total"] == 1  # no other attempt was sent (the idle timeout's)
    assert set(h.chain.breaker_states().values()) == {"closed"}  # and nothing was counted


def test_a_drop_in_stream_closed_elsewhere_ends_the_readers_loop(harness_factory: Any) -> None:
    h = harness_factory(real_time=True, openai__idle_timeout=IDLE)
    _stalled(h)
    create = h.chain.chat.completions.create
    items, took = _read_closing_from_elsewhere(
        h, lambda: create(model=None, messages=user("x"), stream=True)
    )
    assert took < _limit(h)
    assert items and all(chunk.object == "chat.completion.chunk" for chunk in items)
    assert h.server.counts["total"] == 1


def test_a_stream_opened_while_the_consumer_closed_is_closed_at_once(harness_factory: Any) -> None:
    """The flow's ``CloseStream`` (the close came while the attempt was opening): the driver
    closes the real SDK stream then, so its connection is not held until collected."""
    h = harness_factory(real_time=True)
    h.server.push(Fault.stall(after_chunks=1, seconds=STALL), stream=True)
    kwargs = {"model": "m", "messages": user("x"), "stream": True}
    chain = h.chain

    def go() -> Any:
        stream = h._client.chat.completions.create(**kwargs)
        opened = SimpleNamespace(stream=stream)
        chain._perform(None, None, CloseStream(opened))  # sync: returns None
        return stream

    async def ago() -> Any:
        stream = await h._client.chat.completions.create(**kwargs)
        await chain._perform(None, None, CloseStream(SimpleNamespace(stream=stream)), None)
        return stream

    stream = h.run(go if h.mode == "sync" else ago)
    assert stream.response.is_closed
    assert h.server.wait_idle(2.0)  # the server saw the client leave mid-stall
