"""The endpoint seam: everything API-specific goes through one ``Endpoint`` object.

A second API (the Responses API, #16) is another ``Endpoint`` handed to ``stream_request`` /
``complete_request``. These tests drive the chain through an endpoint that wraps the chat one
and records each call, against the real fault server (sync and async): the drivers ask it to
send, assemble, check, show and cache, and nothing else in them knows the API.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import openai
import pytest

from fallbackchain.chain import CHAT, ChatEndpoint
from fallbackchain.testing import Fault

from .conftest import text_after_last_reset, user


class RecordingEndpoint(ChatEndpoint):
    """The chat endpoint, counting each call the chain makes to it."""

    __slots__ = ("calls",)

    name = "recording"

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()

    def cache_key(self, request: Any) -> str:
        self.calls["cache_key"] += 1
        return "rec-" + super().cache_key(request)

    def create(self, client: openai.OpenAI, kwargs: dict[str, Any]) -> Any:
        self.calls["create"] += 1
        return super().create(client, kwargs)

    async def acreate(self, client: openai.AsyncOpenAI, kwargs: dict[str, Any]) -> Any:
        self.calls["create"] += 1
        return await super().acreate(client, kwargs)

    def assembler(self) -> Any:
        self.calls["assembler"] += 1
        return super().assembler()

    def check(self, answer: object) -> Any:
        self.calls["check"] += 1
        return super().check(answer)

    def encode(self, answer: Any) -> Any:
        self.calls["encode"] += 1
        return super().encode(answer)

    def decode(self, stored: Any) -> Any:
        self.calls["decode"] += 1
        return super().decode(stored)


def _stream(harness: Any, endpoint: Any, request: dict[str, Any]) -> tuple[list[Any], Any]:
    if harness.mode == "sync":
        with harness.chain.stream_request(endpoint, request) as stream:
            return list(stream), stream.response

    async def go() -> tuple[list[Any], Any]:
        async with harness.chain.stream_request(endpoint, request) as stream:
            return [e async for e in stream], stream.response

    return harness.run(go)


def _complete(harness: Any, endpoint: Any, request: dict[str, Any]) -> Any:
    if harness.mode == "sync":
        return harness.chain.complete_request(endpoint, request)
    return harness.run(lambda: harness.chain.complete_request(endpoint, request))


def test_the_chat_endpoint_is_what_stream_uses(harness, server):
    events, response = _stream(harness, CHAT, {"messages": user("hello")})
    assert response.text == harness.answer("hello") == text_after_last_reset(events)
    assert response.source == "stream"
    # the same request through stream() is the same cache entry
    assert harness.chain.request_key(CHAT, {"messages": user("hello")}) == (
        harness.chain.cache_key(user("hello"))
    )


def test_a_streamed_answer_goes_through_the_endpoint(harness, server):
    endpoint = RecordingEndpoint()
    events, response = _stream(harness, endpoint, {"messages": user("hello")})
    assert response.text == harness.answer("hello") == text_after_last_reset(events)
    assert endpoint.calls == Counter(cache_key=1, create=1, assembler=1, encode=1)
    key = harness.chain.request_key(endpoint, {"messages": user("hello")})
    assert key.startswith("rec-")
    assert harness.chain.cache.get(key).completion.choices[0].message.content == response.text


def test_a_whole_answer_and_a_cached_one_go_through_the_endpoint(harness, server):
    endpoint = RecordingEndpoint()
    server.push(Fault.drop(after_chunks=2), stream=True, times=3)
    response = _complete(harness, endpoint, {"messages": user("hello")})
    assert response.source == "completion"
    assert endpoint.calls["check"] == 1
    assert endpoint.calls["create"] == 4  # three streams, one whole completion
    server.default = Fault.status(503)
    cached = _complete(harness, endpoint, {"messages": user("hello")})
    assert cached.source == "cache"
    assert cached.text == response.text
    assert endpoint.calls["decode"] == 1


def test_the_endpoint_refuses_a_request_before_anything_is_sent(harness, server):
    with pytest.raises(ValueError, match="messages"):
        _complete(harness, CHAT, {"messages": []})
    with pytest.raises(TypeError, match="stream"):
        _complete(harness, CHAT, {"messages": user("x"), "stream": True})
    assert server.counts["stream"] == server.counts["completion"] == 0
