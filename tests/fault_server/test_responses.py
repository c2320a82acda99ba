"""The fault server's Responses API, driven through the real ``openai`` SDK over loopback.

Every event must parse into the SDK's own typed class, sequence numbers must run without
gaps, and a background response must resume after any sequence number.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from typing import Any

import httpx2
import openai
import pytest
from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseErrorEvent,
    ResponseFailedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseOutputMessage,
    ResponseRefusalDeltaEvent,
    ResponseRefusalDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from fallbackchain.testing import Answer, Fault, FaultServer, ToolCall

from .conftest import make_client

MODEL = "gpt-4o-mini"
PROMPT = "What is a fault server?"
MESSAGES = [{"role": "user", "content": PROMPT}]

TYPED: dict[str, type[Any]] = {
    "response.created": ResponseCreatedEvent,
    "response.in_progress": ResponseInProgressEvent,
    "response.output_item.added": ResponseOutputItemAddedEvent,
    "response.content_part.added": ResponseContentPartAddedEvent,
    "response.output_text.delta": ResponseTextDeltaEvent,
    "response.output_text.done": ResponseTextDoneEvent,
    "response.refusal.delta": ResponseRefusalDeltaEvent,
    "response.refusal.done": ResponseRefusalDoneEvent,
    "response.content_part.done": ResponseContentPartDoneEvent,
    "response.function_call_arguments.delta": ResponseFunctionCallArgumentsDeltaEvent,
    "response.function_call_arguments.done": ResponseFunctionCallArgumentsDoneEvent,
    "response.output_item.done": ResponseOutputItemDoneEvent,
    "response.completed": ResponseCompletedEvent,
    "response.incomplete": ResponseIncompleteEvent,
    "response.failed": ResponseFailedEvent,
    "error": ResponseErrorEvent,
}


def stream_events(client: openai.OpenAI, **kwargs: Any) -> list[Any]:
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("input", PROMPT)
    with client.responses.create(stream=True, **kwargs) as stream:
        return list(stream)


def read_into(received: list[Any], client: openai.OpenAI, **kwargs: Any) -> None:
    """Stream into ``received`` so events read before an exception stay visible."""
    kwargs.setdefault("model", MODEL)
    kwargs.setdefault("input", PROMPT)
    with client.responses.create(stream=True, **kwargs) as stream:
        received.extend(stream)


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if isinstance(e, ResponseTextDeltaEvent))


def assert_typed(events: list[Any], first: int = 0) -> None:
    """Every event is the SDK's own class for its type; numbers run on from ``first``."""
    for event in events:
        assert type(event) is TYPED[event.type], event
    assert [e.sequence_number for e in events] == list(range(first, first + len(events)))


# -- whole and streamed answers -------------------------------------------------------


def test_create_returns_a_typed_response_with_the_chat_answer(
    server: FaultServer, client: openai.OpenAI
) -> None:
    response = client.responses.create(model=MODEL, input=PROMPT, instructions="Be terse.")
    assert isinstance(response, Response)
    assert response.status == "completed"
    assert response.output_text == server.answer_for(MESSAGES, MODEL)
    assert response.id.startswith("resp_")
    assert response.instructions == "Be terse."
    assert response.usage is not None
    assert response.usage.output_tokens == 3 + server.words  # "Answer from MODEL:" + words
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}]
    )
    assert chat.choices[0].message.content == response.output_text


def test_stream_sends_every_typed_event_in_order(
    server: FaultServer, client: openai.OpenAI
) -> None:
    events = stream_events(client)
    assert_typed(events)
    words = 3 + server.words
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * words,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    answer = server.answer_for(MESSAGES, MODEL)
    assert text_of(events) == answer
    done = events[-4]
    assert isinstance(done, ResponseTextDoneEvent) and done.text == answer
    final = events[-1].response
    assert final.status == "completed" and final.output_text == answer
    assert events[0].response.id == final.id
    assert events[0].response.status == "in_progress"


def test_input_items_and_list_content_give_the_same_answer(
    server: FaultServer, client: openai.OpenAI
) -> None:
    items: Any = [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": [{"type": "input_text", "text": PROMPT}]},
    ]
    response = client.responses.create(model=MODEL, input=items)
    assert response.output_text == server.answer_for(MESSAGES, MODEL)


def test_tool_calls_stream_as_function_call_items() -> None:
    call = ToolCall("get_weather", {"city": "Oslo"})
    answer = Answer.calling(call, content="Let me look.")
    with FaultServer(responder=lambda messages, model: answer) as server:
        client = make_client(server)
        events = stream_events(client)
        assert_typed(events)
        arguments = "".join(
            e.delta for e in events if isinstance(e, ResponseFunctionCallArgumentsDeltaEvent)
        )
        assert arguments == call.arguments
        done = [e for e in events if isinstance(e, ResponseFunctionCallArgumentsDoneEvent)]
        assert [d.arguments for d in done] == [call.arguments]
        added = [e for e in events if isinstance(e, ResponseOutputItemAddedEvent)]
        assert [e.output_index for e in added] == [0, 1]
        final = events[-1].response
        message, function_call = final.output
        assert isinstance(message, ResponseOutputMessage)
        assert isinstance(function_call, ResponseFunctionToolCall)
        assert (function_call.name, function_call.call_id) == ("get_weather", call.id)
        assert function_call.arguments == call.arguments
        whole = client.responses.create(model=MODEL, input=PROMPT)
        assert [item.type for item in whole.output] == ["message", "function_call"]
        assert whole.output_text == "Let me look."


def test_a_refusal_streams_as_refusal_events() -> None:
    with FaultServer(responder=lambda messages, model: Answer(refusal="I cannot help.")) as server:
        events = stream_events(make_client(server))
        assert_typed(events)
        refusal = "".join(e.delta for e in events if isinstance(e, ResponseRefusalDeltaEvent))
        assert refusal == "I cannot help."
        (done,) = [e for e in events if isinstance(e, ResponseRefusalDoneEvent)]
        assert done.refusal == "I cannot help."
        part = events[-1].response.output[0].content[0]
        assert (part.type, part.refusal) == ("refusal", "I cannot help.")


def test_async_client_streams_and_resumes(server: FaultServer) -> None:
    async def main() -> tuple[list[Any], list[Any]]:
        async with openai.AsyncOpenAI(
            base_url=server.base_url, api_key="test", max_retries=0
        ) as client:
            stream = await client.responses.create(
                model=MODEL, input=PROMPT, stream=True, background=True
            )
            events = [event async for event in stream]
            again = await client.responses.retrieve(
                events[0].response.id, stream=True, starting_after=3
            )
            return events, [event async for event in again]

    events, resumed = asyncio.run(main())
    assert_typed(events)
    assert_typed(resumed, first=4)
    assert [e.model_dump() for e in resumed] == [e.model_dump() for e in events[4:]]


# -- background responses and resumption -------------------------------------------------


def test_background_create_is_queued_then_retrieved_whole(
    server: FaultServer, client: openai.OpenAI
) -> None:
    queued = client.responses.create(model=MODEL, input=PROMPT, background=True)
    assert (queued.status, queued.background, queued.output) == ("queued", True, [])
    done = client.responses.retrieve(queued.id)
    assert done.status == "completed"
    assert done.output_text == server.answer_for(MESSAGES, MODEL)


def test_a_dropped_background_stream_resumes_after_the_last_sequence_number(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.drop(after_chunks=5), stream=True, api="responses")
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        read_into(received, client, background=True)
    assert_typed(received)
    assert not isinstance(received[-1], ResponseCompletedEvent)
    last = received[-1].sequence_number
    with client.responses.retrieve(
        received[0].response.id, stream=True, starting_after=last
    ) as stream:
        resumed = list(stream)
    assert_typed(resumed, first=last + 1)
    everything = received + resumed
    assert_typed(everything)  # every sequence number exactly once
    assert text_of(everything) == server.answer_for(MESSAGES, MODEL)
    assert isinstance(everything[-1], ResponseCompletedEvent)
    assert server.route_counts == {"responses.create": 1, "responses.retrieve": 1}
    retrieval = server.requests[-1]
    assert retrieval.route == "responses.retrieve"
    assert retrieval.body == {
        "response_id": received[0].response.id,
        "stream": True,
        "starting_after": last,
    }


def test_a_resumed_stream_replays_the_same_events(client: openai.OpenAI) -> None:
    events = stream_events(client, background=True)
    response_id = events[0].response.id
    for after in (0, 7, len(events) - 2):
        resumed = list(client.responses.retrieve(response_id, stream=True, starting_after=after))
        assert [e.model_dump() for e in resumed] == [e.model_dump() for e in events[after + 1 :]]
    whole = list(client.responses.retrieve(response_id, stream=True))
    assert [e.model_dump() for e in whole] == [e.model_dump() for e in events]
    assert list(client.responses.retrieve(response_id, stream=True, starting_after=999)) == []


def test_faults_apply_to_a_resumed_stream(server: FaultServer, client: openai.OpenAI) -> None:
    events = stream_events(client, background=True)
    server.push(Fault.drop(after_chunks=2), stream=True)
    received: list[Any] = []
    with (
        pytest.raises(openai.APIConnectionError),
        client.responses.retrieve(events[0].response.id, stream=True, starting_after=5) as stream,
    ):
        received.extend(stream)
    deltas = [e for e in received if isinstance(e, ResponseTextDeltaEvent)]
    assert len(deltas) == 2
    assert_typed(received, first=6)


def test_retrieval_errors_are_openai_shaped(server: FaultServer, client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError, match="resp_nope"):
        client.responses.retrieve("resp_nope")
    plain = client.responses.create(model=MODEL, input=PROMPT)
    assert client.responses.retrieve(plain.id).output_text == plain.output_text
    with pytest.raises(openai.BadRequestError, match="background"):
        list(client.responses.retrieve(plain.id, stream=True))
    unstored = client.responses.create(model=MODEL, input=PROMPT, store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(unstored.id)
    with pytest.raises(openai.BadRequestError, match="store"):
        client.responses.create(model=MODEL, input=PROMPT, background=True, store=False)
    with pytest.raises(openai.BadRequestError, match="starting_after"):
        client.responses.retrieve(plain.id, extra_query={"starting_after": "x"})
    with pytest.raises(openai.BadRequestError, match="model"):
        client.responses.create(input=PROMPT)  # type: ignore[call-overload]
    # Rejected requests are not counted; the retrieval of a stored one is.
    assert server.route_counts == {"responses.create": 2, "responses.retrieve": 1}


def test_a_background_response_can_be_cancelled(server: FaultServer, client: openai.OpenAI) -> None:
    queued = client.responses.create(model=MODEL, input=PROMPT, background=True)
    cancelled = client.responses.cancel(queued.id)
    assert (cancelled.id, cancelled.status) == (queued.id, "cancelled")
    plain = client.responses.create(model=MODEL, input=PROMPT)
    with pytest.raises(openai.BadRequestError, match="background"):
        client.responses.cancel(plain.id)
    with pytest.raises(openai.NotFoundError, match="resp_nope"):
        client.responses.cancel("resp_nope")
    assert server.route_counts == {"responses.create": 2, "responses.cancel": 1}


# -- faults ---------------------------------------------------------------------------


def test_status_429_with_retry_after(server: FaultServer, client: openai.OpenAI) -> None:
    server.push(Fault.status(429, retry_after=7))
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model=MODEL, input=PROMPT)
    assert caught.value.response.headers["retry-after"] == "7"
    assert caught.value.code == "rate_limit_exceeded"
    server.push(Fault.status(500), stream=True)
    with pytest.raises(openai.InternalServerError):
        stream_events(client)
    assert len(server.route_counts) == 1 and server.counts["total"] == 2


def test_status_faults_create_nothing_to_retrieve(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.status(503))
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model=MODEL, input=PROMPT, background=True)
    ok = client.responses.create(model=MODEL, input=PROMPT, background=True)
    assert client.responses.retrieve(ok.id).status == "completed"


def test_drop_mid_stream_and_mid_body(server: FaultServer, client: openai.OpenAI) -> None:
    server.push(Fault.drop(after_chunks=3), stream=True)
    received: list[Any] = []
    with pytest.raises(openai.APIConnectionError):
        read_into(received, client)
    assert len([e for e in received if isinstance(e, ResponseTextDeltaEvent)]) == 3
    server.push(Fault.drop(), stream=False)
    with pytest.raises(openai.APIConnectionError):
        client.responses.create(model=MODEL, input=PROMPT)


@pytest.mark.slow  # waits out a 0.3 s read timeout
def test_stall_with_a_short_read_timeout_times_out(server: FaultServer) -> None:
    server.push(Fault.stall(after_chunks=2, seconds=5.0))
    client = make_client(server, timeout=httpx2.Timeout(5.0, read=0.3))
    received: list[Any] = []
    started = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        read_into(received, client)
    assert time.monotonic() - started < 3.0
    assert len([e for e in received if isinstance(e, ResponseTextDeltaEvent)]) == 2
    assert server.wait_idle()


@pytest.mark.slow  # a real 0.2 s stall
def test_stall_then_resumes_and_completes(server: FaultServer, client: openai.OpenAI) -> None:
    server.push(Fault.stall(after_chunks=1, seconds=0.2))
    started = time.monotonic()
    events = stream_events(client)
    assert time.monotonic() - started >= 0.2
    assert_typed(events)
    assert isinstance(events[-1], ResponseCompletedEvent)


def test_failed_ends_with_response_failed(server: FaultServer, client: openai.OpenAI) -> None:
    server.push(Fault.failed(after_chunks=4, message="boom", code="server_error"))
    events = stream_events(client)
    assert_typed(events)
    assert isinstance(events[-1], ResponseFailedEvent)
    failed = events[-1].response
    assert failed.status == "failed"
    assert failed.error is not None and (failed.error.code, failed.error.message) == (
        "server_error",
        "boom",
    )
    assert len([e for e in events if isinstance(e, ResponseTextDeltaEvent)]) == 4
    assert not any(isinstance(e, ResponseCompletedEvent) for e in events)
    server.push(Fault.failed())
    whole = client.responses.create(model=MODEL, input=PROMPT)
    assert whole.status == "failed" and whole.error is not None


def test_incomplete_ends_with_response_incomplete(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.incomplete(after_chunks=3, reason="content_filter"))
    events = stream_events(client)
    assert_typed(events)
    final = events[-1]
    assert isinstance(final, ResponseIncompleteEvent)
    assert final.response.status == "incomplete"
    assert final.response.incomplete_details is not None
    assert final.response.incomplete_details.reason == "content_filter"
    answer = server.answer_for(MESSAGES, MODEL)
    assert answer.startswith(text_of(events)) and len(text_of(events).split()) == 3
    item = final.response.output[0]
    assert item.status == "incomplete"
    server.push(Fault.incomplete(after_chunks=2))
    whole = client.responses.create(model=MODEL, input=PROMPT)
    assert whole.status == "incomplete" and whole.output_text == "Answer from"


def test_background_failures_are_what_retrieval_shows(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.incomplete(after_chunks=2))
    queued = client.responses.create(model=MODEL, input=PROMPT, background=True)
    assert queued.status == "queued"
    later = client.responses.retrieve(queued.id)
    assert later.status == "incomplete" and later.output_text == "Answer from"


def test_error_event_is_typed_and_ends_the_stream(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.sse_error(after_chunks=2, message="overloaded", code="server_error"))
    events = stream_events(client)
    assert_typed(events)
    error = events[-1]
    assert isinstance(error, ResponseErrorEvent)
    assert (error.message, error.code) == ("overloaded", "server_error")
    server.push(Fault.sse_error())
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model=MODEL, input=PROMPT)


def test_malformed_event_raises_json_decode_error(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.malformed(after_chunks=1))
    received: list[Any] = []
    with pytest.raises(json.JSONDecodeError):
        read_into(received, client)
    assert_typed(received)
    server.push(Fault.malformed())
    with pytest.raises(json.JSONDecodeError):
        client.responses.create(model=MODEL, input=PROMPT)


def test_early_end_leaves_out_response_completed(
    server: FaultServer, client: openai.OpenAI
) -> None:
    server.push(Fault.early_end(after_chunks=4))
    events = stream_events(client)
    assert_typed(events)
    assert isinstance(events[-1], ResponseTextDeltaEvent)
    assert len(text_of(events).split()) == 4


def test_reset_raises_api_connection_error(server: FaultServer, client: openai.OpenAI) -> None:
    server.push(Fault.reset())
    with pytest.raises(openai.APIConnectionError):
        client.responses.create(model=MODEL, input=PROMPT)


def test_the_api_filter_keeps_rules_apart(server: FaultServer, client: openai.OpenAI) -> None:
    server.push(Fault.status(503), api="responses")
    chat = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": PROMPT}]
    )
    assert chat.choices[0].finish_reason == "stop"
    with pytest.raises(openai.InternalServerError):
        client.responses.create(model=MODEL, input=PROMPT)
    server.push(Fault.status(503), api="chat")
    assert client.responses.create(model=MODEL, input=PROMPT).status == "completed"
    assert server.pending == [(Fault.status(503), None, 1)]
    with pytest.raises(ValueError, match="api"):
        server.push(Fault.ok(), api="embeddings")  # type: ignore[arg-type]


def test_chat_reads_failed_as_an_error_and_incomplete_as_a_cut(
    server: FaultServer, client: openai.OpenAI
) -> None:
    messages: Any = [{"role": "user", "content": PROMPT}]
    server.push(Fault.failed(after_chunks=2, message="gone"))
    with pytest.raises(openai.APIError, match="gone"):
        list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    server.push(Fault.incomplete(after_chunks=2))
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Answer from"
    assert chunks[-1].choices[0].finish_reason == "length"
    server.push(Fault.incomplete(after_chunks=1, reason="content_filter"))
    whole = client.chat.completions.create(model=MODEL, messages=messages)
    assert (whole.choices[0].message.content, whole.choices[0].finish_reason) == (
        "Answer",
        "content_filter",
    )
    with pytest.raises(ValueError, match="reason"):
        Fault.incomplete(reason="bored")


def test_keep_alive_survives_a_retrieval(server: FaultServer) -> None:
    conn = http.client.HTTPConnection(server.host, server.port, timeout=5)
    try:
        body = json.dumps({"model": MODEL, "input": PROMPT, "background": True})
        conn.request("POST", "/v1/responses", body=body)
        created = json.loads(conn.getresponse().read())
        conn.request("GET", f"/v1/responses/{created['id']}")
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read())["status"] == "completed"
    finally:
        conn.close()
