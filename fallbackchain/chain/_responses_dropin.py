"""``chain.responses.create(...)``: the openai SDK's Responses shape over a chain (drop-in).

Built on the chains' ``stream_request`` / ``complete_request`` with
:data:`~fallbackchain.chain.RESPONSES`, the same chain as chat (stream with retries →
non-streamed → fallbacks → cache), the same per-call options (``deadline``,
``max_attempts``, ``cache``, ``fallbacks``, ``timeout``: never sent) and the same divergence
rule as the chat drop-in:

* not streaming, ``create()`` returns the answer's real ``Response`` (a copy: the cache may
  hold the original), whichever tier gave it; ``trace_of(response)`` gives the
  :class:`~fallbackchain.ChainResponse` behind it;
* with ``stream=True`` it returns a :class:`ResponsesDropInStream`
  (:class:`AsyncResponsesDropInStream`) that behaves like the SDK's
  ``Stream[ResponseStreamEvent]`` and yields the SDK's typed events: ``response.created`` and
  ``response.in_progress``; per message ``response.output_item.added``,
  ``response.content_part.added``, ``response.output_text.delta`` (and
  ``response.refusal.delta`` in a refusal part); per function call
  ``response.output_item.added`` (its ``call_id`` and ``name``) then
  ``response.function_call_arguments.delta``; then each item's ``done`` events; every other
  output item of the answer (reasoning, ...) as ``output_item.added`` / ``output_item.done``;
  and last ``response.completed`` carrying the answer's real ``Response``.

Every event before ``response.completed`` carries one ``resp_fc…`` response id and the
requested model, and ``fc…`` item ids: they are handed out before the chain knows which
upstream answer will stand. ``response.completed``'s ``response`` is the upstream's own
(its ``id`` is what ``previous_response_id`` takes), as is ``trace_of(stream).completion``.
Sequence numbers count from 0 with no gap, whatever the chain did underneath (a resumed
background stream, a retry, a fallback).

Divergence: as for chat, the chain's ``reset`` has no SDK event and events handed out
cannot be taken back. ``on_divergence="raise"`` (default) lets the chain finish, then raises
:class:`~fallbackchain.StreamDivergedError` carrying the replacement; ``"buffer"`` yields
nothing but ``response.created`` / ``response.in_progress`` until the answer is final.
A resumed background stream never diverges: it is the same generation, each event once.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Collection, Iterator, Mapping
from typing import Any, Final, Literal, Protocol, Self, overload

from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseRefusalDeltaEvent,
    ResponseRefusalDoneEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from .._errors import Attempt
from .._results import ChainEvent, ChainResponse
from ._call_options import CacheUse
from ._dropin_chunks import Divergence, StreamDivergedError
from ._dropin_stream import TRACE
from ._endpoint import Endpoint
from ._responses_endpoint import RESPONSES
from ._responses_resume import resumptions_of

__all__ = [
    "AsyncChainResponses",
    "AsyncResponsesDropInStream",
    "ChainResponses",
    "ResponsesDropInStream",
]

_DIVERGENCE: Final = ("raise", "buffer")
_CHAIN_OPTIONS: Final = frozenset({"deadline", "max_attempts", "cache", "fallbacks"})
"""The chain's own per-call options: passed to the chain, never sent to a provider."""


# The chains as this module uses them (their public API): structural types, so that the
# chain modules can hand themselves over without an import cycle.


class _Events(Protocol):
    @property
    def response(self) -> ChainResponse: ...
    def __next__(self) -> ChainEvent: ...
    def close(self) -> None: ...


class _AsyncEvents(Protocol):
    @property
    def response(self) -> ChainResponse: ...
    async def __anext__(self) -> ChainEvent: ...
    async def aclose(self) -> None: ...


class _Chain(Protocol):
    def stream_request(
        self,
        endpoint: Endpoint[Any],
        request: Mapping[str, Any],
        *,
        deadline: float | None = ...,
        max_attempts: int | None = ...,
        cache: CacheUse = ...,
        fallbacks: bool | Collection[str] = ...,
    ) -> _Events: ...
    def complete_request(
        self,
        endpoint: Endpoint[Any],
        request: Mapping[str, Any],
        *,
        deadline: float | None = ...,
        max_attempts: int | None = ...,
        cache: CacheUse = ...,
        fallbacks: bool | Collection[str] = ...,
    ) -> ChainResponse: ...


class _AsyncChain(Protocol):
    def stream_request(
        self,
        endpoint: Endpoint[Any],
        request: Mapping[str, Any],
        *,
        deadline: float | None = ...,
        max_attempts: int | None = ...,
        cache: CacheUse = ...,
        fallbacks: bool | Collection[str] = ...,
    ) -> _AsyncEvents: ...
    async def complete_request(
        self,
        endpoint: Endpoint[Any],
        request: Mapping[str, Any],
        *,
        deadline: float | None = ...,
        max_attempts: int | None = ...,
        cache: CacheUse = ...,
        fallbacks: bool | Collection[str] = ...,
    ) -> ChainResponse: ...


# --------------------------------------------------------------------------------------------
# Arguments and the trace
# --------------------------------------------------------------------------------------------


@functools.cache
def _sdk_params() -> frozenset[str]:
    """The keyword arguments the installed SDK's ``responses.create`` takes."""
    from openai.resources.responses import Responses  # noqa: PLC0415 - loaded on first use

    signature = inspect.signature(Responses.create)
    return frozenset(signature.parameters) - {"self"}


def _split(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown names; take the chain's own options out of ``kwargs`` and return them."""
    unknown = sorted(set(kwargs) - _sdk_params() - _CHAIN_OPTIONS)
    if unknown:
        raise TypeError(
            f"create() got unexpected keyword argument(s): {', '.join(map(repr, unknown))}"
        )
    return {name: kwargs.pop(name) for name in _CHAIN_OPTIONS if name in kwargs}


def _check_divergence(on_divergence: object) -> Divergence:
    if on_divergence == "raise":
        return "raise"
    if on_divergence == "buffer":
        return "buffer"
    raise ValueError(f"on_divergence must be one of {_DIVERGENCE}, got {on_divergence!r}")


def _request(model: str | None, kwargs: dict[str, Any]) -> dict[str, Any]:
    request = dict(kwargs)
    if model is not None:
        request["model"] = model
    return request


def _with_resumptions(response: ChainResponse) -> ChainResponse:
    """``response`` whose ``attempts`` also say where a background stream was resumed.

    Each resumption is an :class:`~fallbackchain.Attempt` of the answering tier before the
    attempt that answered: its ``error`` names the drop and where the stream went on (no new
    request was made), its ``exception`` the drop itself.
    """
    resumed = resumptions_of(response.completion)
    if not resumed or not response.attempts:
        return response
    *earlier, last = response.attempts
    notes = [
        Attempt(
            tier=last.tier,
            error=f"{r.error.message}; resumed after event {r.after} (no new request)",
            duration=0.0,
            exception=r.error,
        )
        for r in resumed
    ]
    return dataclasses.replace(response, attempts=(*earlier, *notes, last))


def _traced(response: ChainResponse) -> Response:
    """A copy of the answer that ``trace_of`` finds ``response`` on."""
    answer: Response = response.completion.model_copy()  # type: ignore[assignment]
    # A plain attribute: not a field, so dumps, equality and the SDK shape are unchanged.
    object.__setattr__(answer, TRACE, _with_resumptions(response))
    return answer


# --------------------------------------------------------------------------------------------
# Chain events into the SDK's typed events
# --------------------------------------------------------------------------------------------


class _Eventer:
    """Turns one request's chain events into Responses stream events; applies divergence."""

    __slots__ = (
        "_buffer",
        "_calls",
        "_created",
        "_diverged",
        "_handed",
        "_id",
        "_items",
        "_message",
        "_model",
        "_parts",
        "_seq",
        "_shown",
        "_started",
    )

    def __init__(self, model: str, *, divergence: Divergence) -> None:
        self._id = f"resp_fc{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._model = model
        self._buffer = divergence == "buffer"
        self._seq = 0
        self._started = False
        self._diverged = False
        self._handed = False  # any output was yielded
        self._shown = 0  # characters yielded: text, refusal, arguments
        self._items: list[dict[str, Any]] = []  # the yielded output items, by output_index
        self._message: int | None = None  # output_index of the message being written
        self._parts: dict[str, int] = {}  # the message's part ("text", "refusal") -> index
        self._calls: dict[int, int] = {}  # chain tool-call index -> output_index

    def _event(self, cls: type[Any], **fields: Any) -> Any:
        fields["sequence_number"] = self._seq
        self._seq += 1
        return cls.model_validate(fields)

    def _placeholder(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "model": self._model,
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "status": "in_progress",
        }

    def open(self) -> list[Any]:
        """``response.created`` and ``response.in_progress``, once, before anything else."""
        if self._started:
            return []
        self._started = True
        return [
            self._event(
                ResponseCreatedEvent, type="response.created", response=self._placeholder()
            ),
            self._event(
                ResponseInProgressEvent, type="response.in_progress", response=self._placeholder()
            ),
        ]

    def _added(self, item: dict[str, Any]) -> Any:
        self._items.append(item)
        return self._event(
            ResponseOutputItemAddedEvent,
            type="response.output_item.added",
            output_index=len(self._items) - 1,
            item=item,
        )

    def _part(self, kind: Literal["text", "refusal"]) -> list[Any]:
        """Open the message (and its part of this kind) if needed."""
        out = []
        if self._message is None:
            self._parts = {}
            item: dict[str, Any] = {
                "id": f"msg_fc{uuid.uuid4().hex}",
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            out.append(self._added(item))
            self._message = len(self._items) - 1
        if kind not in self._parts:
            item = self._items[self._message]
            part: dict[str, Any] = (
                {"type": "output_text", "text": "", "annotations": []}
                if kind == "text"
                else {"type": "refusal", "refusal": ""}
            )
            item["content"].append(part)
            self._parts[kind] = len(item["content"]) - 1
            out.append(
                self._event(
                    ResponseContentPartAddedEvent,
                    type="response.content_part.added",
                    item_id=item["id"],
                    output_index=self._message,
                    content_index=self._parts[kind],
                    part=dict(part),
                )
            )
        return out

    def _text(self, text: str, kind: Literal["text", "refusal"]) -> list[Any]:
        if not text:
            return []
        out = self._part(kind)
        assert self._message is not None
        item = self._items[self._message]
        index = self._parts[kind]
        self._shown += len(text)
        self._handed = True
        if kind == "text":
            item["content"][index]["text"] += text
            out.append(
                self._event(
                    ResponseTextDeltaEvent,
                    type="response.output_text.delta",
                    item_id=item["id"],
                    output_index=self._message,
                    content_index=index,
                    delta=text,
                    logprobs=[],
                )
            )
        else:
            item["content"][index]["refusal"] += text
            out.append(
                self._event(
                    ResponseRefusalDeltaEvent,
                    type="response.refusal.delta",
                    item_id=item["id"],
                    output_index=self._message,
                    content_index=index,
                    delta=text,
                )
            )
        return out

    def _tool_call(
        self, index: int, call_id: str | None, name: str | None, arguments: str
    ) -> list[Any]:
        out = []
        at = self._calls.get(index)
        if at is None:
            self._message = None  # text after a call goes in a new message, as the API does
            item: dict[str, Any] = {
                "id": f"fc_fc{uuid.uuid4().hex}",
                "type": "function_call",
                "call_id": call_id or f"call_fc_{index}",
                "name": name or "",
                "arguments": "",
                "status": "in_progress",
            }
            out.append(self._added(item))
            at = self._calls[index] = len(self._items) - 1
            self._handed = True
        if arguments:
            item = self._items[at]
            item["arguments"] += arguments
            self._shown += len(arguments)
            out.append(
                self._event(
                    ResponseFunctionCallArgumentsDeltaEvent,
                    type="response.function_call_arguments.delta",
                    item_id=item["id"],
                    output_index=at,
                    delta=arguments,
                )
            )
        return out

    def event(self, event: ChainEvent) -> list[Any]:
        """The events to yield for one chain event (none while buffering or diverged)."""
        out = self.open()
        if self._buffer or self._diverged:
            return out
        if event.type == "reset":
            # Nothing handed out yet: the replacement simply streams instead.
            self._diverged = self._handed
            return out
        if event.type == "tool_call":
            return out + self._tool_call(event.index, event.id, event.name, event.text)
        if event.type == "refusal":
            return out + self._text(event.text, "refusal")
        return out + self._text(event.text, "text")

    def _whole(self, answer: Response) -> list[Any]:
        out: list[Any] = []
        for fragment in RESPONSES.fragments(answer):
            if fragment.kind == "tool_call":
                out += self._tool_call(fragment.index, fragment.id, fragment.name, fragment.text)
            else:
                out += self._text(
                    fragment.text, "text" if fragment.kind == "content" else "refusal"
                )
        return out

    def _done(self, output_index: int) -> list[Any]:
        item = self._items[output_index]
        item["status"] = "completed"
        out = []
        if item["type"] == "message":
            for index, part in enumerate(item["content"]):
                common = {
                    "item_id": item["id"],
                    "output_index": output_index,
                    "content_index": index,
                }
                if part["type"] == "output_text":
                    out.append(
                        self._event(
                            ResponseTextDoneEvent,
                            type="response.output_text.done",
                            text=part["text"],
                            logprobs=[],
                            **common,
                        )
                    )
                else:
                    out.append(
                        self._event(
                            ResponseRefusalDoneEvent,
                            type="response.refusal.done",
                            refusal=part["refusal"],
                            **common,
                        )
                    )
                out.append(
                    self._event(
                        ResponseContentPartDoneEvent,
                        type="response.content_part.done",
                        part=part,
                        **common,
                    )
                )
        elif item["type"] == "function_call":
            out.append(
                self._event(
                    ResponseFunctionCallArgumentsDoneEvent,
                    type="response.function_call_arguments.done",
                    item_id=item["id"],
                    output_index=output_index,
                    arguments=item["arguments"],
                    name=item["name"],
                )
            )
        out.append(
            self._event(
                ResponseOutputItemDoneEvent,
                type="response.output_item.done",
                output_index=output_index,
                item=item,
            )
        )
        return out

    def end(self, response: ChainResponse) -> list[Any]:
        """The events that finish the stream; raises :class:`StreamDivergedError` instead."""
        if self._diverged:
            raise StreamDivergedError(response, self._shown)
        answer: Response = response.completion  # type: ignore[assignment]
        out = self.open()
        if self._buffer:
            out += self._whole(answer)
        for index in range(len(self._items)):
            out += self._done(index)
        for item in answer.output:  # what the events did not show: reasoning, searches, ...
            if item.type in ("message", "function_call"):
                continue
            data = item.model_dump(mode="json")
            out.append(self._added(data))
            out.append(
                self._event(
                    ResponseOutputItemDoneEvent,
                    type="response.output_item.done",
                    output_index=len(self._items) - 1,
                    item=data,
                )
            )
        out.append(self._event(ResponseCompletedEvent, type="response.completed", response=answer))
        return out


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------


class ResponsesDropInStream:
    """What ``responses.create(stream=True)`` returns: iterate it for the SDK's typed events.

    Behaves like the SDK's ``Stream[ResponseStreamEvent]``: iteration, ``close()``, ``with``.
    The request is under way when ``create()`` returns (an error before any answer is raised
    there). May raise :class:`~fallbackchain.StreamDivergedError` (see ``on_divergence``) or
    any error the chain raises, such as :class:`~fallbackchain.AllTiersFailedError`.
    """

    def __init__(self, events: _Events, eventer: _Eventer) -> None:
        self._events = events
        self._eventer = eventer
        self._pending: deque[ResponseStreamEvent] = deque()
        self._done = False

    @property
    def _fallbackchain_trace(self) -> ChainResponse:  # the name is TRACE: trace_of reads it
        """What ``trace_of`` gives (``StreamNotFinishedError`` before the end)."""
        return _with_resumptions(self._events.response)

    def _pull(self) -> None:
        try:
            event = next(self._events)
        except StopIteration:
            self._done = True
            self._pending.extend(self._eventer.end(self._events.response))
            return
        except BaseException:
            self._done = True
            raise
        self._pending.extend(self._eventer.event(event))

    def __iter__(self) -> Iterator[ResponseStreamEvent]:
        return self

    def __next__(self) -> ResponseStreamEvent:
        pending = self._pending
        while not pending:
            if self._done:
                raise StopIteration
            self._pull()
        return pending.popleft()

    def close(self) -> None:
        """Stop early and release the connection; neutral for the breakers."""
        self._done = True
        self._pending.clear()
        self._events.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncResponsesDropInStream:
    """The asyncio twin of :class:`ResponsesDropInStream` (``async for``, ``await close()``)."""

    def __init__(self, events: _AsyncEvents, eventer: _Eventer) -> None:
        self._events = events
        self._eventer = eventer
        self._pending: deque[ResponseStreamEvent] = deque()
        self._done = False

    @property
    def _fallbackchain_trace(self) -> ChainResponse:  # the name is TRACE: trace_of reads it
        """What ``trace_of`` gives (``StreamNotFinishedError`` before the end)."""
        return _with_resumptions(self._events.response)

    async def _pull(self) -> None:
        try:
            event = await anext(self._events)
        except StopAsyncIteration:
            self._done = True
            self._pending.extend(self._eventer.end(self._events.response))
            return
        except BaseException:
            self._done = True
            raise
        self._pending.extend(self._eventer.event(event))

    def __aiter__(self) -> AsyncIterator[ResponseStreamEvent]:
        return self

    async def __anext__(self) -> ResponseStreamEvent:
        pending = self._pending
        while not pending:
            if self._done:
                raise StopAsyncIteration
            await self._pull()
        return pending.popleft()

    async def close(self) -> None:
        """Stop early and release the connection; neutral for the breakers."""
        self._done = True
        self._pending.clear()
        await self._events.aclose()

    aclose = close

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# --------------------------------------------------------------------------------------------
# chain.responses
# --------------------------------------------------------------------------------------------


class ChainResponses:
    """``chain.responses`` of a :class:`~fallbackchain.FallbackChain`."""

    def __init__(self, chain: _Chain, model: str) -> None:
        self._chain = chain
        self._model = model

    @overload
    def create(
        self,
        *,
        model: str | None = ...,
        stream: Literal[False] | None = ...,
        on_divergence: Divergence = ...,
        **kwargs: Any,
    ) -> Response: ...

    @overload
    def create(
        self,
        *,
        model: str | None = ...,
        stream: Literal[True],
        on_divergence: Divergence = ...,
        **kwargs: Any,
    ) -> ResponsesDropInStream: ...

    @overload
    def create(
        self,
        *,
        model: str | None = ...,
        stream: bool,
        on_divergence: Divergence = ...,
        **kwargs: Any,
    ) -> Response | ResponsesDropInStream: ...

    def create(
        self,
        *,
        model: str | None = None,
        stream: bool | None = None,
        on_divergence: Divergence = "raise",
        **kwargs: Any,
    ) -> Response | ResponsesDropInStream:
        """The SDK's ``responses.create()`` through the chain; ``kwargs`` are its options.

        ``model`` defaults to the configured one. ``timeout`` (seconds) bounds each attempt.
        ``on_divergence`` is this library's own and never sent (see the module docstring).
        The chain's per-call options (``deadline``, ``max_attempts``, ``cache``,
        ``fallbacks``) apply, never sent.
        """
        divergence = _check_divergence(on_divergence)
        options = _split(kwargs)
        request = _request(model, kwargs)
        chain = self._chain
        if not stream:
            return _traced(chain.complete_request(RESPONSES, request, **options))
        events = chain.stream_request(RESPONSES, request, **options)
        dropin = ResponsesDropInStream(
            events, _Eventer(model or self._model, divergence=divergence)
        )
        try:
            dropin._pull()  # send now, as the SDK does: an up-front failure raises here
        except BaseException:
            events.close()
            raise
        return dropin


class AsyncChainResponses:
    """``chain.responses`` of an :class:`~fallbackchain.AsyncFallbackChain`."""

    def __init__(self, chain: _AsyncChain, model: str) -> None:
        self._chain = chain
        self._model = model

    @overload
    async def create(
        self,
        *,
        model: str | None = ...,
        stream: Literal[False] | None = ...,
        on_divergence: Divergence = ...,
        **kwargs: Any,
    ) -> Response: ...

    @overload
    async def create(
        self,
        *,
        model: str | None = ...,
        stream: Literal[True],
        on_divergence: Divergence = ...,
        **kwargs: Any,
    ) -> AsyncResponsesDropInStream: ...

    @overload
    async def create(
        self,
        *,
        model: str | None = ...,
        stream: bool,
        on_divergence: Divergence = ...,
        **kwargs: Any,
    ) -> Response | AsyncResponsesDropInStream: ...

    async def create(
        self,
        *,
        model: str | None = None,
        stream: bool | None = None,
        on_divergence: Divergence = "raise",
        **kwargs: Any,
    ) -> Response | AsyncResponsesDropInStream:
        """As :meth:`ChainResponses.create`, awaited; a stream is an async one."""
        divergence = _check_divergence(on_divergence)
        options = _split(kwargs)
        request = _request(model, kwargs)
        chain = self._chain
        if not stream:
            return _traced(await chain.complete_request(RESPONSES, request, **options))
        events = chain.stream_request(RESPONSES, request, **options)
        eventer = _Eventer(model or self._model, divergence=divergence)
        dropin = AsyncResponsesDropInStream(events, eventer)
        try:
            await dropin._pull()  # send now, as the SDK does: an up-front failure raises here
        except BaseException:
            await events.aclose()
            raise
        return dropin
