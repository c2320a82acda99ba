"""Tests for fallbackchain.testing.FaultServer, driven by the real openai client.

Each fault test documents the symptom the openai SDK (3.57, httpx2 transport)
really shows for it, because that is what the chain has to handle.
"""

from __future__ import annotations

import asyncio
import dataclasses
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from fallbackchain.testing import Fault, FaultServer, RecordedRequest

from .conftest import make_client

MODEL = "gpt-4o-mini"
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is a fault server?"},
]


def stream_chunks(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("messages", MESSAGES)
    with client.chat.completions.create(stream=True, **kwargs) as stream:
        return list(stream)


def read_into(received: list[Any], client: openai.OpenAI) -> None:
    """Stream into ``received`` so chunks read before an exception stay visible."""
    with client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        stream=True,
    ) as stream:
        received.extend(stream)


def content_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def raw_request(
    server: FaultServer,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


# -- normal answers ----------------------------------------------------------------


def test_ok_stream_text_equals_answer_for(server: FaultServer, client: openai.OpenAI) -> None:
    chunks = stream_chunks(client)
    assert content_of(chunks) == server.answer_for(MESSAGES, MODEL)
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_ok_stream_has_role_chunk_one_chunk_per_word_and_finish_chunk(
    server: FaultServer, client: openai.OpenAI
) -> None:
    chunks = stream_chunks(client)
    answer = server.answer_for(MESSAGES, MODEL)
    words = answer.split(" ")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    pieces = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert pieces == [words[0], *(" " + w for w in words[1:])]
    assert chunks[-1].choices[0].delta.content is None
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert {c.object for c in chunks} == {"chat.completion.chunk"}
    assert len({c.id for c in chunks}) == 1
    assert all(c.model == MODEL for c in chunks)


def test_stream_usage_chunk_only_with_include_usage(client: openai.OpenAI) -> None:
    plain = stream_chunks(client)
    assert all(c.usage is None for c in plain)
    with_usage = stream_chunks(client, stream_options={"include_usage": True})
    last = with_usage[-1]
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.completion_tokens == 3 + 12  # "Answer", "from", "MODEL:" + words
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens


def test_ok_non_stream_returns_full_completion(server: FaultServer, client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == server.answer_for(MESSAGES, MODEL)
    assert choice.finish_reason == "stop"
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 15


def test_x_request_id_header_matches_recorded_request(
    server: FaultServer, client: openai.OpenAI
) -> None:
    raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    assert raw.headers["x-request-id"].startswith("req_")
    assert server.requests[0].request_id == raw.headers["x-request-id"]


def test_answers_are_deterministic_and_depend_on_prompt_and_model(server: FaultServer) -> None:
    a = server.answer_for([{"role": "user", "content": "one"}], "m1")
    assert a == server.answer_for([{"role": "user", "content": "one"}], "m1")
    assert a.startswith("Answer from m1: ")
    assert len(a.split(" ")) == 3 + 12
    assert server.answer_for([{"role": "user", "content": "two"}], "m1") != a
    assert server.answer_for([{"role": "user", "content": "one"}], "m2").startswith(
        "Answer from m2:"
    )
    # Only the last user message counts.
    convo = [{"role": "user", "content": "zero"}, {"role": "user", "content": "one"}]
    assert server.answer_for(convo, "m1") == a


def test_answer_for_reads_text_parts_of_list_content(server: FaultServer) -> None:
    parts = [{"role": "user", "content": [{"type": "text", "text": "one"}]}]
    assert server.answer_for(parts, "m") == server.answer_for(
        [{"role": "user", "content": "one"}], "m"
    )


def test_words_zero_gives_prefix_only() -> None:
    with FaultServer(words=0) as srv, make_client(srv) as c:
        assert content_of(stream_chunks(c)) == f"Answer from {MODEL}:"


def test_responder_overrides_answer_text() -> None:
    def responder(messages: Any, model: str) -> str:
        return f"{model} says\nhello  world "

    with FaultServer(responder=responder) as srv, make_client(srv) as c:
        assert srv.answer_for(MESSAGES, "x") == "x says\nhello  world "
        chunks = stream_chunks(c)
        assert content_of(chunks) == f"{MODEL} says\nhello  world "
        pieces = [ch.choices[0].delta.content for ch in chunks[1:-1]]
        assert pieces == [MODEL, " says", "\nhello", "  world "]


def test_async_client_streams_answer(server: FaultServer) -> None:
    async def main() -> str:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test", max_retries=0
        ) as aclient:
            stream = await aclient.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream])

    assert asyncio.run(main()) == server.answer_for(MESSAGES, MODEL)


# -- faults: the symptom the SDK shows ------------------------------------------------


def test_status_503_raises_internal_server_error_with_retry_after_headers(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.status(503, retry_after=2, retry_after_ms=1500, should_retry=True))
    with pytest.raises(openai.InternalServerError) as info:
        stream_chunks(client)
    exc = info.value
    assert isinstance(exc, openai.APIStatusError)
    assert exc.status_code == 503
    assert exc.response.headers["retry-after"] == "2"
    assert exc.response.headers["retry-after-ms"] == "1500"
    assert exc.response.headers["x-should-retry"] == "true"
    assert exc.type == "server_error"
    assert exc.body == {
        "message": exc.body["message"],  # type: ignore[index]
        "type": "server_error",
        "param": None,
        "code": None,
    }


def test_status_fractional_retry_after_is_sent_as_float(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.status(429, retry_after=0.25))
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.response.headers["retry-after"] == "0.25"
    assert info.value.code == "rate_limit_exceeded"


def test_status_429_insufficient_quota_raises_rate_limit_error_with_code(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.status(429, error_code="insufficient_quota", error_type="insufficient_quota"))
    with pytest.raises(openai.RateLimitError) as info:
        stream_chunks(client)
    assert info.value.code == "insufficient_quota"
    assert info.value.type == "insufficient_quota"
    assert "retry-after" not in info.value.response.headers


def test_status_400_context_length_raises_bad_request_error(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.status(400, error_code="context_length_exceeded", message="too long"))
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.code == "context_length_exceeded"
    assert info.value.type == "invalid_request_error"
    assert info.value.message == "Error code: 400 - too long"


def test_x_should_retry_false_stops_sdk_retries(server: FaultServer) -> None:
    server.push(Fault.status(503, should_retry=False), times=None)
    with make_client(server, max_retries=3) as c, pytest.raises(openai.InternalServerError):
        c.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert server.counts["total"] == 1


def test_sdk_retries_honour_retry_after_ms(server: FaultServer) -> None:
    server.push(Fault.status(503, retry_after_ms=50), times=2)
    with make_client(server, max_retries=2) as c:
        completion = c.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.choices[0].message.content == server.answer_for(MESSAGES, MODEL)
    assert [r.fault.kind for r in server.requests] == ["status", "status", "ok"]


def test_drop_mid_stream_raises_api_connection_error_after_n_chunks(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.drop(after_chunks=3))
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError) as info:
        read_into(received, client)
    assert not isinstance(info.value, openai.APITimeoutError)
    assert isinstance(info.value.__cause__, httpx2.RemoteProtocolError)
    assert len(received) == 1 + 3  # role chunk + 3 words
    assert content_of(received) == "Answer from " + MODEL + ":"


def test_drop_non_stream_raises_api_connection_error(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.drop())
    with pytest.raises(openai.APIConnectionError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert isinstance(info.value.__cause__, httpx2.RemoteProtocolError)


def test_early_end_stream_ends_silently_without_finish_reason(
    server: FaultServer, client: openai.OpenAI
) -> None:
    """The silent truncation case: the SDK raises nothing, iteration just stops."""
    server.push(Fault.early_end(after_chunks=4))
    chunks = stream_chunks(client)
    assert len(chunks) == 1 + 4
    assert all(c.choices[0].finish_reason is None for c in chunks)
    assert content_of(chunks) != server.answer_for(MESSAGES, MODEL)


def test_early_end_non_stream_answers_normally(server: FaultServer, client: openai.OpenAI) -> None:
    server.push(Fault.early_end(after_chunks=1))
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.choices[0].message.content == server.answer_for(MESSAGES, MODEL)


@pytest.mark.slow
def test_stall_with_short_read_timeout_raises_api_timeout_error(server: FaultServer) -> None:
    server.push(Fault.stall(after_chunks=2, seconds=30))
    received: list[Any] = []
    started = time.monotonic()
    with (
        make_client(server, timeout=httpx2.Timeout(5.0, read=0.3)) as c,
        pytest.raises(openai.APITimeoutError) as info,
    ):
        read_into(received, c)
    assert isinstance(info.value, openai.APIConnectionError)  # APITimeoutError subclasses it
    assert len(received) == 1 + 2
    # The server notices the client hung up and ends the stalled handler early.
    assert server.wait_idle(timeout=2.0)
    assert time.monotonic() - started < 5


@pytest.mark.slow
def test_stall_then_resumes_and_completes(server: FaultServer, client: openai.OpenAI) -> None:
    server.push(Fault.stall(after_chunks=1, seconds=0.3))
    started = time.monotonic()
    chunks = stream_chunks(client)
    assert time.monotonic() - started >= 0.3
    assert content_of(chunks) == server.answer_for(MESSAGES, MODEL)


def test_stall_does_not_block_other_connections(server: FaultServer) -> None:
    server.push(Fault.stall(after_chunks=0, seconds=3), stream=True)
    with make_client(server) as stalled_client, make_client(server) as other:
        stream = stalled_client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
        )
        with stream:
            first = next(iter(stream))  # role chunk arrives, then the stall
            assert first.choices[0].delta.role == "assistant"
            started = time.monotonic()
            completion = other.chat.completions.create(model=MODEL, messages=MESSAGES)
            assert time.monotonic() - started < 1.0
            assert completion.choices[0].message.content == server.answer_for(MESSAGES, MODEL)
            # The finished request left "active" before its last byte was sent.
            assert server.counts["active"] == 1


@pytest.mark.slow
def test_stall_non_stream_with_short_read_timeout_raises_api_timeout_error(
    server: FaultServer,
) -> None:
    server.push(Fault.stall(seconds=30), stream=False)
    with (
        make_client(server, timeout=httpx2.Timeout(5.0, read=0.3)) as c,
        pytest.raises(openai.APITimeoutError),
    ):
        c.chat.completions.create(model=MODEL, messages=MESSAGES)


@pytest.mark.slow
def test_slow_first_byte_delays_headers_then_answers(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.slow_first_byte(seconds=0.3))
    started = time.monotonic()
    chunks = stream_chunks(client)
    assert time.monotonic() - started >= 0.3
    assert content_of(chunks) == server.answer_for(MESSAGES, MODEL)


@pytest.mark.slow
def test_slow_first_byte_with_short_read_timeout_raises_at_create(server: FaultServer) -> None:
    """The timeout fires in create() itself, before any stream object exists."""
    server.push(Fault.slow_first_byte(seconds=30))
    with (
        make_client(server, timeout=httpx2.Timeout(5.0, read=0.3)) as c,
        pytest.raises(openai.APITimeoutError),
    ):
        c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    assert server.wait_idle(timeout=2.0)


def test_sse_error_raises_plain_api_error_not_status_error(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.sse_error(after_chunks=2, message="upstream overloaded"))
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        read_into(received, client)
    exc = info.value
    assert type(exc) is openai.APIError  # not APIStatusError: the HTTP status was 200
    assert exc.message == "upstream overloaded"
    assert exc.code == "server_error"
    assert exc.type == "server_error"
    assert len(received) == 1 + 2


def test_sse_error_non_stream_is_http_500(server: FaultServer, client: openai.OpenAI) -> None:
    server.push(Fault.sse_error(message="boom", code="overloaded"))
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert info.value.code == "overloaded"


def test_malformed_stream_raises_raw_json_decode_error(
    server: FaultServer, client: openai.OpenAI
) -> None:
    """The SDK does not wrap it: a bare json.JSONDecodeError escapes iteration."""
    server.push(Fault.malformed(after_chunks=1))
    received: list[Any] = []
    with pytest.raises(json.JSONDecodeError):
        read_into(received, client)
    assert not issubclass(json.JSONDecodeError, openai.OpenAIError)
    assert len(received) == 1 + 1


def test_malformed_non_stream_raises_raw_json_decode_error(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.malformed())
    with pytest.raises(json.JSONDecodeError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)


@pytest.mark.parametrize("stream", [True, False])
def test_reset_raises_api_connection_error(
    server: FaultServer, client: openai.OpenAI, stream: bool
) -> None:
    server.push(Fault.reset())
    with pytest.raises(openai.APIConnectionError) as info:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=stream)
    assert isinstance(info.value.__cause__, httpx2.RemoteProtocolError)
    assert server.counts["total"] == 1  # the SDK did not silently retry


def test_reset_on_reused_keepalive_connection_still_raises(
    server: FaultServer, client: openai.OpenAI
) -> None:
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    server.push(Fault.reset())
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert server.counts["total"] == 2


def test_finish_length_keeps_text_and_reports_reason(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.finish("length"))
    chunks = stream_chunks(client)
    assert content_of(chunks) == server.answer_for(MESSAGES, MODEL)
    assert chunks[-1].choices[0].finish_reason == "length"


def test_finish_content_filter_sends_fewer_words(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.finish("content_filter"), times=2)
    full = server.answer_for(MESSAGES, MODEL)
    chunks = stream_chunks(client)
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    text = content_of(chunks)
    assert full.startswith(text)
    assert len(text.split(" ")) == len(full.split(" ")) // 2
    completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert completion.choices[0].finish_reason == "content_filter"
    assert completion.choices[0].message.content == text


def test_sparse_leaves_object_created_and_fingerprint_out_streamed_and_whole(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.sparse(), times=2)
    with client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, stream=True
    ).parse() as stream:
        raw_chunks = [json.loads(line[6:]) for line in stream.response.iter_lines()
                      if line.startswith("data: {")]  # fmt: skip
    whole = client.chat.completions.with_raw_response.create(model=MODEL, messages=MESSAGES)
    body = json.loads(whole.content)
    for obj in [*raw_chunks, body]:
        assert not {"object", "created", "system_fingerprint"} & obj.keys()
        assert obj["id"] and obj["model"] == MODEL
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in raw_chunks)
    assert text == body["choices"][0]["message"]["content"] == server.answer_for(MESSAGES, MODEL)


# -- scripting -------------------------------------------------------------------------


def test_rules_apply_in_fifo_order(server: FaultServer, client: openai.OpenAI) -> None:
    server.push(Fault.status(500))
    server.push(Fault.status(502))
    server.push(Fault.status(503))
    codes = []
    for _ in range(4):
        try:
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
            codes.append(200)
        except openai.APIStatusError as exc:
            codes.append(exc.status_code)
    assert codes == [500, 502, 503, 200]


def test_stream_filter_skips_rules_for_the_other_kind(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.status(503), stream=True)
    server.push(Fault.status(400), stream=False)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.InternalServerError):
        stream_chunks(client)
    stream_chunks(client)
    assert [r.fault for r in server.requests] == [
        Fault.status(400),
        Fault.ok(),
        Fault.status(503),
        Fault.ok(),
    ]


def test_times_counts_down_then_falls_through(server: FaultServer, client: openai.OpenAI) -> None:
    server.push(Fault.status(503), times=3)
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            stream_chunks(client)
    assert server.pending == []
    stream_chunks(client)


def test_times_none_applies_until_clear(server: FaultServer, client: openai.OpenAI) -> None:
    server.push(Fault.status(502), times=None)
    for _ in range(5):
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES)
    server.clear()
    client.chat.completions.create(model=MODEL, messages=MESSAGES)


def test_default_applies_when_no_rule_matches_and_clear_restores_ok(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.default = Fault.status(503)
    server.push(Fault.ok())
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert server.default == Fault.status(503)
    server.clear()
    assert server.default == Fault.ok()
    client.chat.completions.create(model=MODEL, messages=MESSAGES)


def test_push_rejects_bad_arguments(server: FaultServer) -> None:
    with pytest.raises(ValueError, match="times"):
        server.push(Fault.ok(), times=0)
    with pytest.raises(TypeError):
        server.push("503")  # type: ignore[arg-type]


def test_push_from_many_threads_is_thread_safe(server: FaultServer) -> None:
    def pusher() -> None:
        for _ in range(200):
            server.push(Fault.status(500), stream=True)

    threads = [threading.Thread(target=pusher) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(server.pending) == 800


# -- observation -----------------------------------------------------------------------


def test_requests_are_recorded_with_body_headers_and_fault(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.early_end(after_chunks=1), stream=True)
    stream_chunks(client, temperature=0.5)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    first, second = server.requests
    assert isinstance(first, RecordedRequest)
    assert first.method == "POST"
    assert first.path == "/v1/chat/completions"
    assert first.stream is True
    assert first.body["messages"] == MESSAGES
    assert first.body["temperature"] == 0.5
    assert first.headers["authorization"] == "Bearer test"
    assert first.headers["content-type"] == "application/json"
    assert first.fault == Fault.early_end(after_chunks=1)
    assert second.stream is False
    assert second.fault == Fault.ok()


def test_counts_track_streams_completions_and_peak_active(
    server: FaultServer, client: openai.OpenAI
) -> None:
    stream_chunks(client)
    stream_chunks(client)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert server.counts == {
        "total": 3,
        "stream": 2,
        "completion": 1,
        "active": 0,
        "max_active": 1,
    }
    server.reset_counts()
    assert server.counts == {
        "total": 0,
        "stream": 0,
        "completion": 0,
        "active": 0,
        "max_active": 0,
    }
    assert server.requests == []


def test_requests_is_a_copy(server: FaultServer, client: openai.OpenAI) -> None:
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    snapshot = server.requests
    snapshot.clear()
    assert len(server.requests) == 1


# -- HTTP surface ------------------------------------------------------------------------


def test_models_route_lists_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids


def test_unknown_route_is_openai_style_404(server: FaultServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.embeddings.create(model="x", input="hello")
    assert info.value.type == "invalid_request_error"
    assert server.counts["total"] == 0


def test_invalid_json_body_is_openai_style_400(server: FaultServer) -> None:
    status, headers, body = raw_request(
        server,
        "POST",
        "/v1/chat/completions",
        body=b"{nope",
        headers={"content-type": "application/json"},
    )
    assert status == 400
    assert headers["content-type"] == "application/json"
    assert "x-request-id" in headers
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert server.requests == []


def test_keep_alive_serves_several_requests_on_one_connection(server: FaultServer) -> None:
    payload = json.dumps({"model": MODEL, "messages": MESSAGES, "stream": True}).encode()
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        for _ in range(3):
            conn.request("POST", "/v1/chat/completions", body=payload)
            resp = conn.getresponse()
            assert resp.getheader("transfer-encoding") == "chunked"
            assert resp.getheader("content-type", "").startswith("text/event-stream")
            events = resp.read().decode().split("\n\n")
            assert events[-2] == "data: [DONE]"
            assert resp.getheader("connection") == "keep-alive"
        sock = conn.sock
        assert sock is not None
    finally:
        conn.close()


def test_connection_close_header_closes_after_response(server: FaultServer) -> None:
    status, headers, _ = raw_request(server, "GET", "/v1/models", headers={"connection": "close"})
    assert status == 200
    assert headers["connection"] == "close"


def test_chunked_request_body_is_accepted(server: FaultServer) -> None:
    payload = json.dumps({"model": MODEL, "messages": MESSAGES}).encode()

    def chunks() -> Iterator[bytes]:
        yield payload[:10]
        yield payload[10:]

    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        conn.request("POST", "/v1/chat/completions", body=chunks(), encode_chunked=True)
        resp = conn.getresponse()
        body = json.loads(resp.read())
    finally:
        conn.close()
    assert body["choices"][0]["message"]["content"] == server.answer_for(MESSAGES, MODEL)


# -- bounded request log ------------------------------------------------------------------


def post_completions(server: FaultServer, prompts: list[str]) -> list[int]:
    """Send one non-streaming request per prompt on one keep-alive connection; the statuses."""
    statuses = []
    conn = http.client.HTTPConnection(server.host, server.port, timeout=10)
    try:
        for prompt in prompts:
            body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}]})
            conn.request("POST", "/v1/chat/completions", body=body.encode())
            resp = conn.getresponse()
            resp.read()
            statuses.append(resp.status)
    finally:
        conn.close()
    return statuses


def recorded_prompts(server: FaultServer) -> list[str]:
    return [r.body["messages"][0]["content"] for r in server.requests]


def test_the_log_keeps_the_newest_max_recorded_while_the_counters_stay_exact() -> None:
    with FaultServer(words=1, max_recorded=5) as srv:
        srv.push(Fault.status(503), times=3)
        srv.push(Fault.status(429), times=1)
        statuses = post_completions(srv, [f"n {i}" for i in range(12)])
        assert statuses == [503, 503, 503, 429] + [200] * 8
        assert srv.max_recorded == 5
        assert recorded_prompts(srv) == [f"n {i}" for i in range(7, 12)]  # oldest dropped
        assert srv.counts["total"] == srv.counts["completion"] == 12
        assert srv.fault_counts == {"status": 4, "ok": 8}
        assert srv.fault_counts["drop"] == 0  # a kind never applied reads as 0
        srv.reset_counts()
        assert (srv.requests, srv.fault_counts, srv.counts["total"]) == ([], {}, 0)


@pytest.mark.slow  # 1,001 requests
def test_by_default_the_log_is_bounded_at_1000_requests() -> None:
    """A long run costs constant memory: the 1,001st request pushes out the first."""
    with FaultServer(words=0) as srv:
        assert srv.max_recorded == 1000
        post_completions(srv, [f"n {i}" for i in range(1001)])
        requests = srv.requests
        assert len(requests) == 1000
        assert requests[0].body["messages"][0]["content"] == "n 1"
        assert requests[-1].body["messages"][0]["content"] == "n 1000"
        assert srv.counts["total"] == 1001
        assert srv.fault_counts == {"ok": 1001}


def test_max_recorded_none_keeps_everything_and_zero_keeps_nothing() -> None:
    with FaultServer(words=0, max_recorded=None) as everything:
        post_completions(everything, ["a", "b", "c"])
        assert recorded_prompts(everything) == ["a", "b", "c"]
    with FaultServer(words=0, max_recorded=0) as nothing:
        nothing.push(Fault.status(500))
        post_completions(nothing, ["a", "b", "c"])
        assert nothing.requests == []
        assert nothing.counts["total"] == 3
        assert nothing.fault_counts == {"status": 1, "ok": 2}


@pytest.mark.parametrize("bad", [-1, 1.5, True, "10"])
def test_max_recorded_must_be_a_count(bad: Any) -> None:
    with pytest.raises(ValueError, match="max_recorded must be an int >= 0 or None"):
        FaultServer(max_recorded=bad)


def test_fault_counts_count_streams_and_completions_alike(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.early_end(after_chunks=1), stream=True)
    stream_chunks(client)  # cut short, without a finish_reason
    stream_chunks(client)
    client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert server.fault_counts == {"early_end": 1, "ok": 2}
    assert sum(server.fault_counts.values()) == server.counts["total"]


# -- lifecycle ---------------------------------------------------------------------------


def test_stop_is_idempotent_and_quick_even_with_a_stalled_stream() -> None:
    srv = FaultServer().start()
    srv.push(Fault.stall(after_chunks=0, seconds=60))
    c = make_client(srv)
    stream = c.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
    try:
        next(iter(stream))
        started = time.monotonic()
        srv.stop()
        srv.stop()
        assert time.monotonic() - started < 1.0
        assert not srv.running
        with pytest.raises(openai.APIConnectionError):
            list(stream)
    finally:
        stream.close()
        c.close()


def test_stop_without_start_is_a_noop() -> None:
    FaultServer().stop()


def test_start_on_a_busy_port_raises_oserror(server: FaultServer) -> None:
    with pytest.raises(OSError):
        FaultServer(port=server.port).start()


# -- Fault values ------------------------------------------------------------------------


def test_faults_are_comparable_immutable_values() -> None:
    assert Fault.status(503, retry_after=1) == Fault.status(503, retry_after=1)
    assert Fault.status(503) != Fault.status(502)
    assert hash(Fault.drop(after_chunks=2)) == hash(Fault.drop(after_chunks=2))
    assert Fault.ok() == Fault()
    assert (
        repr(Fault.stall(after_chunks=1, seconds=0.5)) == "Fault.stall(after_chunks=1, seconds=0.5)"
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        Fault.ok().kind = "drop"  # type: ignore[misc]


@pytest.mark.parametrize(
    "build",
    [
        lambda: Fault.status(200),
        lambda: Fault.drop(after_chunks=-1),
        lambda: Fault.stall(seconds=-1.0),
        lambda: Fault.slow_first_byte(float("nan")),
        lambda: Fault(kind="bogus"),  # type: ignore[arg-type]
    ],
)
def test_invalid_faults_are_rejected(build: Any) -> None:
    with pytest.raises(ValueError):
        build()


# -- scale -----------------------------------------------------------------------------


@pytest.mark.slow  # 1,000 streams held for 3 s
@pytest.mark.timeout(60)
def test_1000_concurrent_streams_all_complete() -> None:
    """1,000 streams are open on the server at the same moment, and all finish intact.

    Every stream stalls for a few seconds after its role chunk, so the server
    holds all of them at once (``max_active`` proves it), then they resume.
    The client keeps few idle keep-alive connections: httpcore2's pool probes
    every idle socket on each release, which is quadratic with 1,000 of them.
    """
    n = 1000
    with FaultServer(words=2) as srv:
        srv.push(Fault.stall(after_chunks=0, seconds=3.0), stream=True, times=None)

        async def one(client: openai.AsyncOpenAI, i: int, barrier: asyncio.Barrier) -> str:
            messages: list[ChatCompletionMessageParam] = [
                {"role": "user", "content": f"prompt {i}"}
            ]
            stream = await client.chat.completions.create(
                model=MODEL,
                messages=messages,
                stream=True,
            )
            async with stream:
                parts: list[str] = []
                finish = None
                async for chunk in stream:
                    if chunk.choices[0].delta.role == "assistant":
                        await barrier.wait()
                    parts.append(chunk.choices[0].delta.content or "")
                    finish = chunk.choices[0].finish_reason or finish
            assert finish == "stop"
            return "".join(parts)

        async def main() -> list[str]:
            limits = httpx2.Limits(max_connections=n + 100, max_keepalive_connections=50)
            http_client = openai.DefaultAsyncHttpxClient(
                limits=limits, timeout=httpx2.Timeout(30.0)
            )
            async with openai.AsyncOpenAI(
                base_url=srv.base_url, api_key="test", max_retries=0, http_client=http_client
            ) as client:
                barrier = asyncio.Barrier(n)
                return await asyncio.wait_for(
                    asyncio.gather(*(one(client, i, barrier) for i in range(n))), timeout=40
                )

        started = time.monotonic()
        texts = asyncio.run(main())
        elapsed = time.monotonic() - started
        for i, text in enumerate(texts):
            assert text == srv.answer_for([{"role": "user", "content": f"prompt {i}"}], MODEL)
        counts = srv.counts
        assert counts["stream"] == n
        assert counts["max_active"] == n
        assert srv.wait_idle(timeout=5.0)
        assert elapsed < 30


# -- standalone ------------------------------------------------------------------------


def test_module_help_describes_options() -> None:
    from fallbackchain.testing.__main__ import main

    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0


def test_module_help_output(capsys: pytest.CaptureFixture[str]) -> None:
    from fallbackchain.testing.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for option in ("--port", "--words", "--host"):
        assert option in out


@pytest.mark.slow  # a subprocess
def test_module_serves_until_interrupted() -> None:
    import fallbackchain.testing

    # Make the package importable in the child however this process found it.
    root = str(Path(fallbackchain.testing.__file__).parents[2])
    pythonpath = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "fallbackchain.testing", "--port", "0", "--words", "3"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": pythonpath},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        base_url = line.strip().split("base_url=", 1)[1]
        with openai.OpenAI(base_url=base_url, api_key="test", max_retries=0) as c:
            completion = c.chat.completions.create(model="m", messages=MESSAGES)
        content = completion.choices[0].message.content
        assert content is not None
        assert content.startswith("Answer from m: ")
        assert len(content.split(" ")) == 3 + 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
