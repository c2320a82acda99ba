"""The Responses endpoint's pure parts: checking, showing, caching, resuming (no network)."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from fallbackchain import (
    MalformedChunkError,
    StreamEventError,
    TruncatedStreamError,
    UpstreamConnectionError,
)
from fallbackchain.cache import ResponseCache
from fallbackchain.chain import (
    ENVELOPE_FIELD,
    MAX_RESUMES,
    RESPONSES,
    Display,
    ResponseAssembler,
    ResponseIncompleteError,
    Resumed,
    ResumingStream,
    resumable,
    resumptions_of,
)

from .test_responses_assembly import _call_events, call_item, message_item, response, text_stream


def answer(**extra: Any) -> Any:
    output = [message_item("Hello world"), call_item('{"city":"Paris"}')]
    usage = {
        "input_tokens": 7,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": 5,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": 12,
    }
    return response("completed", output, usage=usage, **extra)


# -- checking -------------------------------------------------------------------------------


def test_a_completed_response_is_accepted() -> None:
    done = answer()
    assert RESPONSES.check(done) is done


def test_an_incomplete_response_is_refused_with_its_reason() -> None:
    cut = response("incomplete", incomplete_details={"reason": "steered"})
    with pytest.raises(ResponseIncompleteError) as info:
        RESPONSES.check(cut)
    assert info.value.reason == "steered"
    assert info.value.response is cut
    assert info.value.retryable


@pytest.mark.parametrize("reason", ["max_output_tokens", "max_messages", "content_filter"])
def test_a_response_cut_where_the_request_asked_is_its_answer(reason: str) -> None:
    cut = response("incomplete", incomplete_details={"reason": reason})
    assert RESPONSES.check(cut) is cut
    stored = RESPONSES.encode(cut).choices[0].finish_reason
    assert stored == ("content_filter" if reason == "content_filter" else "length")


def test_a_failed_response_is_refused_with_its_code_only() -> None:
    failed = response("failed", error={"code": "server_error", "message": "secret prompt"})
    with pytest.raises(StreamEventError, match="server_error") as info:
        RESPONSES.check(failed)
    assert "secret" not in str(info.value)


@pytest.mark.parametrize("status", ["queued", "in_progress", "cancelled"])
def test_an_unfinished_response_is_truncated(status: str) -> None:
    with pytest.raises(TruncatedStreamError, match=status):
        RESPONSES.check(response(status))


def test_something_else_is_malformed() -> None:
    with pytest.raises(MalformedChunkError):
        RESPONSES.check({"id": "resp_1"})


# -- showing --------------------------------------------------------------------------------


def test_text_tokens_and_fragments() -> None:
    done = answer()
    assert RESPONSES.text(done) == "Hello world"
    assert RESPONSES.tokens(done) == (7, 5)
    kinds = [(f.kind, f.text, f.id, f.name) for f in RESPONSES.fragments(done)]
    assert kinds == [
        ("content", "Hello world", None, None),
        ("tool_call", '{"city":"Paris"}', "call_1", "get_weather"),
    ]


def test_what_a_stream_shows_is_what_the_whole_answer_shows() -> None:
    """The chain compares the two when an attempt ends: equal means no reset."""
    for events in (text_stream(["Hel", "lo ", "world"]), _call_events()):
        assembler = ResponseAssembler()
        display = Display()
        shown: list[Any] = []
        for event in events:
            piece = assembler.add(event)
            if piece:
                shown += display.delta(piece, "stream")
        final = assembler.finish(model="m")
        assert display.answered(RESPONSES.fragments(final), "stream") == ()
        assert all(e.type != "reset" for e in shown)


def test_an_unbilled_copy_counts_zero_and_keeps_the_original() -> None:
    done = answer()
    copy, stored = RESPONSES.unbilled(done)
    assert copy.usage is not None
    assert (copy.usage.input_tokens, copy.usage.output_tokens, copy.usage.total_tokens) == (0, 0, 0)
    assert stored is done.usage
    assert done.usage is not None
    assert done.usage.total_tokens == 12


# -- sending --------------------------------------------------------------------------------


def test_a_whole_attempt_is_sent_in_the_foreground_without_stream_options() -> None:
    request = {
        "model": "m",
        "input": "hi",
        "background": True,
        "store": True,
        "stream_options": {"include_obfuscation": False},
    }
    whole = RESPONSES.kwargs(request, model="fallback-model", streaming=False, stream_usage=True)
    assert whole == {"model": "fallback-model", "input": "hi", "store": True, "stream": False}
    streamed = RESPONSES.kwargs(request, model="m", streaming=True, stream_usage=True)
    assert streamed["background"] is True
    assert streamed["stream"] is True
    assert streamed["stream_options"] == {"include_obfuscation": False}
    assert request["background"] is True  # the caller's request is never changed


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"background": True}, True),
        ({"background": True, "store": True}, True),
        ({"background": True, "store": False}, False),
        ({"background": False}, False),
        ({}, False),
    ],
)
def test_only_a_stored_background_response_is_resumable(
    kwargs: dict[str, Any], expected: bool
) -> None:
    assert resumable(kwargs) is expected


def test_a_request_needs_an_input_and_no_stream_flag() -> None:
    with pytest.raises(ValueError, match="input"):
        RESPONSES.validate({"model": "m"})
    with pytest.raises(TypeError, match="stream"):
        RESPONSES.validate({"model": "m", "input": "x", "stream": True})
    RESPONSES.validate({"model": "m", "previous_response_id": "resp_1"})
    RESPONSES.validate({"model": "m", "prompt": {"id": "pmpt_1"}})


# -- caching --------------------------------------------------------------------------------


def test_a_response_goes_through_the_cache_whole(tmp_path: Any, config_factory: Any) -> None:
    config = config_factory()
    cache = ResponseCache(config.cache, clock=lambda: 1_000_000.0)
    try:
        done = answer()
        envelope = RESPONSES.encode(done)
        assert isinstance(envelope, ChatCompletion)
        assert envelope.choices[0].message.content == "Hello world"  # readable in an export
        key = RESPONSES.cache_key({"model": "m", "input": "hi"})
        assert key is not None
        assert cache.put(key, envelope)
        cached = cache.get(key)
        assert cached is not None
        assert RESPONSES.decode(cached.completion) == done
    finally:
        cache.close()


def test_a_chat_completion_in_the_cache_is_not_a_response() -> None:
    plain = ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "x"},
                    "finish_reason": "stop",
                }
            ],
        }
    )
    with pytest.raises(TypeError):
        RESPONSES.decode(plain)
    broken = plain.model_copy(update={})
    broken.__pydantic_extra__ = {ENVELOPE_FIELD: {"id": "not a response"}}
    with pytest.raises(ValueError):  # pydantic's ValidationError
        RESPONSES.decode(broken)


def test_a_conversation_request_has_no_key() -> None:
    assert RESPONSES.cache_key({"model": "m", "input": "x", "conversation": "conv_1"}) is None


# -- resuming (the wrapper's logic over scripted SDK streams; the fault server tests the rest)


class Scripted:
    """An SDK stream stand-in: yields events, then raises or ends; records close()."""

    def __init__(self, events: list[Any], error: BaseException | None = None) -> None:
        self.events = events
        self.error = error
        self.closed = False

    def __iter__(self) -> Any:
        yield from self.events
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.closed = True


def _drop() -> openai.APIConnectionError:
    import httpx2

    return openai.APIConnectionError(
        request=httpx2.Request("POST", "http://127.0.0.1/v1/responses")
    )


def test_a_dropped_background_stream_resumes_after_the_last_event() -> None:
    events = text_stream(["one ", "two ", "three"], background=True)
    first = Scripted(events[:6], _drop())
    calls: list[tuple[str, int]] = []

    def reopen(response_id: str, after: int) -> Scripted:
        calls.append((response_id, after))
        return Scripted(events[after - 1 :])  # replays one event already seen

    stream = ResumingStream(first, reopen)
    seen = list(stream)
    assert calls == [("resp_abc123", 5)]
    assert first.closed
    markers = [e for e in seen if isinstance(e, Resumed)]
    assert len(markers) == 1
    assert markers[0].after == 5
    got = [e for e in seen if not isinstance(e, Resumed)]
    assert [e.sequence_number for e in got] == list(range(len(events)))  # each once
    assembler = ResponseAssembler()
    for item in seen:
        assembler.add(item)
    final = assembler.finish()
    assert final.output_text == "one two three"
    assert [r.after for r in resumptions_of(final)] == [5]


def test_a_stream_that_cannot_be_resumed_raises_the_drop() -> None:
    events = text_stream(["one ", "two"], background=True)
    drop = _drop()

    def reopen(response_id: str, after: int) -> Scripted:
        raise openai.NotFoundError("gone", response=_response(404), body=None)

    with pytest.raises(UpstreamConnectionError, match=r"could not resume \(HTTP 404\)") as info:
        list(ResumingStream(Scripted(events[:6], drop), reopen))
    assert info.value.__cause__ is drop
    assert "gone" not in str(info.value)  # never the server's message


def test_a_drop_before_the_response_is_named_is_not_resumed() -> None:
    drop = _drop()
    with pytest.raises(openai.APIConnectionError):
        list(ResumingStream(Scripted([], drop), lambda *_: pytest.fail("resumed")))


def test_a_malformed_event_is_not_resumed() -> None:
    events = text_stream(["one"], background=True)
    bad = ValueError("not JSON")
    with pytest.raises(ValueError, match="not JSON"):
        list(ResumingStream(Scripted(events[:5], bad), lambda *_: pytest.fail("resumed")))


def test_resumptions_that_bring_nothing_new_stop() -> None:
    events = text_stream(["one ", "two"], background=True)
    reopened: list[int] = []

    def reopen(response_id: str, after: int) -> Scripted:
        reopened.append(after)
        return Scripted([], _drop())

    with pytest.raises(openai.APIConnectionError):
        list(ResumingStream(Scripted(events[:6], _drop()), reopen))
    assert reopened == [5] * MAX_RESUMES


def test_a_clean_early_end_is_resumed_too() -> None:
    events = text_stream(["a", "b"], background=True)
    stream = ResumingStream(Scripted(events[:5]), lambda _id, after: Scripted(events[after + 1 :]))
    seen = [e for e in stream if not isinstance(e, Resumed)]
    assert [e.sequence_number for e in seen] == list(range(len(events)))


def test_closing_stops_resumption() -> None:
    events = text_stream(["a", "b"], background=True)
    first = Scripted(events[:5], _drop())
    stream = ResumingStream(first, lambda *_: pytest.fail("resumed after close"))
    iterator = iter(stream)
    next(iterator)
    stream.close()
    assert first.closed
    with pytest.raises(openai.APIConnectionError):
        list(iterator)


def _response(status: int) -> Any:
    import httpx2

    return httpx2.Response(status, request=httpx2.Request("GET", "http://127.0.0.1/v1/responses/x"))


def test_a_read_timeout_is_not_resumed() -> None:
    import httpx2

    events = text_stream(["one ", "two"], background=True)
    timeout = openai.APITimeoutError(
        request=httpx2.Request("POST", "http://127.0.0.1/v1/responses")
    )
    with pytest.raises(openai.APITimeoutError):
        list(ResumingStream(Scripted(events[:6], timeout), lambda *_: pytest.fail("resumed")))


def test_an_early_end_that_cannot_be_resumed_is_truncated_and_says_so() -> None:
    events = text_stream(["a", "b"], background=True)

    def reopen(response_id: str, after: int) -> Scripted:
        raise _drop()

    with pytest.raises(TruncatedStreamError, match="could not resume"):
        list(ResumingStream(Scripted(events[:5]), reopen))


def test_a_cached_response_survives_export_and_import(tmp_path: Any, config_factory: Any) -> None:
    import dataclasses

    config = config_factory()
    source = ResponseCache(config.cache, clock=lambda: 1_000_000.0)
    other = dataclasses.replace(config.cache, directory=str(tmp_path / "other"))
    target = ResponseCache(other, clock=lambda: 1_000_000.0)
    try:
        done = answer()
        key = RESPONSES.cache_key({"model": "m", "input": "hi"})
        assert key is not None
        assert source.put(key, RESPONSES.encode(done))
        assert source.export_jsonl(tmp_path / "rows.jsonl") == 1
        assert target.import_jsonl(tmp_path / "rows.jsonl").ok
        moved = target.get(key)
        assert moved is not None
        assert RESPONSES.decode(moved.completion) == done
    finally:
        source.close()
        target.close()
