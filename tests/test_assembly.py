"""Stream assembly and the no-duplication display contract (pure, no network)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from openai.types.chat import ChatCompletionChunk

from fallbackchain import MalformedChunkError, TruncatedStreamError
from fallbackchain.chain._assembly import AttemptAssembler, Display


def chunk(content=None, finish=None, *, role=None, index=0, tool_calls=None):
    delta = {}
    if content is not None:
        delta["content"] = content
    if role:
        delta["role"] = role
    if tool_calls:
        delta["tool_calls"] = tool_calls
    sent = {
        "id": "c1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}],
    }
    ChatCompletionChunk.model_validate(sent)  # a chunk the SDK would accept
    return sent  # as the chain reads it: the JSON object sent


def test_assembles_content_and_finish_reason():
    a = AttemptAssembler()
    for c in [chunk("", role="assistant"), chunk("Hel"), chunk("lo"), chunk(finish="stop")]:
        a.add(c)
    done = a.finish(model="m")
    assert done.choices[0].message.content == "Hello"
    assert done.choices[0].finish_reason == "stop"


def test_add_returns_only_new_content_of_choice_zero():
    a = AttemptAssembler()
    assert a.add(chunk("", role="assistant")) is None
    assert a.add(chunk("Hi")) == "Hi"


def test_a_stream_without_finish_reason_is_truncated_not_complete():
    a = AttemptAssembler()
    a.add(chunk("partial answer"))
    with pytest.raises(TruncatedStreamError):
        a.finish(model="m")


def test_an_empty_stream_is_truncated():
    with pytest.raises(TruncatedStreamError):
        AttemptAssembler().finish(model="m")


def test_tool_call_fragments_are_joined():
    a = AttemptAssembler()
    a.add(
        chunk(
            tool_calls=[
                {
                    "index": 0,
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"ci'},
                }
            ]
        )
    )
    a.add(chunk(tool_calls=[{"index": 0, "function": {"arguments": 'ty": "Oslo"}'}}]))
    a.add(chunk(finish="tool_calls"))
    call = a.finish(model="m").choices[0].message.tool_calls[0]
    assert (call.id, call.function.name, call.function.arguments) == (
        "call_1",
        "get_weather",
        '{"city": "Oslo"}',
    )


def test_something_that_is_not_a_chunk_is_malformed():
    with pytest.raises(MalformedChunkError):
        AttemptAssembler().add({"choices": "nope"})


@pytest.mark.parametrize(
    "sent",
    [
        [],  # JSON, but not an object
        "text",
        {"id": "c1"},  # no choices
        {"choices": [{"delta": {"content": "x"}}]},  # a choice without its index
        {"choices": [{"index": 0}]},  # nor a delta
        {"choices": [{"index": 0, "delta": {"content": 5}}]},  # text that is not a string
        {"choices": [{"index": 0, "delta": {"refusal": ["no"]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": 5}}]}}]},
        {"choices": [{"index": 0, "delta": {"tool_calls": ["call"]}}]},
    ],
)
def test_a_chunk_as_sent_that_is_not_a_chat_chunk_is_malformed(sent):
    with pytest.raises(MalformedChunkError):
        AttemptAssembler().add(sent)


def test_optional_keys_may_be_absent_or_null_alike():
    absent, null = AttemptAssembler(), AttemptAssembler()
    absent.add({"choices": [{"index": 0, "delta": {"role": "assistant"}}]})
    null.add(chunk("", role="assistant"))
    assert absent.add({"choices": [{"index": 0, "delta": {"content": "Hi"}}]}) == "Hi"
    nulls = {"content": "Hi", "role": None, "refusal": None, "tool_calls": None}
    assert null.add({"choices": [{"index": 0, "delta": nulls, "finish_reason": None}]}) == "Hi"
    for a in (absent, null):
        a.add({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    assert absent.finish(model="m").choices[0].message.content == "Hi"
    assert null.finish(model="m").choices[0].message.content == "Hi"


def test_chunks_that_do_not_make_a_completion_are_malformed_at_the_end():
    a = AttemptAssembler()
    a.add(chunk("Hi"))
    a.add({"choices": [], "usage": {"prompt_tokens": "many"}})  # usage comes last, unread
    a.add(chunk(finish="stop"))
    with pytest.raises(MalformedChunkError):
        a.finish(model="m")


def joined_after_last_reset(events):
    text = []
    for e in events:
        if e.type == "reset":
            text = []
        else:
            text.append(e.text)
    return "".join(text)


def test_first_attempt_streams_straight_through():
    d = Display()
    events = d.delta("Hel", "stream") + d.delta("lo", "stream")
    assert [e.text for e in events] == ["Hel", "lo"]


def test_retry_repeating_shown_text_emits_only_what_is_new():
    d = Display()
    shown = d.delta("Hello wo", "stream")
    d.new_attempt()
    again = d.delta("Hello", "stream") + d.delta(" wor", "stream") + d.delta("ld!", "stream")
    again += d.answered("Hello world!", "stream")
    assert [e.text for e in again] == ["r", "ld!"]
    assert joined_after_last_reset(shown + again) == "Hello world!"


def test_retry_that_diverges_emits_reset_then_the_replacement():
    d = Display()
    d.delta("Hello wo", "stream")
    d.new_attempt()
    events = d.delta("Hi", "stream") + d.delta(" there", "completion")
    assert events[0].type == "reset"
    assert joined_after_last_reset(events) == "Hi there"


def test_a_shorter_replacement_resets_at_settle():
    d = Display()
    d.delta("Hello world", "stream")
    d.new_attempt()
    events = d.delta("Hello", "completion") + d.answered("Hello", "completion")
    assert [e.type for e in events] == ["reset", "delta"]
    assert joined_after_last_reset(events) == "Hello"


def test_identical_replacement_emits_nothing():
    d = Display()
    d.delta("Same", "stream")
    d.new_attempt()
    assert d.whole("Same", "cache") == ()


@given(
    first=st.text(max_size=30),
    second=st.text(max_size=30),
    cut1=st.integers(0, 30),
    splits=st.lists(st.integers(1, 5), max_size=12),
)
def test_deltas_after_the_last_reset_always_equal_the_final_text(first, second, cut1, splits):
    d = Display()
    events = []
    events += d.delta(first[:cut1], "stream")  # attempt 1 dies after cut1 characters
    d.new_attempt()
    pos = 0
    for size in splits:  # attempt 2 streams in arbitrary pieces
        events += d.delta(second[pos : pos + size], "stream")
        pos += size
    events += d.delta(second[pos:], "stream")
    events += d.answered(second, "stream")
    assert joined_after_last_reset(events) == second
    # and no text ever shown twice: without a reset, the total shown is exactly the answer
    if not any(e.type == "reset" for e in events):
        assert "".join(e.text for e in events) == second


def test_tool_call_pieces_sent_without_an_index_are_placed_by_id_then_by_order():
    """Gemini leaves ``index`` out (the SDK's models require it, so these are dicts only).

    A new id starts a call, a piece without one continues the latest, a known id its own.
    """

    def calling(*calls):
        return {"choices": [{"index": 0, "delta": {"tool_calls": list(calls)}}]}

    a = AttemptAssembler()
    a.add(calling({"id": "a", "type": "function", "function": {"name": "f", "arguments": '{"x"'}}))
    a.add(calling({"function": {"arguments": ": 1}"}}))
    a.add(calling({"id": "b", "function": {"name": "g", "arguments": "{}"}}))
    a.add(calling({"id": "a", "function": {"arguments": ""}}))
    a.add(chunk(finish="tool_calls"))
    calls = a.finish(model="m").choices[0].message.tool_calls
    assert [(c.id, c.function.name, c.function.arguments) for c in calls] == [
        ("a", "f", '{"x": 1}'),
        ("b", "g", "{}"),
    ]
