"""The drop-in surface: ``chain.chat.completions.create`` as the openai SDK's, sync and async.

Real openai clients over loopback against the fault server. One snippet written for
``openai.OpenAI().chat.completions`` runs unchanged against a plain client and against the
chain, with the same assertions; faults then show what the chain adds and what it hides.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from fallbackchain import (
    AllTiersFailedError,
    AsyncDropInStream,
    DropInStream,
    FallbackConfig,
    MalformedChunkError,
    StreamDivergedError,
    StreamNotFinishedError,
    TruncatedStreamError,
    UpstreamConnectionError,
    trace_of,
)
from fallbackchain.testing import Fault, FaultServer

from .conftest import ROOT, user

MODEL = "test-model"  # config/test.toml's model


# -- the unchanged SDK snippet (sync and async), and its assertions ------------------------


def sdk_snippet(completions: Any, prompt: str) -> tuple[Any, list[Any], list[Any]]:
    """Plain openai-SDK code: a completion, a stream with usage, a stream without."""
    messages = [{"role": "user", "content": prompt}]
    completion = completions.create(model=MODEL, messages=messages)
    with completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    ) as stream:
        with_usage = list(stream)
    plain = list(completions.create(model=MODEL, messages=messages, stream=True))
    return completion, with_usage, plain


async def async_sdk_snippet(completions: Any, prompt: str) -> tuple[Any, list[Any], list[Any]]:
    """The same, written for ``openai.AsyncOpenAI().chat.completions``."""
    messages = [{"role": "user", "content": prompt}]
    completion = await completions.create(model=MODEL, messages=messages)
    async with await completions.create(
        model=MODEL, messages=messages, stream=True, stream_options={"include_usage": True}
    ) as stream:
        with_usage = [chunk async for chunk in stream]
    plain = [chunk async for chunk in await completions.create(
        model=MODEL, messages=messages, stream=True
    )]
    return completion, with_usage, plain


def chunk_text(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def check_snippet(result: tuple[Any, list[Any], list[Any]], expected: str) -> None:
    """What the snippet's author relies on, true of the SDK and of the chain alike."""
    completion, with_usage, plain = result
    assert isinstance(completion, ChatCompletion)
    assert completion.choices[0].message.content == expected
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.total_tokens > 0
    for chunks in (with_usage, plain):
        assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
        assert len({c.id for c in chunks}) == 1
        assert {c.model for c in chunks} == {MODEL}
        assert len({c.created for c in chunks}) == 1
        assert chunks[0].choices[0].delta.role == "assistant"
        assert chunk_text(chunks) == expected
        assert len(chunks) > 5  # streamed, not one block
        choice_chunks = [c for c in chunks if c.choices]
        assert choice_chunks[-1].choices[0].finish_reason == "stop"
        assert all(c.choices[0].finish_reason is None for c in choice_chunks[:-1])
    assert with_usage[-1].choices == []
    assert with_usage[-1].usage is not None and with_usage[-1].usage.total_tokens > 0
    assert plain[-1].choices and plain[-1].usage is None


def run_snippet(h: Any, completions: Any, prompt: str) -> tuple[Any, list[Any], list[Any]]:
    if h.mode == "sync":
        return sdk_snippet(completions, prompt)
    return h.loop.run_until_complete(async_sdk_snippet(completions, prompt))


@pytest.fixture
def plain_completions(harness: Any, server: FaultServer) -> Iterator[Any]:
    """``chat.completions`` of a plain openai client (the harness's mode) on the same server."""
    if harness.mode == "sync":
        client: Any = openai.OpenAI(base_url=server.base_url, api_key="sk-plain", max_retries=0)
        yield client.chat.completions
        client.close()
    else:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-plain", max_retries=0)
        yield client.chat.completions
        harness.loop.run_until_complete(client.close())


def test_one_sdk_snippet_runs_unchanged_against_a_client_and_the_chain(
    harness, server, plain_completions
):
    expected = harness.answer("hello")
    check_snippet(run_snippet(harness, plain_completions, "hello"), expected)
    check_snippet(run_snippet(harness, harness.chain.chat.completions, "hello"), expected)


def test_the_trace_is_reachable_for_a_completion_and_a_finished_stream(harness, server):
    completion, _, _ = run_snippet(harness, harness.chain.chat.completions, "hello")
    trace = trace_of(completion)
    assert trace is not None
    assert trace.source == "stream" and [a.tier for a in trace.attempts] == ["stream"]
    assert trace.text == completion.choices[0].message.content
    # the trace rides outside the model: dumps and equality are the SDK's
    assert "_fallbackchain" not in completion.model_dump_json()
    assert completion == trace.completion
    # a plain client's completion has none
    plain = openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0)
    with plain:
        assert trace_of(plain.chat.completions.create(model=MODEL, messages=user("x"))) is None


def stream_via_chain(h: Any, prompt: str = "hello", **kwargs: Any) -> tuple[Any, list[Any]]:
    """A drop-in stream read to its end: (the stream, its chunks)."""
    completions = h.chain.chat.completions
    if h.mode == "sync":
        with completions.create(messages=user(prompt), stream=True, **kwargs) as stream:
            return stream, list(stream)

    async def go() -> tuple[Any, list[Any]]:
        async with await completions.create(
            messages=user(prompt), stream=True, **kwargs
        ) as stream:
            return stream, [c async for c in stream]

    return h.loop.run_until_complete(go())


def test_trace_of_a_stream_before_its_end_raises(harness, server):
    completions = harness.chain.chat.completions
    if harness.mode == "sync":
        stream = completions.create(messages=user("x"), stream=True)
        with pytest.raises(StreamNotFinishedError):
            trace_of(stream)
        stream.close()
        return

    async def go() -> None:
        stream = await completions.create(messages=user("x"), stream=True)
        with pytest.raises(StreamNotFinishedError):
            trace_of(stream)
        await stream.aclose()  # the SDK's AsyncStream has both names
        assert [c async for c in stream] == []

    harness.loop.run_until_complete(go())


# -- faults the drop-in consumer never sees ---------------------------------------------------


@pytest.mark.parametrize(
    ("fault", "error_type"),
    [
        (Fault.drop(after_chunks=3), UpstreamConnectionError),
        (Fault.early_end(after_chunks=3), TruncatedStreamError),
        (Fault.malformed(after_chunks=3), MalformedChunkError),
    ],
)
def test_a_mid_stream_failure_is_invisible_when_the_replacement_is_the_same_answer(
    harness, server, fault, error_type
):
    server.push(fault, stream=True)
    stream, chunks = stream_via_chain(harness, stream_options={"include_usage": True})
    assert chunk_text(chunks) == harness.answer("hello")  # nothing repeated, nothing lost
    assert len({c.id for c in chunks}) == 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].usage is not None
    trace = trace_of(stream)
    assert [type(a.exception) for a in trace.attempts] == [error_type, type(None)]
    assert server.counts["stream"] == 2


def test_the_snippet_survives_a_drop_on_its_first_call(harness, server):
    server.push(Fault.drop(after_chunks=3), stream=True)
    check_snippet(run_snippet(harness, harness.chain.chat.completions, "hello"), harness.answer())
    assert server.counts["stream"] == 4  # the dropped attempt and its retry, then two streams


EVERY_FAULT = [
    pytest.param(Fault.status(503), False, id="status-503"),
    pytest.param(Fault.status(429), False, id="status-429"),
    pytest.param(Fault.reset(), False, id="reset"),
    pytest.param(Fault.drop(after_chunks=3), False, id="drop"),
    pytest.param(Fault.early_end(after_chunks=3), False, id="early_end"),
    pytest.param(Fault.sse_error(after_chunks=3), False, id="sse_error"),
    pytest.param(Fault.malformed(after_chunks=3), False, id="malformed"),
    # waits: real time against short route timeouts (0.3 s)
    pytest.param(Fault.stall(after_chunks=3, seconds=3.0), True, id="stall"),
    pytest.param(Fault.slow_first_byte(3.0), True, id="slow_first_byte"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("fault", "waits"), EVERY_FAULT)
def test_the_unchanged_snippet_holds_through_every_fault_kind(harness_factory, server, fault, waits):
    short = {"openai__idle_timeout": 0.3, "openai__first_token_timeout": 0.3} if waits else {}
    h = harness_factory(real_time=waits, **short)
    server.push(fault, stream=True)  # the snippet's first call meets it
    check_snippet(run_snippet(h, h.chain.chat.completions, "hello"), h.answer("hello"))
    assert server.fault_counts[fault.kind] == 1


def test_a_failure_before_any_answer_raises_at_create_as_the_sdk_does(harness, server):
    server.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):
        create_now(harness, messages=user("never answered"), stream=True)


def test_closing_early_stops_the_request_and_is_neutral(harness, server):
    completions = harness.chain.chat.completions
    if harness.mode == "sync":
        stream = completions.create(messages=user("hello"), stream=True)
        first = [next(stream), next(stream)]
        stream.close()
        rest = list(stream)
    else:

        async def go() -> tuple[list[Any], list[Any]]:
            stream = await completions.create(messages=user("hello"), stream=True)
            first = [await anext(stream), await anext(stream)]
            await stream.close()
            return first, [c async for c in stream]

        first, rest = harness.loop.run_until_complete(go())
    assert first[0].choices[0].delta.role == "assistant" and first[1].choices[0].delta.content
    assert rest == []
    assert server.wait_idle(5.0)
    assert set(harness.chain.breaker_states().values()) == {"closed"}


# -- divergence ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backup_server() -> Iterator[FaultServer]:
    with FaultServer(words=10) as backup:
        yield backup


@pytest.fixture
def diverging(harness_factory, server, backup_server):
    """A chain whose primary shows 3 chunks then drops on every try; the backup differs."""
    backup_server.clear()
    backup_server.reset_counts()
    entry = FallbackConfig(name="backup", model="backup-model", base_url="http://127.0.0.1:1/v1")
    h = harness_factory(fallbacks=(entry,), fallback_servers={"backup": backup_server})
    server.default = Fault.drop(after_chunks=3)
    h.backup_answer = backup_server.answer_for(user("hello"), "backup-model")
    yield h
    backup_server.wait_idle(5.0)


def consume(h: Any, **kwargs: Any) -> tuple[list[Any], BaseException | None]:
    """Read a drop-in stream as an SDK consumer does; return the chunks and what it raised."""
    completions = h.chain.chat.completions
    chunks: list[Any] = []
    if h.mode == "sync":
        try:
            with completions.create(messages=user("hello"), stream=True, **kwargs) as stream:
                for chunk in stream:
                    chunks.append(chunk)
        except Exception as exc:
            return chunks, exc
        return chunks, None

    async def go() -> BaseException | None:
        try:
            async with await completions.create(
                messages=user("hello"), stream=True, **kwargs
            ) as stream:
                async for chunk in stream:
                    chunks.append(chunk)
        except Exception as exc:
            return exc
        return None

    return chunks, h.loop.run_until_complete(go())


def test_divergence_raises_by_default_and_never_glues_two_answers(diverging):
    chunks, error = consume(diverging)
    shown = chunk_text(chunks)
    primary = diverging.answer("hello")
    assert shown and primary.startswith(shown)  # only the first answer's text was given
    assert isinstance(error, StreamDivergedError)
    assert error.shown_chars == len(shown)
    assert error.response.source == "backup"
    assert error.response.text == diverging.backup_answer
    assert not diverging.backup_answer.startswith(shown)
    assert all(c.choices[0].finish_reason is None for c in chunks if c.choices)
    assert "backup" in str(error) and primary not in str(error)


def test_divergence_with_buffer_yields_only_the_final_answer(diverging):
    stream, chunks = stream_via_chain(diverging, on_divergence="buffer")
    assert chunk_text(chunks) == diverging.backup_answer
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert trace_of(stream).source == "backup"


def test_buffer_mode_on_a_healthy_stream_gives_the_same_answer(harness, server):
    _, chunks = stream_via_chain(harness, on_divergence="buffer")
    assert chunk_text(chunks) == harness.answer("hello")
    assert chunks[0].choices[0].delta.role == "assistant"


# -- arguments: what reaches the provider --------------------------------------------------


def create_now(h: Any, **kwargs: Any) -> Any:
    completions = h.chain.chat.completions
    if h.mode == "sync":
        return completions.create(**kwargs)
    return h.loop.run_until_complete(completions.create(**kwargs))


@pytest.mark.parametrize(
    "option",
    [{"deadline": 5.0}, {"max_attempts": 1}, {"cache": "off"}, {"fallbacks": False}],
)
def test_the_chains_own_options_apply_and_are_never_sent(harness, server, option):
    completion = create_now(harness, messages=user("x"), **option)
    assert completion.choices[0].message.content == harness.answer("x")
    [name] = option
    assert name not in server.requests[-1].body


def test_a_bad_chain_option_is_refused_before_anything_is_sent(harness, server):
    with pytest.raises(ValueError, match="cache"):
        create_now(harness, messages=user("x"), cache="sometimes")
    assert server.counts["total"] == 0


def test_an_unknown_keyword_is_refused_as_the_sdk_does(harness, server):
    with pytest.raises(TypeError, match="'temprature'"):
        create_now(harness, messages=user("x"), temprature=0.2)
    assert server.counts["total"] == 0


@pytest.mark.parametrize("messages", [None, "hi", {"role": "user", "content": "hi"}, 3])
def test_messages_that_are_not_a_list_are_refused_naming_them(harness, server, messages):
    with pytest.raises(TypeError, match="'messages' must be a list of messages"):
        create_now(harness, messages=messages)
    assert server.counts["total"] == 0


def test_on_divergence_is_checked_and_never_sent(harness, server):
    with pytest.raises(ValueError, match="'append'"):
        create_now(harness, messages=user("x"), stream=True, on_divergence="append")
    assert server.counts["total"] == 0
    create_now(harness, messages=user("x"), on_divergence="buffer", temperature=0.5)
    body = server.requests[-1].body
    assert "on_divergence" not in body and body["temperature"] == 0.5


@pytest.mark.parametrize("stream", [False, True])
def test_sdk_options_pass_through_and_a_completion_tier_never_gets_stream_options(
    harness, server, stream
):
    server.push(Fault.early_end(after_chunks=3), stream=True, times=3)  # to the completion tier
    kwargs: dict[str, Any] = {
        "messages": user("x"),
        "stream_options": {"include_usage": True},
        "max_tokens": 50,
        "timeout": 30.0,  # accepted; each attempt is bounded by the route's own timeouts
    }
    if stream:
        answer, chunks = stream_via_chain(harness, "x", **{k: v for k, v in kwargs.items()
                                                           if k != "messages"})
        assert chunks[-1].usage is not None  # the usage chunk the caller asked for
    else:
        answer = create_now(harness, **kwargs)
        assert answer.choices[0].message.content == harness.answer("x")
    assert trace_of(answer).source == "completion"
    (body,) = [r.body for r in server.requests if not r.body.get("stream")]
    assert body["max_tokens"] == 50 and "stream_options" not in body


def test_a_stream_of_several_choices_is_refused(harness, server):
    with pytest.raises(ValueError, match="n=2"):
        create_now(harness, messages=user("x"), stream=True, n=2)
    assert server.counts["total"] == 0


def test_a_cached_tool_call_arrives_whole_in_one_chunk_before_the_finish(harness, server):
    messages = user("weather?")
    call = {"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}
    stored = ChatCompletion.model_validate({
        "id": "chatcmpl-stored", "object": "chat.completion", "created": 1, "model": MODEL,
        "choices": [{"index": 0, "finish_reason": "tool_calls",
                     "message": {"role": "assistant", "content": None, "tool_calls": [call]}}],
    })
    assert harness.chain.cache.put(harness.chain.cache_key(messages), stored)
    server.default = Fault.status(503)
    _, chunks = stream_via_chain(harness, "weather?")
    choice_chunks = [c for c in chunks if c.choices]
    last = choice_chunks[-1].choices[0]
    assert last.finish_reason == "tool_calls"
    assert not last.delta.tool_calls  # as the SDK's: the finish chunk carries nothing else
    (calls,) = [c.choices[0].delta.tool_calls for c in choice_chunks if c.choices[0].delta.tool_calls]
    (streamed,) = calls
    assert (streamed.index, streamed.id, streamed.type) == (0, "call_1", "function")
    assert streamed.function is not None
    assert (streamed.function.name, streamed.function.arguments) == ("weather", '{"city": "Oslo"}')
    completion = create_now(harness, messages=messages)
    assert completion.choices[0].message.tool_calls[0].function.name == "weather"
    assert trace_of(completion).source == "cache"


def test_each_answer_carries_its_own_trace(harness, server):
    live = create_now(harness, messages=user("twice"))
    server.default = Fault.status(503)
    cached = create_now(harness, messages=user("twice"))
    assert trace_of(live).source == "stream"
    assert trace_of(cached).source == "cache"
    assert live is not cached


def test_create_returns_the_drop_in_stream_classes(harness, server):
    stream, _ = stream_via_chain(harness)
    assert isinstance(stream, DropInStream if harness.mode == "sync" else AsyncDropInStream)


# -- static typing: the overloads ----------------------------------------------------------------


@pytest.mark.slow  # a mypy subprocess
def test_the_overloads_type_check_under_strict_mypy():
    """tests/typing/dropin.py: stream=True gives a stream, else a ChatCompletion."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "tests/typing/dropin.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
