"""The Responses stream assembler, fed the SDK's own typed event classes (no I/O)."""

from __future__ import annotations

from typing import Any

import pytest
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseReasoningSummaryPartAddedEvent,
    ResponseReasoningSummaryTextDeltaEvent,
    ResponseRefusalDeltaEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from fallbackchain import MalformedChunkError, StreamEventError, TruncatedStreamError
from fallbackchain.chain import Fragment, ResponseAssembler, ResponseIncompleteError

RESP_ID = "resp_abc123"
SECRET = "my secret prompt text"


def response(
    status: str = "in_progress", output: list[Any] | None = None, **extra: Any
) -> Response:
    data: dict[str, Any] = {
        "id": RESP_ID,
        "object": "response",
        "created_at": 1700000000,
        "model": "gpt-test",
        "output": output or [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "status": status,
    }
    data.update(extra)
    return Response.model_validate(data)


def message_item(text: str, status: str = "completed", item_id: str = "msg_1") -> dict[str, Any]:
    return {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": [{"type": "output_text", "text": text, "annotations": []}] if text else [],
    }


def call_item(arguments: str, status: str = "completed") -> dict[str, Any]:
    return {
        "id": "fc_1",
        "type": "function_call",
        "call_id": "call_1",
        "name": "get_weather",
        "arguments": arguments,
        "status": status,
    }


class Seq:
    """Sequence numbers as a server hands them out."""

    def __init__(self) -> None:
        self.n = -1

    def __call__(self) -> int:
        self.n += 1
        return self.n


def text_stream(
    deltas: list[str], *, completed_output: bool = True, background: bool = False
) -> list[Any]:
    """A whole text answer as the API streams it, from response.created to response.completed."""
    seq = Seq()
    text = "".join(deltas)
    events: list[Any] = [
        ResponseCreatedEvent(
            type="response.created", sequence_number=seq(), response=response(background=background)
        ),
        ResponseInProgressEvent(
            type="response.in_progress",
            sequence_number=seq(),
            response=response(background=background),
        ),
        ResponseOutputItemAddedEvent.model_validate(
            {
                "type": "response.output_item.added",
                "sequence_number": seq(),
                "output_index": 0,
                "item": message_item("", status="in_progress"),
            }
        ),
        ResponseContentPartAddedEvent.model_validate(
            {
                "type": "response.content_part.added",
                "sequence_number": seq(),
                "output_index": 0,
                "content_index": 0,
                "item_id": "msg_1",
                "part": {"type": "output_text", "text": "", "annotations": []},
            }
        ),
    ]
    events += [
        ResponseTextDeltaEvent(
            type="response.output_text.delta",
            sequence_number=seq(),
            output_index=0,
            content_index=0,
            item_id="msg_1",
            delta=delta,
            logprobs=[],
        )
        for delta in deltas
    ]
    events += [
        ResponseTextDoneEvent(
            type="response.output_text.done",
            sequence_number=seq(),
            output_index=0,
            content_index=0,
            item_id="msg_1",
            text=text,
            logprobs=[],
        ),
        ResponseOutputItemDoneEvent.model_validate(
            {
                "type": "response.output_item.done",
                "sequence_number": seq(),
                "output_index": 0,
                "item": message_item(text),
            }
        ),
        ResponseCompletedEvent(
            type="response.completed",
            sequence_number=seq(),
            response=response(
                "completed",
                [message_item(text)] if completed_output else [],
                background=background,
            ),
        ),
    ]
    return events


def feed(assembler: ResponseAssembler, events: list[Any]) -> list[Any]:
    return [assembler.add(event) for event in events]


def test_a_text_stream_shows_its_deltas_and_finishes_with_the_completed_response() -> None:
    assembler = ResponseAssembler()
    pieces = feed(assembler, text_stream(["Hel", "lo ", "world"]))
    assert [p for p in pieces if p] == ["Hel", "lo ", "world"]
    final = assembler.finish()
    assert isinstance(final, Response)
    assert final.output_text == "Hello world"
    assert final.status == "completed"
    assert assembler.response_id == RESP_ID
    assert assembler.last_sequence == len(text_stream(["Hel", "lo ", "world"])) - 1
    assert assembler.content_seen
    assert assembler.finished


def test_a_completed_event_without_output_is_rebuilt_from_the_finished_items() -> None:
    assembler = ResponseAssembler()
    feed(assembler, text_stream(["a", "b", "c"], completed_output=False))
    final = assembler.finish()
    assert final.output_text == "abc"
    assert final.output[0].type == "message"


def test_output_is_rebuilt_from_deltas_when_an_item_never_finished() -> None:
    # The completed response leaves output out and the item's done event was lost: the
    # assembled deltas stand in for it.
    events = [
        e
        for e in text_stream(["x", "y"], completed_output=False)
        if e.type != "response.output_item.done"
    ]
    assembler = ResponseAssembler()
    feed(assembler, events)
    assert assembler.finish().output_text == "xy"


def test_content_before_any_delta_is_not_seen() -> None:
    assembler = ResponseAssembler()
    feed(assembler, text_stream(["a"])[:4])  # created, in_progress, item added, part added
    assert not assembler.content_seen
    assembler.add(text_stream(["a"])[4])
    assert assembler.content_seen


def test_a_stream_that_ends_without_completed_is_truncated() -> None:
    assembler = ResponseAssembler()
    feed(assembler, text_stream(["Hel", "lo"])[:-1])
    with pytest.raises(
        TruncatedStreamError, match=r"without response\.completed .* 5 character"
    ) as info:
        assembler.finish()
    assert not isinstance(info.value, ResponseIncompleteError)
    assert not assembler.finished


def test_an_empty_stream_is_truncated() -> None:
    with pytest.raises(TruncatedStreamError, match="after 0 event"):
        ResponseAssembler().finish()


@pytest.mark.parametrize(
    ("reason", "retryable"),
    [("steered", True), (None, True)],
)
def test_response_incomplete_is_an_error_naming_its_reason(
    reason: str | None, retryable: bool
) -> None:
    events = text_stream(["part"])[:-1]
    seq = events[-1].sequence_number + 1
    details = {"reason": reason} if reason else None
    events.append(
        ResponseIncompleteEvent(
            type="response.incomplete",
            sequence_number=seq,
            response=response("incomplete", incomplete_details=details),
        )
    )
    assembler = ResponseAssembler()
    feed(assembler, events[:-1])
    with pytest.raises(ResponseIncompleteError) as info:
        assembler.add(events[-1])
    error = info.value
    assert isinstance(error, TruncatedStreamError)
    assert error.reason == reason
    assert error.retryable is retryable
    assert (reason or "no reason given") in str(error)
    assert error.response is not None
    assert error.response.output_text == "part"  # rebuilt as far as it went
    with pytest.raises(TruncatedStreamError):
        assembler.finish()


@pytest.mark.parametrize("reason", ["max_output_tokens", "content_filter", "max_messages"])
def test_an_answer_cut_where_the_request_asked_is_the_answer(reason: str) -> None:
    """As chat's ``finish_reason`` ``length``/``content_filter``: returned, never an error."""
    events = text_stream(["part"])[:-1]
    seq = events[-1].sequence_number + 1
    events.append(
        ResponseIncompleteEvent(
            type="response.incomplete",
            sequence_number=seq,
            response=response("incomplete", incomplete_details={"reason": reason}),
        )
    )
    assembler = ResponseAssembler()
    feed(assembler, events)
    assert assembler.finished
    answer = assembler.finish()
    assert answer.status == "incomplete" and answer.incomplete_details is not None
    assert answer.incomplete_details.reason == reason
    assert answer.output_text == "part"


def test_response_failed_is_a_stream_event_error_with_the_code_never_the_message() -> None:
    assembler = ResponseAssembler()
    events = text_stream(["a"])[:5]
    feed(assembler, events)
    failed = ResponseFailedEvent(
        type="response.failed",
        sequence_number=5,
        response=response("failed", error={"code": "server_error", "message": SECRET}),
    )
    with pytest.raises(StreamEventError, match=r"response\.failed: server_error") as info:
        assembler.add(failed)
    assert SECRET not in str(info.value)
    assert info.value.retryable


def test_an_error_event_is_a_stream_event_error_with_the_code_never_the_message() -> None:
    assembler = ResponseAssembler()
    event = ResponseErrorEvent(
        type="error", sequence_number=0, code="rate_limit_exceeded", message=SECRET
    )
    with pytest.raises(StreamEventError, match="SSE error event: rate_limit_exceeded") as info:
        assembler.add(event)
    assert SECRET not in str(info.value)


def test_an_error_code_that_is_not_a_code_is_not_shown() -> None:
    event = ResponseErrorEvent(type="error", sequence_number=0, code=SECRET, message=SECRET)
    with pytest.raises(StreamEventError) as info:
        ResponseAssembler().add(event)
    assert SECRET not in str(info.value)
    assert str(info.value) == "SSE error event: ?"


def test_a_resumed_stream_skips_every_event_already_taken() -> None:
    events = text_stream(["one ", "two ", "three"], background=True)
    assembler = ResponseAssembler()
    shown: list[Any] = []
    for event in events[:6]:  # the first connection drops after "two "
        if not assembler.seen(event):
            shown.append(assembler.add(event))
    assert assembler.background
    resume_after = assembler.last_sequence
    assert resume_after == 5
    # A server that resumes from an earlier point (or replays): each event still once.
    for event in events[3:]:
        if not assembler.seen(event):
            shown.append(assembler.add(event))
    assert [p for p in shown if isinstance(p, str)] == ["one ", "two ", "three"]
    assert assembler.finish().output_text == "one two three"
    assert assembler.events == len(events)


def test_events_without_sequence_numbers_are_never_skipped() -> None:
    assembler = ResponseAssembler()
    assert not assembler.seen(object())
    feed(assembler, text_stream(["a"])[:2])
    event = text_stream(["a"])[1].model_copy()
    assert assembler.seen(event)
    object.__setattr__(event, "sequence_number", None)
    assert not assembler.seen(event)


def _call_events() -> list[Any]:
    seq = Seq()
    return [
        ResponseCreatedEvent(type="response.created", sequence_number=seq(), response=response()),
        ResponseOutputItemAddedEvent.model_validate(
            {
                "type": "response.output_item.added",
                "sequence_number": seq(),
                "output_index": 0,
                "item": call_item("", status="in_progress"),
            }
        ),
        ResponseFunctionCallArgumentsDeltaEvent(
            type="response.function_call_arguments.delta",
            sequence_number=seq(),
            output_index=0,
            item_id="fc_1",
            delta='{"city":',
        ),
        ResponseFunctionCallArgumentsDeltaEvent(
            type="response.function_call_arguments.delta",
            sequence_number=seq(),
            output_index=0,
            item_id="fc_1",
            delta='"Paris"}',
        ),
        ResponseOutputItemDoneEvent.model_validate(
            {
                "type": "response.output_item.done",
                "sequence_number": seq(),
                "output_index": 0,
                "item": call_item('{"city":"Paris"}'),
            }
        ),
        ResponseCompletedEvent(
            type="response.completed", sequence_number=seq(), response=response("completed", [])
        ),
    ]


def test_a_function_call_shows_its_start_and_its_arguments_deltas() -> None:
    assembler = ResponseAssembler()
    pieces = [p for p in feed(assembler, _call_events()) if p]
    assert pieces == [
        (Fragment("tool_call", "", 0, "call_1", "get_weather"),),
        (Fragment("tool_call", '{"city":', 0, "call_1", "get_weather"),),
        (Fragment("tool_call", '"Paris"}', 0, "call_1", "get_weather"),),
    ]
    final = assembler.finish()
    call = final.output[0]
    assert call.type == "function_call"
    assert call.arguments == '{"city":"Paris"}'
    assert call.call_id == "call_1"


def test_a_function_call_without_its_done_event_is_rebuilt_from_its_deltas() -> None:
    events = [e for e in _call_events() if e.type != "response.output_item.done"]
    assembler = ResponseAssembler()
    feed(assembler, events)
    call = assembler.finish().output[0]
    assert call.type == "function_call"
    assert call.arguments == '{"city":"Paris"}'


def test_refusal_text_shows_as_refusal_fragments() -> None:
    seq = Seq()
    events = [
        ResponseCreatedEvent(type="response.created", sequence_number=seq(), response=response()),
        ResponseOutputItemAddedEvent.model_validate(
            {
                "type": "response.output_item.added",
                "sequence_number": seq(),
                "output_index": 0,
                "item": message_item("", status="in_progress"),
            }
        ),
        ResponseRefusalDeltaEvent(
            type="response.refusal.delta",
            sequence_number=seq(),
            output_index=0,
            content_index=0,
            item_id="msg_1",
            delta="I can't ",
        ),
        ResponseRefusalDeltaEvent(
            type="response.refusal.delta",
            sequence_number=seq(),
            output_index=0,
            content_index=0,
            item_id="msg_1",
            delta="help.",
        ),
        ResponseCompletedEvent(
            type="response.completed", sequence_number=seq(), response=response("completed", [])
        ),
    ]
    assembler = ResponseAssembler()
    pieces = [p for p in feed(assembler, events) if p]
    assert pieces == [(Fragment("refusal", "I can't "),), (Fragment("refusal", "help."),)]
    assert assembler.content_seen
    message = assembler.finish().output[0]
    assert message.type == "message"
    assert message.content[0].type == "refusal"
    assert message.content[0].refusal == "I can't help."


def test_a_reasoning_summary_passes_through_as_content_and_is_rebuilt() -> None:
    seq = Seq()
    reasoning = {"id": "rs_1", "type": "reasoning", "summary": []}
    events = [
        ResponseCreatedEvent(type="response.created", sequence_number=seq(), response=response()),
        ResponseOutputItemAddedEvent.model_validate(
            {
                "type": "response.output_item.added",
                "sequence_number": seq(),
                "output_index": 0,
                "item": reasoning,
            }
        ),
        ResponseReasoningSummaryPartAddedEvent.model_validate(
            {
                "type": "response.reasoning_summary_part.added",
                "sequence_number": seq(),
                "output_index": 0,
                "summary_index": 0,
                "item_id": "rs_1",
                "part": {"type": "summary_text", "text": ""},
            }
        ),
        ResponseReasoningSummaryTextDeltaEvent(
            type="response.reasoning_summary_text.delta",
            sequence_number=seq(),
            output_index=0,
            summary_index=0,
            item_id="rs_1",
            delta="Thinking about it.",
        ),
        ResponseCompletedEvent(
            type="response.completed", sequence_number=seq(), response=response("completed", [])
        ),
    ]
    assembler = ResponseAssembler()
    pieces = feed(assembler, events)
    assert pieces == [None] * len(events)  # nothing of the shown answer
    assert assembler.content_seen  # but the model is answering
    item = assembler.finish().output[0]
    assert item.type == "reasoning"
    assert item.summary[0].text == "Thinking about it."


def test_a_changed_response_id_is_malformed() -> None:
    assembler = ResponseAssembler()
    feed(assembler, text_stream(["a"])[:2])
    other = ResponseInProgressEvent(
        type="response.in_progress", sequence_number=9, response=response(id="resp_other")
    )
    with pytest.raises(MalformedChunkError, match="response id changed"):
        assembler.add(other)


def test_an_object_that_is_not_an_event_is_malformed() -> None:
    with pytest.raises(MalformedChunkError, match="not a Responses stream event"):
        ResponseAssembler().add(object())
    assembler = ResponseAssembler()
    delta = text_stream(["a"])[4]  # a text delta for an output item never added
    with pytest.raises(MalformedChunkError):
        assembler.add(delta)


def test_a_completed_event_with_another_status_is_malformed() -> None:
    event = ResponseCompletedEvent(
        type="response.completed", sequence_number=0, response=response("failed")
    )
    with pytest.raises(MalformedChunkError, match="status failed"):
        ResponseAssembler().add(event)


def test_unknown_event_types_pass_through_without_showing_anything() -> None:
    assembler = ResponseAssembler()
    feed(assembler, text_stream(["a"])[:1])
    unknown = ResponseErrorEvent.model_construct(type="response.something_new", sequence_number=1)
    assert assembler.add(unknown) is None
    assert assembler.last_sequence == 1
