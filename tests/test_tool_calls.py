"""Tool calls and refusals that stream: the fault server scripts them, the events and the
drop-in carry them, and a retried or failed-over answer never duplicates or mixes them.

Real openai clients over loopback against fault servers whose responder scripts the answers;
every chain test runs sync and async.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from fallbackchain import (
    FallbackConfig,
    StreamDivergedError,
    TruncatedStreamError,
    UpstreamConnectionError,
    trace_of,
)
from fallbackchain.chain._assembly import AttemptAssembler, Display
from fallbackchain.testing import Answer, Fault, FaultServer, ToolCall

from .conftest import user

MODEL = "test-model"
WEATHER = ToolCall("get_weather", {"city": "Oslo", "unit": "celsius"})
CLOCK = ToolCall("get_time", {"timezone": "Europe/Oslo"})
REFUSAL = "I am sorry, but I cannot help with that request at all."
_calls = itertools.count()


def respond(messages: Sequence[Mapping[str, Any]], model: str) -> str | Answer:
    """The scripted answers, chosen by the last user message."""
    if messages and messages[-1].get("role") == "tool":
        return f"The tool said {messages[-1]['content']}; that is all, from {model}."
    prompt = next(
        (m["content"] for m in reversed(messages) if m.get("role") == "user"), ""
    )
    if prompt == "weather?":
        return Answer.calling(WEATHER)
    if prompt == "two tools":
        return Answer.calling(WEATHER, CLOCK)
    if prompt == "think first":
        return Answer.calling(WEATHER, content="Let me look that up for you right away.")
    if prompt == "varying":  # as a real model: each answer its own id and arguments
        n = next(_calls)
        return Answer.calling(ToolCall("lookup", {"attempt": n, "query": "x" * 30}))
    if prompt == "refuse":
        return Answer(refusal=REFUSAL)
    return f"A plain answer from {model} to {prompt!r}."


@pytest.fixture(scope="module")
def _session_server() -> Iterator[FaultServer]:
    """This module's fault server, scripted by ``respond``, in place of the session's."""
    with FaultServer(responder=respond) as server:
        yield server


# -- what a consumer rebuilds ------------------------------------------------------------------

Message = tuple[str, str, list[tuple[str | None, str, str]]]


def rebuilt(events: list[Any]) -> Message:
    """Text, refusal and tool calls ``(id, name, arguments)`` from the events after the last reset."""
    text: list[str] = []
    refusal: list[str] = []
    calls: dict[int, list[Any]] = {}
    for event in events:
        if event.type == "reset":
            text, refusal, calls = [], [], {}
        elif event.type == "delta":
            text.append(event.text)
        elif event.type == "refusal":
            refusal.append(event.text)
        elif event.type == "tool_call":
            slot = calls.setdefault(event.index, [None, "", []])
            slot[0], slot[1] = event.id, event.name
            slot[2].append(event.text)
    return (
        "".join(text),
        "".join(refusal),
        [(i, n, "".join(a)) for _, (i, n, a) in sorted(calls.items())],
    )


def final(completion: ChatCompletion) -> Message:
    message = completion.choices[0].message
    calls = [(c.id, c.function.name, c.function.arguments) for c in message.tool_calls or ()]
    return message.content or "", message.refusal or "", calls


def accumulate(chunks: list[Any]) -> Message:
    """Chunks put together as an SDK user does it."""
    text: list[str] = []
    refusal: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    for chunk in chunks:
        if not chunk.choices:
            continue
        delta = chunk.choices[0].delta
        text.append(delta.content or "")
        refusal.append(delta.refusal or "")
        for call in delta.tool_calls or ():
            slot = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
            if call.id:
                slot["id"] = call.id
            if call.function and call.function.name:
                slot["name"] += call.function.name
            if call.function and call.function.arguments:
                slot["arguments"] += call.function.arguments
    return (
        "".join(text),
        "".join(refusal),
        [(s["id"], s["name"], s["arguments"]) for _, s in sorted(calls.items())],
    )


def types(events: list[Any]) -> list[str]:
    return [e.type for e in events]


# -- the fault server scripts tool calls and refusals --------------------------------------------


@pytest.fixture
def plain(server: FaultServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
        yield client


def test_the_server_streams_a_tool_call_as_openai_does(server, plain):
    chunks = list(plain.chat.completions.create(model=MODEL, messages=user("weather?"), stream=True))
    deltas = [c.choices[0].delta for c in chunks]
    assert deltas[0].role == "assistant" and not deltas[0].tool_calls
    (header,) = deltas[1].tool_calls
    assert (header.index, header.id, header.type) == (0, WEATHER.id, "function")
    assert (header.function.name, header.function.arguments) == ("get_weather", "")
    pieces = [d.tool_calls[0] for d in deltas[2:] if d.tool_calls]
    assert len(pieces) > 3  # the arguments come in several fragments
    assert all(p.id is None and p.function.name is None and p.index == 0 for p in pieces)
    assert "".join(p.function.arguments for p in pieces) == '{"city": "Oslo", "unit": "celsius"}'
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    whole = plain.chat.completions.create(model=MODEL, messages=user("weather?"))
    assert whole.choices[0].finish_reason == "tool_calls"
    assert whole.choices[0].message.content is None
    assert final(whole) == accumulate(chunks) == ("", "", [(WEATHER.id, *_named(WEATHER))])


def _named(call: ToolCall) -> tuple[str, str]:
    return call.name, call.arguments


def test_the_server_streams_several_tool_calls_and_text_before_them(server, plain):
    for prompt, expected in [
        ("two tools", ("", "", [(WEATHER.id, *_named(WEATHER)), (CLOCK.id, *_named(CLOCK))])),
        ("think first", ("Let me look that up for you right away.", "",
                         [(WEATHER.id, *_named(WEATHER))])),
    ]:
        chunks = list(plain.chat.completions.create(model=MODEL, messages=user(prompt),
                                                    stream=True))
        assert accumulate(chunks) == expected
        assert final(plain.chat.completions.create(model=MODEL, messages=user(prompt))) == expected


def test_the_server_streams_a_refusal(server, plain):
    chunks = list(plain.chat.completions.create(model=MODEL, messages=user("refuse"), stream=True))
    assert len([c for c in chunks if c.choices and c.choices[0].delta.refusal]) > 3
    assert accumulate(chunks) == ("", REFUSAL, [])
    assert chunks[-1].choices[0].finish_reason == "stop"
    whole = plain.chat.completions.create(model=MODEL, messages=user("refuse"))
    assert final(whole) == ("", REFUSAL, [])


def test_faults_apply_to_a_tool_call_stream(server, plain):
    server.push(Fault.drop(after_chunks=3), stream=True)
    seen: list[Any] = []
    stream = plain.chat.completions.create(model=MODEL, messages=user("weather?"), stream=True)
    with pytest.raises(openai.APIConnectionError):
        seen.extend(stream)
    assert len(seen) == 4  # the role chunk, the call's header, two argument fragments
    server.push(Fault.early_end(after_chunks=2), stream=True)
    cut = list(plain.chat.completions.create(model=MODEL, messages=user("weather?"), stream=True))
    assert all(c.choices[0].finish_reason is None for c in cut) and len(cut) == 3
    server.push(Fault.drop(), stream=False)
    with pytest.raises(openai.APIConnectionError):
        plain.chat.completions.create(model=MODEL, messages=user("weather?"))


def test_tool_call_values_are_checked_and_ids_are_stable():
    with pytest.raises(ValueError, match="function name"):
        ToolCall("")
    assert ToolCall("f", {"a": 1}).arguments == '{"a": 1}'
    assert ToolCall("f", {"a": 1}) == ToolCall("f", '{"a": 1}')
    assert ToolCall("f", "{}", id="call_x").id == "call_x"
    with pytest.raises(TypeError, match="ToolCall"):
        Answer(tool_calls=("f",))  # type: ignore[arg-type]
    assert Answer.calling(WEATHER).finish_reason == "tool_calls"
    assert Answer("text").finish_reason == "stop"


def test_a_responder_returning_something_else_gets_a_500():
    with FaultServer(responder=lambda messages, model: 42) as bad:  # type: ignore[arg-type,return-value]
        client = openai.OpenAI(base_url=bad.base_url, api_key="k", max_retries=0)
        with client, pytest.raises(openai.InternalServerError, match="str or Answer"):
            client.chat.completions.create(model=MODEL, messages=user("x"))


# -- the event API -----------------------------------------------------------------------------


def test_a_streamed_tool_call_yields_events_that_rebuild_the_final_tool_calls(harness, server):
    events, response = harness.ask("weather?")
    assert response.source == "stream" and response.text == ""
    assert response.completion.choices[0].finish_reason == "tool_calls"
    assert rebuilt(events) == final(response.completion)
    assert final(response.completion)[2] == [(WEATHER.id, *_named(WEATHER))]
    calls = [e for e in events if e.type == "tool_call"]
    assert len(calls) > 3 and set(types(events)) == {"tool_call"}  # streamed, not one block
    first = calls[0]
    assert (first.index, first.id, first.name, first.text) == (0, WEATHER.id, "get_weather", "")
    assert all(e.source == "stream" for e in events)


def test_several_tool_calls_and_text_rebuild_the_final_message(harness, server):
    for prompt in ("two tools", "think first"):
        events, response = harness.ask(prompt)
        assert rebuilt(events) == final(response.completion)
        assert "reset" not in types(events)
    assert {e.index for e in harness.ask("two tools")[0]} == {0, 1}


def test_a_refusal_streams_as_refusal_events(harness, server):
    events, response = harness.ask("refuse")
    assert set(types(events)) == {"refusal"} and len(events) > 3
    assert rebuilt(events) == ("", REFUSAL, []) == final(response.completion)


@pytest.mark.parametrize("prompt", ["weather?", "varying"])
def test_a_drop_mid_arguments_then_a_retry_never_duplicates_or_mixes_arguments(
    harness, server, prompt
):
    server.push(Fault.drop(after_chunks=3), stream=True)  # the header, 2 argument fragments
    events, response = harness.ask(prompt)
    assert [type(a.exception) for a in response.attempts] == [UpstreamConnectionError, type(None)]
    kinds = types(events)
    assert kinds.count("reset") == 1  # the retry starts over: another attempt, other arguments
    before = events[: kinds.index("reset")]
    assert len(before) == 3 and set(types(before)) == {"tool_call"}
    assert rebuilt(events) == final(response.completion)
    ((_, _, arguments),) = final(response.completion)[2]
    assert json.loads(arguments)  # whole, not two attempts' fragments glued
    after = [e for e in events[kinds.index("reset") + 1 :] if e.type == "tool_call"]
    assert "".join(e.text for e in after) == arguments
    if prompt == "varying":
        shown_first = "".join(e.text for e in before)
        assert not arguments.startswith(shown_first) and before[0].id != after[0].id


def test_a_drop_in_the_text_before_a_tool_call_needs_no_reset(harness, server):
    server.push(Fault.drop(after_chunks=3), stream=True)  # 3 words of the text
    events, response = harness.ask("think first")
    assert "reset" not in types(events)
    assert rebuilt(events) == final(response.completion)
    assert len(response.attempts) == 2


def test_a_refusal_cut_mid_stream_is_replaced_not_continued(harness, server):
    server.push(Fault.early_end(after_chunks=4), stream=True)
    events, response = harness.ask("refuse")
    assert isinstance(response.attempts[0].exception, TruncatedStreamError)
    assert types(events).count("reset") == 1
    assert rebuilt(events) == ("", REFUSAL, []) == final(response.completion)


def test_the_completion_tier_and_the_cache_show_a_tool_call_as_events(harness, server):
    server.push(Fault.drop(after_chunks=3), stream=True, times=3)
    events, response = harness.ask("weather?")
    assert response.source == "completion"
    assert rebuilt(events) == final(response.completion)
    assert final(response.completion)[2] == [(WEATHER.id, *_named(WEATHER))]
    server.default = Fault.status(503)
    events, response = harness.ask("weather?")
    assert response.source == "cache"
    assert rebuilt(events) == final(response.completion)
    assert [e.type for e in events if e.type != "reset"] == ["tool_call"]  # whole, at once


def test_failing_over_from_a_tool_call_to_a_text_answer_leaves_no_tool_call(
    harness_factory, server, backup
):
    entry = FallbackConfig(name="backup", model="backup-model", base_url="http://127.0.0.1:1/v1")
    h = harness_factory(fallbacks=(entry,), fallback_servers={"backup": backup})
    server.default = Fault.drop(after_chunks=4)
    events, response = h.ask("weather?")
    assert response.source == "backup"
    assert "tool_call" in types(events) and "reset" in types(events)
    assert rebuilt(events) == (response.text, "", []) == final(response.completion)


# -- the display rule, alone ------------------------------------------------------------------


def _chunk(delta: dict[str, Any], finish: str | None = None) -> Any:
    from openai.types.chat import ChatCompletionChunk

    sent = {
        "id": "c", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    ChatCompletionChunk.model_validate(sent)  # a chunk the SDK would accept
    return sent  # as the chain reads it: the JSON object sent


def _show(display: Display, chunks: list[Any]) -> tuple[list[Any], AttemptAssembler]:
    assembler = AttemptAssembler()
    events: list[Any] = []
    for chunk in chunks:
        piece = assembler.add(chunk)
        if piece:
            events.extend(display.delta(piece, "s"))
    return events, assembler


def _call(arguments: str, header: bool = False) -> dict[str, Any]:
    call: dict[str, Any] = {"index": 0, "function": {"arguments": arguments}}
    if header:
        call.update(id="call_1", type="function")
        call["function"]["name"] = "f"
    return {"tool_calls": [call]}


def test_a_retry_whose_text_stops_short_of_the_shown_text_resets_before_its_tool_call():
    display = Display()
    shown, _ = _show(display, [_chunk({"content": "Let me "}), _chunk({"content": "check."})])
    display.new_attempt()
    events, assembler = _show(
        display,
        [_chunk({"content": "Let me "}), _chunk(_call("{}", header=True)), _chunk({}, "tool_calls")],
    )
    assert types(events) == ["reset", "delta", "tool_call"]
    done = assembler.finish(model="m")
    assert display.answered(done, "s") == ()
    assert rebuilt(shown + events) == final(done) == ("Let me ", "", [("call_1", "f", "{}")])


def test_settling_restores_the_invariant_if_the_events_fell_short():
    display = Display()
    _, assembler = _show(display, [_chunk(_call("{", header=True)), _chunk(_call("}"))])
    assembler.add(_chunk({}, "tool_calls"))
    done = assembler.finish(model="m")
    assert display.answered(done, "s") == ()
    # an answer the events never showed (say the last fragment was lost): reset, then whole
    other = done.model_copy(deep=True)
    other.choices[0].message.tool_calls[0].function.arguments = '{"a": 1}'
    events = list(display.answered(other, "s"))
    assert types(events) == ["reset", "tool_call"]
    assert rebuilt(events) == final(other)


# -- the drop-in: chunks carry delta.tool_calls ---------------------------------------------------


def dropin_chunks(h: Any, prompt: str, **kwargs: Any) -> tuple[Any, list[Any]]:
    completions = h.chain.chat.completions
    if h.mode == "sync":
        with completions.create(messages=user(prompt), stream=True, **kwargs) as stream:
            return stream, list(stream)

    async def go() -> tuple[Any, list[Any]]:
        async with await completions.create(messages=user(prompt), stream=True, **kwargs) as s:
            return s, [c async for c in s]

    return h.loop.run_until_complete(go())


def plain_chunks(h: Any, server: FaultServer, prompt: str) -> list[Any]:
    if h.mode == "sync":
        with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
            return list(client.chat.completions.create(model=MODEL, messages=user(prompt),
                                                       stream=True))

    async def go() -> list[Any]:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k",
                                      max_retries=0) as client:
            stream = await client.chat.completions.create(model=MODEL, messages=user(prompt),
                                                          stream=True)
            return [c async for c in stream]

    return h.loop.run_until_complete(go())


@pytest.mark.parametrize("prompt", ["weather?", "two tools", "think first", "refuse"])
def test_drop_in_chunks_give_the_same_message_as_a_plain_client(harness, server, prompt):
    expected = accumulate(plain_chunks(harness, server, prompt))
    stream, chunks = dropin_chunks(harness, prompt)
    assert accumulate(chunks) == expected == final(trace_of(stream).completion)
    with_calls = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    if expected[2]:
        assert len(with_calls) > 3  # streamed in fragments, as the SDK's
        header = with_calls[0].choices[0].delta.tool_calls[0]
        assert header.type == "function" and header.id and header.function.name
    finish = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finish[-1] == ("tool_calls" if expected[2] else "stop")
    assert all(f is None for f in finish[:-1])


def test_drop_in_survives_a_drop_before_any_tool_call_chunk(harness, server):
    expected = accumulate(plain_chunks(harness, server, "think first"))
    server.push(Fault.drop(after_chunks=3), stream=True)
    _, chunks = dropin_chunks(harness, "think first")
    assert accumulate(chunks) == expected


def test_drop_in_never_glues_two_tool_calls_after_a_drop_mid_arguments(harness, server):
    server.push(Fault.drop(after_chunks=3), stream=True)
    consumed: list[Any] = []
    if harness.mode == "sync":

        def read() -> None:
            with harness.chain.chat.completions.create(messages=user("varying"),
                                                       stream=True) as stream:
                consumed.extend(stream)

        with pytest.raises(StreamDivergedError) as info:
            read()
    else:

        async def go() -> None:
            async with await harness.chain.chat.completions.create(
                messages=user("varying"), stream=True
            ) as s:
                async for c in s:
                    consumed.append(c)

        with pytest.raises(StreamDivergedError) as info:
            harness.loop.run_until_complete(go())
    error = info.value
    shown = accumulate(consumed)[2]
    assert len(shown) == 1 and not shown[0][2].endswith("}")  # only the dropped call's start
    (call,) = final(error.response.completion)[2]
    assert json.loads(call[2]) and call[0] != shown[0][0]
    # buffered, the consumer gets exactly the answer that stands
    server.push(Fault.drop(after_chunks=3), stream=True)
    stream, chunks = dropin_chunks(harness, "weather?", on_divergence="buffer")
    assert accumulate(chunks) == final(trace_of(stream).completion)
    assert final(trace_of(stream).completion)[2] == [(WEATHER.id, *_named(WEATHER))]


def dropin_outcome(h: Any, **kwargs: Any) -> tuple[list[Any], BaseException | None]:
    """A drop-in tool-call stream read to its end: the chunks, and what it raised."""
    chunks: list[Any] = []
    completions = h.chain.chat.completions
    try:
        if h.mode == "sync":
            with completions.create(messages=user("weather?"), stream=True, **kwargs) as s:
                for chunk in s:
                    chunks.append(chunk)
        else:

            async def go() -> None:
                async with await completions.create(
                    messages=user("weather?"), stream=True, **kwargs
                ) as s:
                    async for chunk in s:
                        chunks.append(chunk)

            h.loop.run_until_complete(go())
    except StreamDivergedError as exc:
        return chunks, exc
    return chunks, None


FAULTS = [
    pytest.param(Fault.status(503), False, id="status-503"),
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
@pytest.mark.parametrize(("fault", "waits"), FAULTS)
def test_a_drop_in_tool_call_stream_through_every_fault_kind_is_whole(
    harness_factory, server, fault, waits
):
    """Buffered or streaming (the default), the clean run's tool call: a replacement that
    repeats and continues the call already yielded is continued, never glued from two
    answers (see tests/test_dropin_tools.py for replacements that differ)."""
    short = {"openai__idle_timeout": 0.3, "openai__first_token_timeout": 0.3} if waits else {}
    h = harness_factory(real_time=waits, **short)
    clean = ("", "", [(WEATHER.id, *_named(WEATHER))])
    server.push(fault, stream=True)
    chunks, error = dropin_outcome(h, on_divergence="buffer")
    assert error is None and accumulate(chunks) == clean
    server.push(fault, stream=True)
    chunks, error = dropin_outcome(h)
    assert error is None and accumulate(chunks) == clean
    assert server.fault_counts[fault.kind] == 2


def test_a_name_sent_in_pieces_reaches_drop_in_chunks_as_the_sdk_would_send_it():
    """Upstreams may split a function's name too: events carry it as known so far, and the
    drop-in sends only what is new, so an SDK-style accumulation rebuilds it once."""
    from fallbackchain.chain._dropin_chunks import Chunker as _Chunker

    display = Display()
    header = {"tool_calls": [{"index": 0, "id": "call_9", "type": "function",
                              "function": {"name": "get_", "arguments": ""}}]}
    more_name = {"tool_calls": [{"index": 0, "function": {"name": "weather", "arguments": ""}}]}
    events, assembler = _show(
        display, [_chunk(header), _chunk(more_name), _chunk(_call('{"a"')), _chunk(_call(": 1}"))]
    )
    assembler.add(_chunk({}, "tool_calls"))
    done = assembler.finish(model="m")
    assert rebuilt(events) == final(done) == ("", "", [("call_9", "get_weather", '{"a": 1}')])
    chunker = _Chunker("m", usage=False, divergence="raise")
    chunks = [c for e in events for c in chunker.event(e)]
    assert accumulate(chunks) == final(done)
    assert len(chunks) == 5  # the role chunk, one per event (the name's rest, without repeats)
    assert chunker.event(events[-1].__class__("tool_call", "", "s", index=0, id="call_9",
                                              name="get_weather")) == []  # nothing new
