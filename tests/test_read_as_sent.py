"""Answers the SDK's own ``create()`` read, read the same now the chain reads the JSON sent (#14).

Each case is a body a real provider sends that ``client.chat.completions.create`` accepted and
the chain answered at its first attempt before it read chat answers as the JSON sent. A tiny
local HTTP server sends the hand-written bodies (the fault server does not produce them); the
real openai client reads them, sync and async.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import openai
import pytest

from fallbackchain import AsyncFallbackChain, FallbackChain
from fallbackchain.chain import CHAT
from fallbackchain.chain._chain import OpenedStream

from .conftest import make_config, user


class _Scripted:
    """Answers every POST with one (content type, body, headers), set per test."""

    def __init__(self) -> None:
        self.reply: tuple[str | None, bytes, dict[str, str]] = ("application/json", b"{}", {})
        self.count = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                outer.count += 1
                content_type, body, headers = outer.reply
                self.send_response(200)
                if content_type is not None:
                    self.send_header("content-type", content_type)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(  # a short poll: shutdown() waits for one
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[_Scripted]:
    server = _Scripted()
    yield server
    server.close()


def _sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + (
        b"data: [DONE]\n\n"
    )


_WHOLE = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1700000000,
    "model": "m",
    "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "Hi"}, "finish_reason": "stop"}
    ],
    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
}


class _CreateOnly:
    """A client wrapper that offers ``chat.completions.create`` alone (no raw responses)."""

    def __init__(self, client: Any, calls: list[dict[str, Any]]) -> None:
        self._client = client
        self.chat = self
        self.completions = self
        self.calls = calls  # shared with the copies with_options makes

    def with_options(self, **options: Any) -> _CreateOnly:
        return _CreateOnly(self._client.with_options(**options), self.calls)

    def create(self, **kwargs: Any) -> Any:
        self.calls.append(kwargs)
        return self._client.chat.completions.create(**kwargs)


def _hi_stream() -> bytes:
    """A normal streamed answer: "Hi", then ``finish_reason`` stop."""
    return _sse(
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
        {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
         "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    )  # fmt: skip


def _run(
    mode: str, tmp_path: Path, base_url: str, call: Any, wrap: Any = None, **overrides: Any
) -> Any:
    config = make_config(tmp_path, base_url, cache__enabled=False, **overrides)
    wrap = wrap or (lambda client: client)
    if mode == "sync":
        client = openai.OpenAI(base_url=base_url, api_key="k", max_retries=0)
        chain = FallbackChain(config, client=wrap(client))
        try:
            return call(chain)
        finally:
            chain.close()
            client.close()

    async def go() -> Any:
        aclient = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0)
        achain = AsyncFallbackChain(config, client=wrap(aclient))
        try:
            return await call(achain)
        finally:
            await achain.aclose()
            await aclient.close()

    return asyncio.run(go())


def _stream(mode: str) -> Any:
    if mode == "sync":

        def call(chain: Any) -> Any:
            with chain.stream(user("hi")) as stream:
                list(stream)
                return stream.response

        return call

    async def acall(chain: Any) -> Any:
        async with chain.stream(user("hi")) as stream:
            [e async for e in stream]
            return stream.response

    return acall


def test_a_tool_call_streamed_without_its_index_is_read_as_the_sdk_read_it(
    mode: str, scripted: _Scripted, tmp_path: Path
) -> None:
    """Gemini's OpenAI-compatible endpoint leaves ``tool_calls[].index`` out of its deltas."""
    scripted.reply = (
        "text/event-stream",
        _sse(
            {
                "object": "chat.completion.chunk",
                "model": "gemini",
                "choices": [
                    {
                        "index": 0,
                        "delta": {
                            "role": "assistant",
                            "tool_calls": [
                                {
                                    "id": "call_1",
                                    "type": "function",
                                    "function": {"name": "read", "arguments": '{"path":"/x"}'},
                                }
                            ],
                        },
                    }
                ],
            },
            {
                "object": "chat.completion.chunk",
                "model": "gemini",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}],
            },
        ),
        {},
    )
    response = _run(mode, tmp_path, scripted.base_url, _stream(mode), retry__max_attempts=1)
    assert [a.error for a in response.attempts] == [None]
    (call,) = response.completion.choices[0].message.tool_calls
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_1",
        "read",
        '{"path":"/x"}',
    )


@pytest.mark.parametrize("content_type", ["text/plain", None])
def test_a_whole_answer_sent_as_json_without_a_json_content_type_is_read(
    mode: str, scripted: _Scripted, tmp_path: Path, content_type: str | None
) -> None:
    """The SDK reads a JSON body for a model type whatever its Content-Type says."""
    scripted.reply = (content_type, json.dumps(_WHOLE).encode(), {})

    def call(chain: Any) -> Any:
        return chain.complete(user("hi"))

    response = _run(
        mode,
        tmp_path,
        scripted.base_url,
        call,
        retry__max_attempts=1,
        openai__complete_streams=False,
    )
    assert [a.error for a in response.attempts] == [None]
    assert response.text == "Hi"


def test_a_drop_in_whole_answer_keeps_the_request_id(
    mode: str, scripted: _Scripted, tmp_path: Path
) -> None:
    """``completion._request_id`` (the SDK's documented way to quote a request to support)."""
    scripted.reply = ("application/json", json.dumps(_WHOLE).encode(), {"x-request-id": "req_1"})

    def call(chain: Any) -> Any:
        return chain.chat.completions.create(model="m", messages=user("hi"))

    completion = _run(mode, tmp_path, scripted.base_url, call, openai__complete_streams=False)
    assert completion._request_id == "req_1"


def test_a_streamed_answer_keeps_the_request_id_too(
    mode: str, scripted: _Scripted, tmp_path: Path
) -> None:
    """A drop-in ``create(stream=False)`` streams first by default: it must keep it as well."""
    stream = _hi_stream()
    scripted.reply = ("text/event-stream", stream, {"x-request-id": "req_2"})
    streamed = _run(mode, tmp_path, scripted.base_url, _stream(mode))
    assert streamed.completion._request_id == "req_2"

    def dropin(chain: Any) -> Any:
        return chain.chat.completions.create(model="m", messages=user("hi"))

    assert _run(mode, tmp_path, scripted.base_url, dropin)._request_id == "req_2"


def test_a_client_that_offers_create_alone_still_answers_streamed_and_whole(
    mode: str, scripted: _Scripted, tmp_path: Path
) -> None:
    """A stand-in or a wrapper that patches ``create()`` alone: read through the SDK's models."""
    stream = _hi_stream()
    calls: list[dict[str, Any]] = []

    def wrap(client: Any) -> _CreateOnly:
        return _CreateOnly(client, calls)

    scripted.reply = ("text/event-stream", stream, {})
    streamed = _run(mode, tmp_path, scripted.base_url, _stream(mode), wrap, retry__max_attempts=1)
    assert ([a.error for a in streamed.attempts], streamed.text) == ([None], "Hi")
    scripted.reply = ("application/json", json.dumps(_WHOLE).encode(), {})

    def whole(chain: Any) -> Any:
        return chain.complete(user("hi"))

    answer = _run(
        mode, tmp_path, scripted.base_url, whole, wrap, openai__complete_streams=False
    )
    assert ([a.error for a in answer.attempts], answer.text) == ([None], "Hi")
    # both went through the wrapper's create()
    assert [c["stream"] for c in calls] == [True, False]


@pytest.mark.parametrize(
    "message",
    [
        {"role": "assistant", "content": ["Hi"]},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "f", "arguments": {"x": 1}}}
            ],
        },
    ],
    ids=["content-not-text", "arguments-not-text"],
)
def test_a_whole_answer_with_text_that_is_not_text_is_malformed(
    mode: str, scripted: _Scripted, tmp_path: Path, message: dict[str, Any]
) -> None:
    """Read leniently (it does not validate), it must still not reach the caller as an answer."""
    from fallbackchain import AllTiersFailedError, MalformedChunkError

    bad = {**_WHOLE, "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
    scripted.reply = ("application/json", json.dumps(bad).encode(), {})

    def call(chain: Any) -> Any:
        return chain.complete(user("hi"))

    with pytest.raises(AllTiersFailedError) as failed:
        _run(mode, tmp_path, scripted.base_url, call, retry__max_attempts=1,
             openai__complete_streams=False)  # fmt: skip
    first = failed.value.attempts[0]  # the whole answer (the stream tier then reads no chunk)
    assert (first.tier, type(first.exception)) == ("completion", MalformedChunkError)


@pytest.mark.parametrize(
    "response",
    [None, SimpleNamespace(status_code=200), {"headers": {}}, SimpleNamespace(headers={})],
    ids=["none", "no-headers", "a-dict", "no-id"],
)
def test_a_stream_without_a_usable_http_response_still_gives_its_answer(response: Any) -> None:
    """A stand-in's stream: the request id is None, never an error that fails the attempt."""
    assembler = CHAT.assembler()
    for chunk in (
        {"id": "c", "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}]},
        {"id": "c", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
    ):
        assembler.add(chunk)
    opened = OpenedStream(SimpleNamespace(response=response), iter(()), assembler, 0.0)
    answer = opened.finish("m")
    assert (answer.choices[0].message.content, answer._request_id) == ("Hi", None)
