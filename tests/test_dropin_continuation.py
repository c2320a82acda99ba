"""The continuation rule after a reset, one rule for both drop-ins (no I/O).

The same chain events go through chat's ``Chunker`` and the Responses API's
``ResponsesEventer``: what each hands out says the same message (text, refusal, tool-call
names and arguments), and both diverge on the same events, having shown as much.
"""

from __future__ import annotations

from typing import Any

import pytest

from fallbackchain import ChainEvent, ChainResponse, StreamDivergedError
from fallbackchain.chain._dropin_chunks import Chunker
from fallbackchain.chain._responses_events import ResponsesEventer

Said = tuple[str, str, list[tuple[str, str]]]
"""What a consumer has been shown: text, refusal, each tool call's ``(name, arguments)``."""


def delta(text: str) -> ChainEvent:
    return ChainEvent("delta", text, "stream")


def refusal(text: str) -> ChainEvent:
    return ChainEvent("refusal", text, "stream")


def call(text: str, name: str = "f", index: int = 0, id: str = "call_a") -> ChainEvent:
    return ChainEvent("tool_call", text, "stream", index=index, id=id, name=name)


RESET = ChainEvent("reset", "", "stream")


def chat_said(chunks: list[Any]) -> Said:
    text = refused = ""
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        if not chunk.choices:
            continue
        d = chunk.choices[0].delta
        text += d.content or ""
        refused += d.refusal or ""
        for c in d.tool_calls or ():
            slot = calls.setdefault(c.index, ["", ""])
            slot[0] += c.function.name or ""
            slot[1] += c.function.arguments or ""
    return text, refused, [(n, a) for _, (n, a) in sorted(calls.items())]


def responses_said(events: list[Any]) -> Said:
    text = refused = ""
    calls: dict[int, list[str]] = {}
    for event in events:
        if event.type == "response.output_text.delta":
            text += event.delta
        elif event.type == "response.refusal.delta":
            refused += event.delta
        elif event.type == "response.output_item.added" and event.item.type == "function_call":
            calls[event.output_index] = [event.item.name, ""]
        elif event.type == "response.function_call_arguments.delta":
            calls[event.output_index][1] += event.delta
    return text, refused, [(n, a) for _, (n, a) in sorted(calls.items())]


def through_both(events: list[ChainEvent]) -> tuple[Chunker, ResponsesEventer, Said, Said]:
    chunker = Chunker("m", usage=False, divergence="raise")
    eventer = ResponsesEventer("m", divergence="raise")
    chunks = [c for e in events for c in chunker.event(e)]
    typed = [t for e in events for t in eventer.event(e)]
    return chunker, eventer, chat_said(chunks), responses_said(typed)


CONTINUED = {
    "a longer replacement": (
        [delta("Hi "), call('{"ci'), RESET, delta("Hi "), call('{"c', id="call_b"),
         call('ity": 1}')],
        ("Hi ", "", [("f", '{"city": 1}')]),
    ),
    "several resets": (
        [delta("Hi"), call('{"a'), RESET, delta("Hi"), RESET, delta("Hi"), call('{"a"'),
         call(": 2}"), delta(" there")],
        ("Hi there", "", [("f", '{"a": 2}')]),
    ),
    "a refusal": (
        [refusal("I can"), RESET, refusal("I cannot.")],
        ("", "I cannot.", []),
    ),
}

DIVERGED = {
    "other text": [delta("Hi"), call('{"a'), RESET, delta("Ho")],
    "other arguments": [delta("Hi"), call('{"a'), RESET, delta("Hi"), call('{"b')],
    "another tool": [delta("Hi"), call('{"a'), RESET, delta("Hi"), call('{"a', name="g")],
    "a shorter replacement": [delta("Hi there"), RESET, delta("Hi")],
}


@pytest.mark.parametrize("name", CONTINUED)
def test_a_replacement_that_repeats_what_was_shown_continues_it_on_both(name: str) -> None:
    events, said = CONTINUED[name]
    _, _, chat, responses = through_both(events)
    assert chat == responses == said


@pytest.mark.parametrize("name", DIVERGED)
def test_a_replacement_that_says_otherwise_diverges_on_both_having_shown_as_much(
    name: str,
) -> None:
    chunker, eventer, chat, responses = through_both(DIVERGED[name])
    assert chat == responses
    replacement: Any = ChainResponse("", "stream", None, ())  # type: ignore[arg-type]
    shown = []
    for translator in (chunker, eventer):
        with pytest.raises(StreamDivergedError) as info:
            translator.end(replacement)
        shown.append(info.value.shown_chars)
    assert shown[0] == shown[1] == len(chat[0] + chat[1]) + sum(len(a) for _, a in chat[2])
