"""``chain.responses.create`` through the whole chain, sync and async, against the fault server.

The real openai client over loopback; every fault kind of the fault server's language, on
the Responses API; resumption of a background stream after a drop.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.responses import Response

from fallbackchain import (
    AllTiersFailedError,
    FallbackConfig,
    StreamDivergedError,
    StreamEventError,
    TruncatedStreamError,
    trace_of,
)
from fallbackchain.chain import ResponseIncompleteError
from fallbackchain.testing import Answer, Fault, FaultServer, ToolCall

from .conftest import user

PROMPT = "Summarise our refund policy."
WEATHER = "What is the weather in Paris?"
REFUSE = "Please refuse this."
CALL = ToolCall("get_weather", '{"city":"Paris"}', id="call_w")

_PLAIN = FaultServer(words=12)  # never started: its built-in answers, for the responder


def _scripted(messages: list[dict[str, Any]], model: str) -> Answer:
    """Built-in answers, except a tool call for WEATHER and a refusal for REFUSE."""
    last = messages[-1]["content"] if messages else ""
    if last == WEATHER:
        return Answer.calling(CALL)
    if last == REFUSE:
        return Answer(refusal="I can't help with that.")
    return _PLAIN.reply_for(messages, model)


@pytest.fixture(scope="module")
def _session_server() -> Iterator[FaultServer]:
    """This module's fault server: as the shared one, plus scripted tool calls and refusals."""
    with FaultServer(words=12, responder=_scripted) as server:
        yield server


def with_backup(harness_factory: Any, backup: Any, **overrides: Any) -> Any:
    """A harness whose chain has a second route: the ``backup`` server's ``backup-model``."""
    return harness_factory(
        fallbacks=(FallbackConfig(name="backup", model="backup-model"),),
        fallback_servers={"backup": backup},
        **overrides,
    )


def create(h: Any, **kwargs: Any) -> Response:
    """A non-streamed ``responses.create`` (sync or async)."""
    kwargs.setdefault("input", PROMPT)
    if h.mode == "sync":
        return h.chain.responses.create(**kwargs)  # type: ignore[no-any-return]
    return h.run(lambda: h.chain.responses.create(**kwargs))  # type: ignore[no-any-return]


def stream(h: Any, **kwargs: Any) -> tuple[list[Any], Any]:
    """A streamed ``responses.create``: every event, and the trace."""
    kwargs.setdefault("input", PROMPT)
    if h.mode == "sync":
        with h.chain.responses.create(stream=True, **kwargs) as events:
            return list(events), trace_of(events)

    async def go() -> tuple[list[Any], Any]:
        async with await h.chain.responses.create(stream=True, **kwargs) as events:
            return [e async for e in events], trace_of(events)

    return h.run(go)  # type: ignore[no-any-return]


def answer(h: Any, prompt: str = PROMPT) -> str:
    return h.answer(prompt)


def text_of(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


def check_stream_shape(events: list[Any]) -> Response:
    """The drop-in stream is one coherent stream: numbered 0.., created first, completed last."""
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert events[0].type == "response.created"
    assert events[1].type == "response.in_progress"
    assert events[-1].type == "response.completed"
    ids = {e.response.id for e in events if e.type in ("response.created", "response.in_progress")}
    assert len(ids) == 1
    final = events[-1].response
    assert isinstance(final, Response)
    assert text_of(events) == final.output_text
    return final


# -- the happy path -----------------------------------------------------------------------------


def test_a_whole_response_through_the_chain(harness: Any, server: Any) -> None:
    response = create(harness)
    assert isinstance(response, Response)
    assert response.output_text == answer(harness)
    assert response.status == "completed"
    trace = trace_of(response)
    assert trace is not None
    assert trace.source == "stream"  # the chain streams first, as for chat
    assert server.route_counts == Counter({"responses.create": 1})


def test_a_streamed_response_through_the_chain(harness: Any, server: Any) -> None:
    events, trace = stream(harness)
    final = check_stream_shape(events)
    assert final.output_text == answer(harness)
    assert trace.source == "stream"
    assert trace.completion.id == final.id
    assert server.route_counts == Counter({"responses.create": 1})


def test_instructions_and_tools_pass_through_and_key_the_cache(harness: Any, server: Any) -> None:
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    create(harness, instructions="Be brief.", tools=tools, temperature=0)
    body = server.requests[-1].body
    assert body["instructions"] == "Be brief."
    assert body["tools"] == tools
    assert body["stream"] is True
    server.default = Fault.status(503)
    again = create(harness, instructions="Be brief.", tools=tools, temperature=0)
    assert trace_of(again).source == "cache"
    with pytest.raises(AllTiersFailedError):
        create(harness, instructions="Be thorough.", tools=tools, temperature=0)


# -- faults: every kind -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        Fault.status(503),
        Fault.status(429, retry_after=0),
        Fault.status(500),
        Fault.reset(),
        Fault.sse_error(),
        Fault.malformed(),
        Fault.early_end(),
        Fault.failed(),
        Fault.drop(),
    ],
    ids=repr,
)
def test_a_fault_before_any_content_is_retried_and_never_shown(
    harness: Any, server: Any, fault: Fault
) -> None:
    server.push(fault, stream=True, api="responses")
    events, trace = stream(harness)
    final = check_stream_shape(events)
    assert final.output_text == answer(harness)
    assert [a.error is None for a in trace.attempts] == [False, True]
    assert trace.source == "stream"


@pytest.mark.parametrize(
    "fault",
    [
        Fault.drop(after_chunks=3),
        Fault.early_end(after_chunks=3),
        Fault.malformed(after_chunks=3),
        Fault.sse_error(after_chunks=3),
        Fault.failed(after_chunks=3),
    ],
    ids=repr,
)
def test_a_fault_mid_answer_is_repaired_without_repeating_text(
    harness: Any, server: Any, fault: Fault
) -> None:
    server.push(fault, stream=True, api="responses")
    events, trace = stream(harness)
    final = check_stream_shape(events)
    assert final.output_text == answer(harness)  # each word once: no duplicated text
    assert trace.attempts[0].error is not None
    assert trace.attempts[-1].error is None
    assert server.route_counts["responses.create"] == 2


@pytest.mark.slow  # real time: waits out a timeout
def test_a_stall_moves_on_after_the_idle_timeout(harness_factory: Any, server: Any) -> None:
    h = harness_factory(real_time=True, openai__idle_timeout=0.2, openai__first_token_timeout=0.5)
    server.push(Fault.stall(after_chunks=2, seconds=5), stream=True, api="responses")
    events, trace = stream(h)
    assert check_stream_shape(events).output_text == answer(h)
    assert trace.attempts[0].error_type == "IdleTimeoutError"


@pytest.mark.slow  # real time: waits out a timeout
def test_a_silent_model_is_left_after_the_first_token_timeout(
    harness_factory: Any, server: Any
) -> None:
    h = harness_factory(real_time=True, openai__first_token_timeout=0.2)
    server.push(Fault.slow_first_byte(5), stream=True, api="responses")
    response = create(h)
    assert response.output_text == answer(h)
    trace = trace_of(response)
    assert trace.attempts[0].error_type == "FirstTokenTimeoutError"
    assert trace.source == "completion"  # the same route's whole tier: no other route lives


def test_an_answer_cut_at_the_requests_limit_is_returned_as_the_sdk_returns_it(
    harness_factory: Any, server: Any, backup: Any
) -> None:
    """As chat's ``finish_reason="length"``: the answer, once; never failed over, and a
    caller's small limit never counts against a breaker (it would open every route's)."""
    h = with_backup(harness_factory, backup)
    for turn in range(7):  # more than fail_max
        server.push(Fault.incomplete(after_chunks=2), stream=True, api="responses")
        events, trace = stream(h, input=f"{PROMPT} {turn}")
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[-1].type == "response.incomplete"
        final = events[-1].response
        assert final.status == "incomplete" and final.incomplete_details.reason == "max_output_tokens"
        assert trace.source == "stream" and [a.error for a in trace.attempts] == [None]
    assert set(h.chain.breaker_states().values()) == {"closed"}
    assert server.route_counts == Counter({"responses.create": 7})
    assert backup.counts["total"] == 0


def test_an_answer_cut_at_the_limit_is_cached_and_a_content_filtered_one_is_not(
    harness: Any, server: Any
) -> None:
    server.push(Fault.incomplete(after_chunks=2), stream=True, api="responses")
    cut = create(harness, input="long")
    server.push(Fault.incomplete(after_chunks=2, reason="content_filter"), stream=True, api="responses")
    filtered = create(harness, input="filtered")
    assert (cut.status, filtered.status) == ("incomplete", "incomplete")
    assert filtered.incomplete_details is not None
    assert filtered.incomplete_details.reason == "content_filter"
    assert server.route_counts == Counter({"responses.create": 2})  # one call each
    server.default = Fault.status(503)
    again = create(harness, input="long")  # the same request, cut the same way: its answer
    assert trace_of(again).source == "cache" and again.output_text == cut.output_text
    with pytest.raises(openai.APIError):
        create(harness, input="filtered")  # chat's rule: a filtered answer is never cached


def test_an_incomplete_answer_without_a_reason_moves_to_the_next_route(
    harness_factory: Any, server: Any, backup: Any
) -> None:
    h = with_backup(harness_factory, backup)
    server.push(Fault.incomplete(after_chunks=2, reason="unstated"), stream=True, api="responses")
    events, trace = stream(h)
    assert check_stream_shape(events).status == "completed"
    first = trace.attempts[0]
    assert isinstance(first.exception, ResponseIncompleteError) and first.exception.retryable


def test_a_failed_response_is_a_stream_event_error(harness: Any, server: Any) -> None:
    server.push(Fault.failed(), stream=True, api="responses")
    response = create(harness)
    first = trace_of(response).attempts[0]
    assert isinstance(first.exception, StreamEventError)
    assert "response.failed" in first.error


def test_the_primarys_own_rejection_propagates_unchanged(harness: Any, server: Any) -> None:
    server.push(Fault.status(400), api="responses")
    with pytest.raises(openai.BadRequestError):
        create(harness)
    assert server.counts["total"] == 1


def test_a_whole_tier_answer_is_checked_too(
    harness_factory: Any, server: Any, backup: Any
) -> None:
    h = with_backup(harness_factory, backup, openai__complete_streams=False)  # whole first
    server.push(Fault.incomplete(reason="unstated"), stream=False, api="responses")
    response = create(h)
    first = trace_of(response).attempts[0]
    assert first.tier == "completion"
    assert isinstance(first.exception, ResponseIncompleteError)
    assert isinstance(first.exception, TruncatedStreamError)
    assert server.requests[0].body["stream"] is False
    assert response.status == "completed"


def test_a_whole_answer_cut_at_the_limit_is_returned(harness_factory: Any, server: Any) -> None:
    h = harness_factory(openai__complete_streams=False)
    server.push(Fault.incomplete(), stream=False, api="responses")
    response = create(h)
    assert response.status == "incomplete"
    assert [a.tier for a in trace_of(response).attempts] == ["completion"]
    assert server.counts["total"] == 1


# -- fallbacks and the cache --------------------------------------------------------------------


def test_an_outage_falls_back_to_another_route(
    harness_factory: Any, server: Any, backup: Any
) -> None:
    h = harness_factory(
        fallbacks=(FallbackConfig(name="backup", model="backup-model"),),
        fallback_servers={"backup": backup},
    )
    server.default = Fault.status(503)
    events, trace = stream(h)
    final = check_stream_shape(events)
    assert trace.source == "backup"
    assert final.output_text == backup.answer_for(user(PROMPT), "backup-model")
    assert final.model == "backup-model"
    assert backup.route_counts == Counter({"responses.create": 1})


def test_a_full_outage_is_answered_from_the_cache(harness: Any, server: Any) -> None:
    live = create(harness)
    server.default = Fault.status(503)
    cached = create(harness)
    trace = trace_of(cached)
    assert trace.source == "cache"
    assert cached.output_text == live.output_text
    assert cached.id == live.id
    assert cached.usage is not None
    assert cached.usage.total_tokens == 0  # a cached answer bills nothing
    assert trace.stored_usage == live.usage
    assert live._request_id.startswith("req_")
    assert cached._request_id is None  # no request was made for it
    events, trace = stream(harness)
    assert check_stream_shape(events).output_text == live.output_text
    assert trace.source == "cache"
    assert trace.completion._request_id is None


def test_chat_and_responses_answers_never_mix_in_the_cache(harness: Any, server: Any) -> None:
    create(harness)
    server.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):
        harness.complete(PROMPT)


def test_a_conversation_request_is_never_cached(harness: Any, server: Any) -> None:
    create(harness, conversation="conv_1")
    server.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):
        create(harness, conversation="conv_1")


def test_a_previous_response_id_request_is_cached_by_the_id(harness: Any, server: Any) -> None:
    first = create(harness)
    follow = create(harness, previous_response_id=first.id)
    server.default = Fault.status(503)
    assert create(harness, previous_response_id=first.id).output_text == follow.output_text
    with pytest.raises(AllTiersFailedError):
        create(harness, previous_response_id="resp_other")


# -- tool calls and refusals --------------------------------------------------------------------


def test_a_tool_call_streams_as_the_sdk_streams_it(harness: Any, server: Any) -> None:
    events, _ = stream(harness, input=WEATHER)
    final = check_stream_shape(events)
    added = [e for e in events if e.type == "response.output_item.added"]
    assert [a.item.type for a in added] == ["function_call"]
    assert added[0].item.call_id == "call_w"
    assert added[0].item.name == "get_weather"
    arguments = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert arguments == CALL.arguments
    call = next(item for item in final.output if item.type == "function_call")
    assert call.arguments == arguments
    assert call.call_id == "call_w"


def test_a_drop_in_a_tool_call_is_continued_not_repeated(harness: Any, server: Any) -> None:
    server.push(Fault.drop(after_chunks=2), stream=True, api="responses")
    events, trace = stream(harness, input=WEATHER)
    final = check_stream_shape(events)
    assert trace.attempts[0].error is not None  # the drop happened, mid-arguments
    added = [e for e in events if e.type == "response.output_item.added"]
    assert len(added) == 1  # one call, handed out once
    arguments = "".join(
        e.delta for e in events if e.type == "response.function_call_arguments.delta"
    )
    assert arguments == CALL.arguments  # each piece once
    assert final.output[0].arguments == CALL.arguments


def test_a_replacement_that_differs_diverges_unless_buffered(
    harness_factory: Any, server: Any, backup: Any
) -> None:
    h = harness_factory(
        fallbacks=(FallbackConfig(name="backup", model="backup-model"),),
        fallback_servers={"backup": backup},
    )
    other = backup.answer_for(user(PROMPT), "backup-model")
    server.push(Fault.drop(after_chunks=3), stream=True, api="responses")
    server.default = Fault.status(503)  # the rest of the primary's attempts
    with pytest.raises(StreamDivergedError) as info:
        stream(h)
    assert info.value.response.text == other
    assert info.value.response.source == "backup"
    server.clear()
    server.push(Fault.drop(after_chunks=3), stream=True, api="responses")
    server.default = Fault.status(503)
    events, trace = stream(h, on_divergence="buffer")
    assert check_stream_shape(events).output_text == other  # never glued to the first
    assert trace.source == "backup"


def test_a_refusal_streams_as_refusal_deltas(harness: Any, server: Any) -> None:
    events, trace = stream(harness, input=REFUSE)
    check_stream_shape(events)
    refusal = "".join(e.delta for e in events if e.type == "response.refusal.delta")
    assert refusal == "I can't help with that."
    assert trace.source == "stream"


# -- resumption ---------------------------------------------------------------------------------


def test_a_dropped_background_stream_is_resumed_not_regenerated(harness: Any, server: Any) -> None:
    server.push(Fault.drop(after_chunks=4), stream=True, api="responses")
    events, trace = stream(harness, background=True)
    final = check_stream_shape(events)
    assert final.output_text == answer(harness)  # each word exactly once
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert "".join(deltas) == answer(harness)
    # one generation, one bill: a single POST, then one GET that resumed it
    assert server.route_counts == Counter({"responses.create": 1, "responses.retrieve": 1})
    # the trace says what happened: the drop, resumed, then the answer from the same attempt
    assert trace.source == "stream"
    assert len(trace.attempts) == 2
    resumed, answered = trace.attempts
    assert "resumed after event" in resumed.error
    assert "no new request" in resumed.error
    assert answered.error is None
    assert trace.completion._request_id.startswith("req_")  # the creation's, as the SDK's


def test_a_background_stream_that_cannot_be_resumed_is_generated_again(
    harness: Any, server: Any
) -> None:
    server.push(Fault.drop(after_chunks=4), stream=True, api="responses")
    server.push(Fault.status(500), stream=True, api="responses")  # the retrieval fails
    events, trace = stream(harness, background=True)
    assert check_stream_shape(events).output_text == answer(harness)
    # the abandoned response is cancelled: it would go on generating, and billing, for nobody
    assert server.route_counts == Counter(
        {"responses.create": 2, "responses.retrieve": 1, "responses.cancel": 1}
    )
    [cancelled] = [r.body["response_id"] for r in server.requests if r.route == "responses.cancel"]
    [retried] = [r.body["response_id"] for r in server.requests if r.route == "responses.retrieve"]
    assert cancelled == retried  # the first generation, not the answer that stands
    assert [a.error is None for a in trace.attempts] == [False, True]
    assert "could not resume (HTTP 500)" in (trace.attempts[0].error or "")


def test_a_background_stream_the_consumer_leaves_is_cancelled(harness: Any, server: Any) -> None:
    """Nobody will read the rest: the provider is asked to stop generating (and billing)."""
    kwargs = {"input": PROMPT, "background": True, "stream": True}
    if harness.mode == "sync":
        with harness.chain.responses.create(**kwargs) as events:
            taken = [next(iter(events)) for _ in range(5)]
    else:

        async def go() -> list[Any]:
            async with await harness.chain.responses.create(**kwargs) as events:
                it = aiter(events)
                return [await anext(it) for _ in range(5)]

        taken = harness.run(go)
    assert len(taken) == 5
    assert server.route_counts == Counter({"responses.create": 1, "responses.cancel": 1})


def test_a_finished_background_stream_is_not_cancelled(harness: Any, server: Any) -> None:
    events, _ = stream(harness, background=True)
    assert check_stream_shape(events).output_text == answer(harness)
    assert server.route_counts == Counter({"responses.create": 1})


def test_a_foreground_stream_is_never_resumed(harness: Any, server: Any) -> None:
    server.push(Fault.drop(after_chunks=4), stream=True, api="responses")
    events, _ = stream(harness)
    assert check_stream_shape(events).output_text == answer(harness)
    assert server.route_counts == Counter({"responses.create": 2})


def test_a_background_request_answered_whole_is_sent_in_the_foreground(
    harness_factory: Any, server: Any
) -> None:
    h = harness_factory(openai__complete_streams=False)
    response = create(h, background=True)
    assert response.status == "completed"
    assert response.output_text == answer(h)
    assert "background" not in server.requests[-1].body


# -- the drop-in's own surface ------------------------------------------------------------------


def test_the_chains_own_options_are_taken_never_sent(harness: Any, server: Any) -> None:
    create(harness, deadline=5.0, max_attempts=1, cache="off", fallbacks=False, timeout=3)
    body = server.requests[-1].body
    for name in ("deadline", "max_attempts", "cache", "fallbacks", "timeout"):
        assert name not in body


def test_an_unknown_argument_is_refused_before_sending(harness: Any, server: Any) -> None:
    with pytest.raises(TypeError, match="nonsense"):
        create(harness, nonsense=1)
    with pytest.raises(ValueError, match="on_divergence"):
        create(harness, on_divergence="glue")
    assert server.counts["total"] == 0


def test_closing_a_stream_early_is_neutral(harness: Any, server: Any) -> None:
    if harness.mode == "sync":
        with harness.chain.responses.create(input=PROMPT, stream=True) as events:
            next(events)
    else:

        async def go() -> None:
            async with await harness.chain.responses.create(input=PROMPT, stream=True) as events:
                await anext(events)

        harness.run(go)
    assert all(state == "closed" for state in harness.chain.breaker_states().values())
    assert create(harness).output_text == answer(harness)


def test_a_stream_dropped_twice_is_resumed_twice(harness: Any, server: Any) -> None:
    server.push(Fault.drop(after_chunks=3), stream=True, api="responses")  # the create
    server.push(Fault.drop(after_chunks=3), stream=True, api="responses")  # the first retrieve
    events, trace = stream(harness, background=True)
    assert check_stream_shape(events).output_text == answer(harness)
    assert server.route_counts == Counter({"responses.create": 1, "responses.retrieve": 2})
    notes = [a.error for a in trace.attempts[:-1]]
    assert len(notes) == 2
    assert all("resumed after event" in (note or "") for note in notes)
    first, second = (int(note.split("resumed after event ")[1].split(" ")[0]) for note in notes)
    assert 0 < first < second


@pytest.mark.slow  # real time: waits out a timeout
def test_a_stalled_background_stream_is_left_after_the_idle_timeout(
    harness_factory: Any, server: Any
) -> None:
    h = harness_factory(real_time=True, openai__idle_timeout=0.2)
    server.push(Fault.stall(after_chunks=2, seconds=5), stream=True, api="responses")
    events, trace = stream(h, background=True)
    assert check_stream_shape(events).output_text == answer(h)
    assert trace.attempts[0].error_type == "IdleTimeoutError"
    # no retrieve after a stall; the stalled generation is cancelled
    assert server.route_counts == Counter({"responses.create": 2, "responses.cancel": 1})


def test_listeners_see_a_responses_request_like_a_chat_one(make_chain: Any, server: Any) -> None:
    seen: list[Any] = []

    class Recorder:
        def __getattr__(self, name: str) -> Any:
            if name.startswith("on_"):
                return seen.append
            raise AttributeError(name)

    chain = make_chain(Recorder())
    server.push(Fault.status(503), stream=True, api="responses")
    chain.responses.create(input=PROMPT)
    kinds = [type(e).__name__ for e in seen]
    assert kinds == [
        "RequestStarted", "AttemptStarted", "AttemptEnded", "RetryScheduled",
        "AttemptStarted", "AttemptEnded", "CacheEvent", "RequestEnded",
    ]  # fmt: skip
    assert seen[0].api == "responses"
    end = seen[-1]
    assert end.source == "stream"
    assert end.input_tokens is not None
    assert end.output_tokens is not None
    assert end.output_tokens > 0


def test_a_fallback_without_the_responses_api_is_skipped(
    harness_factory: Any, server: Any, backup: Any
) -> None:
    h = harness_factory(
        fallbacks=(FallbackConfig(name="backup", model="backup-model"),),
        fallback_servers={"backup": backup},
    )
    server.default = Fault.status(503)
    backup.push(Fault.status(404), api="responses", times=None)  # e.g. a chat-only server
    with pytest.raises(AllTiersFailedError) as info:
        create(h)
    rejected = [a for a in info.value.attempts if a.tier == "backup"]
    assert len(rejected) == 1
    assert rejected[0].error_type == "RouteRejectedError"
    assert all(
        state == "closed" for name, state in h.chain.breaker_states().items() if "backup" in name
    )


@pytest.mark.slow  # real time: a hedge race
def test_a_silent_primary_is_hedged_to_a_fallback(
    harness_factory: Any, server: Any, backup: Any
) -> None:
    h = harness_factory(
        real_time=True,
        retry__hedge_after=0.2,
        openai__first_token_timeout=3.0,
        fallbacks=(FallbackConfig(name="backup", model="backup-model"),),
        fallback_servers={"backup": backup},
    )
    server.push(Fault.slow_first_byte(2.0), stream=True, api="responses")
    events, trace = stream(h, background=True)
    final = check_stream_shape(events)
    assert trace.source == "backup"
    assert final.output_text == backup.answer_for(user(PROMPT), "backup-model")
    assert [(a.tier, a.error) for a in trace.attempts] == [
        ("stream", "lost a hedge race"),
        ("backup", None),
    ]


def test_when_nothing_answers_the_error_is_the_sdks_too(harness: Any, server: Any) -> None:
    server.default = Fault.status(503)
    with pytest.raises(openai.InternalServerError) as info:
        create(harness, input="never asked before")
    assert isinstance(info.value, AllTiersFailedError)
    assert info.value.status_code == 503
    with pytest.raises(openai.APIError) as streamed:
        stream(harness, input="never asked before either")
    assert isinstance(streamed.value, AllTiersFailedError)


def test_an_error_no_provider_answered_names_the_responses_endpoint(
    harness: Any, server: Any
) -> None:
    server.default = Fault.status(503)
    for _ in range(10):
        if set(harness.chain.breaker_states().values()) == {"open"}:
            break
        with pytest.raises(openai.APIError):
            create(harness, input="open the breakers")
    total = server.counts["total"]
    with pytest.raises(openai.APIConnectionError) as info:
        create(harness, input="while open")
    assert server.counts["total"] == total  # nothing was sent
    assert str(info.value.request.url).endswith("/responses")
