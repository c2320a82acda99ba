"""Drop-in tool calls through faults, with the defaults; and what a replacement may continue.

Real openai clients over loopback against a fault server whose responder scripts a text and a
tool call; every chain test runs sync and async. The consumer is unchanged openai-SDK code.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import openai
import pytest

from fallbackchain import StreamDivergedError, trace_of
from fallbackchain._results import ChainEvent, ChainResponse
from fallbackchain.chain._dropin_chunks import Chunker
from fallbackchain.testing import Answer, Fault, FaultServer, ToolCall

from .conftest import user

MODEL = "test-model"
LEAD = "Let me look that up for you right away."  # 8 words: 8 content chunks
WEATHER = ToolCall("get_weather", {"city": "Oslo", "unit": "celsius"})
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
_tries = itertools.count()


def respond(messages: Sequence[Mapping[str, Any]], model: str) -> str | Answer:
    """Scripted answers, by the last user message."""
    prompt = messages[-1]["content"]
    n = next(_tries)
    if prompt == "weather?":
        return Answer.calling(WEATHER, content=LEAD)
    if prompt == "other ids":  # as a real model: the same call, each answer its own id
        return Answer.calling(ToolCall(WEATHER.name, WEATHER.arguments, id=f"call_try{n}"))
    if prompt == "other arguments":
        return Answer.calling(ToolCall("lookup", {"try": n, "query": "x" * 30}))
    if prompt == "other tool":
        return Answer.calling(ToolCall(f"tool_{n}", {"city": "Oslo"}))
    return f"A plain answer from {model} to {prompt!r}."


@pytest.fixture(scope="module")
def _session_server() -> Iterator[FaultServer]:
    """This module's fault server, scripted by ``respond``, in place of the session's."""
    with FaultServer(responder=respond) as server:
        yield server


# -- the unchanged openai-SDK snippet, with tools ------------------------------------------------

Message = tuple[str, list[tuple[str | None, str, str]], str | None]


def accumulate(chunks: list[Any]) -> Message:
    """Chunks put together as SDK users do: text, tool calls ``(id, name, arguments)``, finish."""
    text = ""
    calls: dict[int, dict[str, Any]] = {}
    finish = None
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        text += choice.delta.content or ""
        for call in choice.delta.tool_calls or ():
            slot = calls.setdefault(call.index, {"id": None, "name": "", "arguments": ""})
            slot["id"] = call.id or slot["id"]
            if call.function:
                slot["name"] += call.function.name or ""
                slot["arguments"] += call.function.arguments or ""
        finish = choice.finish_reason or finish
    return text, [(s["id"], s["name"], s["arguments"]) for _, s in sorted(calls.items())], finish


def whole(completion: Any) -> Message:
    choice = completion.choices[0]
    calls = [(c.id, c.function.name, c.function.arguments) for c in choice.message.tool_calls or ()]
    return choice.message.content or "", calls, choice.finish_reason


def snippet(completions: Any, prompt: str, *, stream: bool) -> Message:
    """Plain openai-SDK code: one call with tools, whole or streamed."""
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        return whole(completions.create(model=MODEL, messages=messages, tools=TOOLS))
    with completions.create(model=MODEL, messages=messages, tools=TOOLS, stream=True) as chunks:
        return accumulate(list(chunks))


async def async_snippet(completions: Any, prompt: str, *, stream: bool) -> Message:
    """The same, written for ``openai.AsyncOpenAI().chat.completions``."""
    messages = [{"role": "user", "content": prompt}]
    if not stream:
        return whole(await completions.create(model=MODEL, messages=messages, tools=TOOLS))
    chunks = await completions.create(model=MODEL, messages=messages, tools=TOOLS, stream=True)
    async with chunks:
        return accumulate([chunk async for chunk in chunks])


def run(h: Any, completions: Any, prompt: str, *, stream: bool) -> Message:
    if h.mode == "sync":
        return snippet(completions, prompt, stream=stream)
    return h.loop.run_until_complete(async_snippet(completions, prompt, stream=stream))


def clean_run(h: Any, server: FaultServer, prompt: str, *, stream: bool) -> Message:
    """The snippet against a plain client of the harness's mode, no fault."""
    if h.mode == "sync":
        with openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0) as client:
            return snippet(client.chat.completions, prompt, stream=stream)

    async def go() -> Message:
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0) as c:
            return await async_snippet(c.chat.completions, prompt, stream=stream)

    return h.loop.run_until_complete(go())


MID_ARGUMENTS = 11  # 8 words, the call's header, 2 fragments of its arguments
EVERY_FAULT = [
    pytest.param(Fault.drop(after_chunks=MID_ARGUMENTS), False, id="drop-mid-arguments"),
    pytest.param(Fault.drop(after_chunks=3), False, id="drop-mid-text"),
    pytest.param(Fault.status(429), False, id="status-429"),
    pytest.param(Fault.status(500), False, id="status-500"),
    pytest.param(Fault.early_end(after_chunks=MID_ARGUMENTS), False, id="truncated"),
    pytest.param(Fault.malformed(after_chunks=MID_ARGUMENTS), False, id="malformed-chunk"),
    pytest.param(Fault.sse_error(after_chunks=MID_ARGUMENTS), False, id="sse-error-event"),
    # waits: real time against short route timeouts (0.3 s)
    pytest.param(
        Fault.stall(after_chunks=MID_ARGUMENTS, seconds=3.0),
        True,
        id="stall-mid-arguments",
        marks=pytest.mark.slow,
    ),
]


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "whole"])
@pytest.mark.parametrize(("fault", "waits"), EVERY_FAULT)
def test_the_unchanged_snippet_with_tools_matches_a_clean_run_through_every_fault(
    harness_factory, server, fault, waits, stream
):
    """With the defaults (``on_divergence="raise"``): a fault mid-call is invisible."""
    short = {"openai__idle_timeout": 0.3, "openai__first_token_timeout": 0.3} if waits else {}
    h = harness_factory(real_time=waits, **short)
    clean = clean_run(h, server, "weather?", stream=stream)
    assert clean == (LEAD, [(WEATHER.id, WEATHER.name, WEATHER.arguments)], "tool_calls")
    server.reset_counts()
    server.push(fault, stream=True)  # the chain streams first, whole or not
    assert run(h, h.chain.chat.completions, "weather?", stream=stream) == clean
    assert server.fault_counts[fault.kind] == 1
    assert server.counts["total"] >= 2  # the fault was met, and answered again


def dropin(h: Any, prompt: str, **kwargs: Any) -> tuple[list[Any], Any, BaseException | None]:
    """A drop-in stream read as an SDK consumer does: its chunks, the stream, what it raised."""
    completions = h.chain.chat.completions
    chunks: list[Any] = []
    holder: list[Any] = []
    try:
        if h.mode == "sync":
            with completions.create(messages=user(prompt), stream=True, **kwargs) as stream:
                holder.append(stream)
                for chunk in stream:
                    chunks.append(chunk)
        else:

            async def go() -> None:
                stream = await completions.create(messages=user(prompt), stream=True, **kwargs)
                holder.append(stream)
                async with stream:
                    async for chunk in stream:
                        chunks.append(chunk)

            h.loop.run_until_complete(go())
    except StreamDivergedError as exc:
        return chunks, holder[0], exc
    return chunks, holder[0], None


def test_the_ids_already_yielded_stand_and_the_replacements_are_mapped_onto_them(
    harness, server
):
    server.push(Fault.drop(after_chunks=3), stream=True)  # the header, 2 argument fragments
    chunks, stream, error = dropin(harness, "other ids")
    assert error is None
    _, calls, finish = accumulate(chunks)
    ((call_id, name, arguments),) = calls
    final = trace_of(stream).completion.choices[0].message.tool_calls[0]
    assert (name, arguments, finish) == (WEATHER.name, WEATHER.arguments, "tool_calls")
    assert call_id != final.id  # the first attempt's id, shown first, stays
    assert call_id.startswith("call_try") and final.id.startswith("call_try")
    # sent once: the header's id, never a second one for the same call
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.tool_calls
               and c.choices[0].delta.tool_calls[0].id) == 1


@pytest.mark.parametrize("prompt", ["other arguments", "other tool"])
def test_a_replacement_that_differs_still_raises_or_buffers_never_glued(
    harness, server, prompt
):
    server.push(Fault.drop(after_chunks=3), stream=True)
    chunks, _, error = dropin(harness, prompt)
    assert isinstance(error, StreamDivergedError)
    _, shown, finish = accumulate(chunks)
    ((_, name, arguments),) = shown
    ((_, final_name, final_arguments),) = whole(error.response.completion)[1]
    assert not (name == final_name and final_arguments.startswith(arguments))
    assert finish is None  # the abandoned answer never finished
    assert error.shown_chars == len(arguments)
    server.push(Fault.drop(after_chunks=3), stream=True)
    chunks, stream, error = dropin(harness, prompt, on_divergence="buffer")
    assert error is None
    assert accumulate(chunks) == whole(trace_of(stream).completion)


# -- the chunker's rule, event by event (no I/O) ---------------------------------------------------


def call(text: str, name: str = "f", index: int = 0, id: str = "call_a") -> ChainEvent:
    return ChainEvent("tool_call", text, "stream", index=index, id=id, name=name)


def delta(text: str) -> ChainEvent:
    return ChainEvent("delta", text, "stream")


RESET = ChainEvent("reset", "", "stream")


def feed(events: list[ChainEvent], divergence: Any = "raise") -> tuple[Chunker, list[Any]]:
    chunker = Chunker("m", usage=False, divergence=divergence)
    return chunker, [c for e in events for c in chunker.event(e)]


def ended(chunker: Chunker, text: str = "") -> list[Any]:
    from openai.types.chat import ChatCompletion

    completion = ChatCompletion.model_validate({
        "id": "x", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
    })
    return chunker.end(ChainResponse(text, "stream", completion, ()))


def test_a_replacement_is_held_while_it_repeats_then_only_what_it_adds_is_yielded():
    first = [delta("Hi "), call("", id="call_a"), call('{"ci')]
    again = [RESET, delta("Hi "), call("", id="call_b"), call('{"c'), call('ity": 1'), call("}")]
    _, chunks = feed(first + again)
    text, calls, _ = accumulate(chunks)
    assert (text, calls) == ("Hi ", [("call_a", "f", '{"city": 1}')])
    new = [c.choices[0].delta.tool_calls[0].function.arguments for c in chunks[-2:]]
    assert new == ['ty": 1', "}"]  # held while it repeated, then only the new part


def test_several_resets_and_more_text_than_was_shown_still_rebuild_the_replacement():
    events = [delta("Hi"), call('{"a'), RESET, delta("Hi"), RESET, delta("Hi"), call('{"a"'),
              call(": 2}"), delta(" there")]
    _, chunks = feed(events)
    assert accumulate(chunks)[:2] == ("Hi there", [("call_a", "f", '{"a": 2}')])


@pytest.mark.parametrize(
    "replacement",
    [
        [delta("Ho")],  # other text
        [delta("Hi"), call('{"b', name="f")],  # other arguments
        [delta("Hi"), call('{"a', name="g")],  # another tool
        [delta("Hi"), call('{"a', index=1)],  # the call at another position
    ],
)
def test_a_replacement_that_says_otherwise_diverges_and_yields_nothing_more(replacement):
    chunker, chunks = feed([delta("Hi"), call('{"a'), RESET, *replacement, call("more")])
    assert accumulate(chunks)[:2] == ("Hi", [("call_a", "f", '{"a')])
    with pytest.raises(StreamDivergedError) as info:
        ended(chunker)
    assert info.value.shown_chars == len('Hi{"a')


def test_a_replacement_that_ends_before_repeating_everything_diverges():
    chunker, chunks = feed([delta("Hi there"), RESET, delta("Hi")])
    assert accumulate(chunks)[0] == "Hi there"
    with pytest.raises(StreamDivergedError):
        ended(chunker, "Hi")


def test_buffer_mode_and_a_reset_before_anything_was_yielded_are_unchanged():
    chunker, chunks = feed([RESET, delta("Hi")])
    assert accumulate(chunks + ended(chunker, "Hi")) == ("Hi", [], "stop")
    chunker, chunks = feed([delta("Hi"), RESET, delta("Ho")], divergence="buffer")
    assert chunks == []
    assert accumulate(ended(chunker, "Ho")) == ("Ho", [], "stop")
