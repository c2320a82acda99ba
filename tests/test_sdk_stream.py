"""The SDK stream shape both drop-ins share, without I/O: a stand-in for the chain's stream.

Chat's and the Responses API's streams are the same two classes for different items; these
tests run each rule on both, sync and async.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from fallbackchain import ChainEvent, ChainResponse, StreamNotFinishedError, trace_of
from fallbackchain.chain import (
    AsyncDropInStream,
    AsyncResponsesDropInStream,
    DropInStream,
    ResponsesDropInStream,
)
from fallbackchain.chain._dropin_chunks import Chunker
from fallbackchain.chain._dropin_errors import SdkErrors
from fallbackchain.chain._responses_events import ResponsesEventer
from fallbackchain.chain._sdk_stream import StreamFeed


class Broken(Exception):
    """The chain's stream failed mid-answer."""


class Events:
    """A chain stream that yields ``events``, then raises ``Broken``; records ``close()``."""

    def __init__(self, events: list[ChainEvent]) -> None:
        self._events = iter(events)
        self.closed = 0

    @property
    def response(self) -> ChainResponse:
        raise StreamNotFinishedError("not finished")

    def __next__(self) -> ChainEvent:
        event = next(self._events, None)
        if event is None:
            raise Broken
        return event

    def close(self) -> None:
        self.closed += 1

    async def __anext__(self) -> ChainEvent:
        return next(self)

    async def aclose(self) -> None:
        self.close()


def chat_feed() -> StreamFeed[Any]:
    return StreamFeed(Chunker("m", usage=False, divergence="raise"), SdkErrors("http://x"))


def responses_feed() -> StreamFeed[Any]:
    return StreamFeed(ResponsesEventer("m", divergence="raise"), SdkErrors("http://x"))


SYNC = [(DropInStream, chat_feed), (ResponsesDropInStream, responses_feed)]
ASYNC = [(AsyncDropInStream, chat_feed), (AsyncResponsesDropInStream, responses_feed)]
HELLO = [ChainEvent("delta", "Hel", "stream"), ChainEvent("delta", "lo", "stream")]


@pytest.mark.parametrize(("stream_class", "feed"), SYNC, ids=["chat", "responses"])
def test_a_failed_pull_mid_stream_releases_the_connection_and_ends_the_stream(
    stream_class: Any, feed: Any
) -> None:
    events = Events(HELLO)
    stream = stream_class(events, feed()).started()
    items = []
    with pytest.raises(Broken):
        items.extend(stream)
    assert items and events.closed == 1  # at once, not when the consumer closes
    assert list(stream) == []  # nothing more, ever
    with pytest.raises(StreamNotFinishedError):
        trace_of(stream)


async def drain(stream: Any, into: list[Any]) -> None:
    async for item in stream:
        into.append(item)


@pytest.mark.parametrize(("stream_class", "feed"), ASYNC, ids=["chat", "responses"])
def test_a_failed_pull_mid_stream_releases_the_connection_and_ends_the_stream_async(
    stream_class: Any, feed: Any
) -> None:
    async def go() -> None:
        events = Events(HELLO)
        stream = await stream_class(events, feed()).started()
        items: list[Any] = []
        with pytest.raises(Broken):
            await drain(stream, items)
        assert items and events.closed == 1
        assert [item async for item in stream] == []
        await stream.aclose()  # the SDK's name for close()
        assert events.closed == 2

    asyncio.run(go())


@pytest.mark.parametrize(("stream_class", "feed"), SYNC, ids=["chat", "responses"])
def test_a_failed_first_pull_raises_from_started_and_releases_the_connection(
    stream_class: Any, feed: Any
) -> None:
    events = Events([])
    with pytest.raises(Broken):
        stream_class(events, feed()).started()
    assert events.closed == 1
