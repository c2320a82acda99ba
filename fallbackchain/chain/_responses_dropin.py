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

When no tier answers, the :class:`~fallbackchain.AllTiersFailedError` raised (at
``create()`` or mid-stream) is also the SDK's class for the last attempt that reached a
provider, as for chat (``_dropin_errors``): ``except openai.APIError`` keeps working.

Every event before ``response.completed`` carries one ``resp_fc…`` response id and the
requested model, and ``fc…`` item ids: they are handed out before the chain knows which
upstream answer will stand. ``response.completed``'s ``response`` is the upstream's own
(its ``id`` is what ``previous_response_id`` takes), as is ``trace_of(stream).completion``.
Sequence numbers count from 0 with no gap, whatever the chain did underneath (a resumed
background stream, a retry, a fallback).

A fault in the middle of a stream: as for chat (see ``_dropin_chunks``), events handed out
cannot be taken back, so a replacement is held back while it repeats what was handed out
(text, refusal, each function call's name and arguments); once it has repeated all of it,
only what it adds is yielded (the items already handed out keep their ids). A replacement
that says something else diverges: ``on_divergence="raise"`` (default) yields nothing more
and raises :class:`~fallbackchain.StreamDivergedError` carrying it once the chain has
finished; ``"buffer"`` yields nothing but ``response.created`` / ``response.in_progress``
until the answer is final. A resumed background stream is the same generation: nothing is
held back, each event comes once.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Collection, Coroutine, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, Generic, Literal, Protocol, Self, TypeVar, overload

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

from .._config import ChainConfig
from .._errors import Attempt
from .._results import ChainEvent, ChainResponse
from ._call_options import CacheUse
from ._dropin_chunks import (
    Divergence,
    ShownMessage,
    StreamDivergedError,
    check_divergence,
    compare_shown,
)
from ._dropin_errors import SdkErrors
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

_CHAIN_OPTIONS: Final = frozenset({"deadline", "max_attempts", "cache", "fallbacks"})
"""The chain's own per-call options: passed to the chain, never sent to a provider."""

_Whole_co = TypeVar("_Whole_co", covariant=True)
_Stream_co = TypeVar("_Stream_co", covariant=True)
_Either_co = TypeVar("_Either_co", covariant=True)
_Events = TypeVar("_Events")


class _Create(Protocol[_Whole_co, _Stream_co, _Either_co]):
    """The SDK's ``responses.create()`` overloads, declared once for the sync and async surface.

    ``stream=True`` gives ``_Stream_co``; ``stream=False`` or no ``stream``, ``_Whole_co``; a
    plain ``bool``, ``_Either_co`` (the async surface's are awaitables of those). The other
    keyword arguments are the SDK's (``input``, ``model``, ...), ``on_divergence`` and the
    chain's per-call options.
    """

    @overload
    def __call__(self, *, stream: Literal[False] | None = ..., **kwargs: Any) -> _Whole_co: ...
    @overload
    def __call__(self, *, stream: Literal[True], **kwargs: Any) -> _Stream_co: ...
    @overload
    def __call__(self, *, stream: bool, **kwargs: Any) -> _Either_co: ...


class _Chain(Protocol[_Whole_co, _Stream_co]):
    """A chain as this module uses it (its public API): structural, so no import cycle.

    ``complete_request`` gives a ChainResponse (sync) or an awaitable of one (async);
    ``stream_request``, its event stream.
    """

    def stream_request(
        self,
        endpoint: Endpoint[Any],
        request: Mapping[str, Any],
        *,
        deadline: float | None = ...,
        max_attempts: int | None = ...,
        cache: CacheUse = ...,
        fallbacks: bool | Collection[str] = ...,
    ) -> _Stream_co: ...
    def complete_request(
        self,
        endpoint: Endpoint[Any],
        request: Mapping[str, Any],
        *,
        deadline: float | None = ...,
        max_attempts: int | None = ...,
        cache: CacheUse = ...,
        fallbacks: bool | Collection[str] = ...,
    ) -> _Whole_co: ...


class _SyncEvents(Protocol):
    """A ``ChainStream``."""

    @property
    def response(self) -> ChainResponse: ...
    def __next__(self) -> ChainEvent: ...
    def close(self) -> None: ...


class _AsyncEvents(Protocol):
    """An ``AsyncChainStream``."""

    @property
    def response(self) -> ChainResponse: ...
    async def __anext__(self) -> ChainEvent: ...
    async def aclose(self) -> None: ...


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
    """Turns one request's chain events into Responses stream events; applies divergence.

    The continuation rule is the chat drop-in's (``_dropin_chunks``): the same
    :class:`ShownMessage` of what was handed out, the same :func:`compare_shown`.
    """

    __slots__ = (
        "_buffer",
        "_calls",
        "_created",
        "_current",
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
        self._handed = ShownMessage()  # what the consumer has been given
        # The events since the chain's last reset, held back while they repeat what was
        # handed out; None when they are the ones handed out (the common case).
        self._current: ShownMessage | None = None
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
        self._handed.add(ChainEvent("delta" if kind == "text" else "refusal", text, ""))
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
        self._handed.add(ChainEvent("tool_call", arguments, "", index=index, id=call_id, name=name))
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

    def _hand(self, event: ChainEvent) -> list[Any]:
        if event.type == "tool_call":
            return self._tool_call(event.index, event.id, event.name, event.text)
        return self._text(event.text, "refusal" if event.type == "refusal" else "text")

    def event(self, event: ChainEvent) -> list[Any]:
        """The events to yield for one chain event (none while buffering, held or diverged)."""
        out = self.open()
        if self._buffer or self._diverged:
            return out
        current = self._current
        if event.type == "reset":
            # Nothing handed out yet: the replacement simply streams instead.
            handed = self._handed
            if handed.content or handed.refusal or handed.calls:
                self._current = ShownMessage()
            return out
        if current is None:
            return out + self._hand(event)
        current.add(event)
        verdict = compare_shown(self._handed, current)
        if verdict == "diverged":
            self._diverged = True
        if verdict != "caught":
            return out
        self._current = None  # the replacement repeated all: hand out what it adds
        return out + self._extend(current)

    def _extend(self, current: ShownMessage) -> list[Any]:
        """What ``current`` has beyond the handed message (of which it holds all)."""
        handed = self._handed
        out = self._text("".join(current.content)[sum(map(len, handed.content)) :], "text")
        for index, call in sorted(current.calls.items()):
            sent = handed.calls.get(index)
            shown = sum(map(len, sent.arguments)) if sent is not None else 0
            out += self._tool_call(index, call.id, call.name, "".join(call.arguments)[shown:])
        refusal = "".join(current.refusal)[sum(map(len, handed.refusal)) :]
        return out + self._text(refusal, "refusal")

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
        if self._diverged or self._current is not None:
            # held back to the end: the replacement never repeated all, it is shorter
            self._diverged = True
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


class _Feed:
    """The events waiting to be yielded, and the end of the stream (sans I/O).

    ``errors`` wraps every pull: an ``AllTiersFailedError`` is raised as the SDK's too.
    """

    __slots__ = ("_done", "_eventer", "_pending", "errors")

    def __init__(self, eventer: _Eventer, errors: SdkErrors) -> None:
        self._eventer = eventer
        self.errors = errors
        self._pending: deque[ResponseStreamEvent] = deque()
        self._done = False

    def ready(self) -> ResponseStreamEvent | None:
        """The next event to yield, if one is waiting; raises ``StopIteration`` at the end."""
        if self._pending:
            return self._pending.popleft()
        if self._done:
            raise StopIteration
        return None

    def take(self, event: ChainEvent) -> None:
        self._pending.extend(self._eventer.event(event))

    def end(self, response: ChainResponse) -> None:
        """The chain's events ended: what finishes the stream (or its divergence)."""
        self._done = True
        self._pending.extend(self._eventer.end(response))

    def stop(self) -> None:
        """Nothing more: a failure, or the consumer closed the stream."""
        self._done = True
        self._pending.clear()


class _Stream(Generic[_Events]):
    """What both drop-in streams share: the chain's events, the feed, the trace."""

    def __init__(self, events: _Events, feed: _Feed) -> None:
        self._events = events
        self._feed = feed

    @property
    def _fallbackchain_trace(self) -> ChainResponse:  # the name is TRACE: trace_of reads it
        """What ``trace_of`` gives (``StreamNotFinishedError`` before the end)."""
        return _with_resumptions(self._events.response)  # type: ignore[attr-defined]


class ResponsesDropInStream(_Stream[_SyncEvents]):
    """What ``responses.create(stream=True)`` returns: iterate it for the SDK's typed events.

    Behaves like the SDK's ``Stream[ResponseStreamEvent]``: iteration, ``close()``, ``with``.
    The request is under way when ``create()`` returns (an error before any answer is raised
    there). May raise :class:`~fallbackchain.StreamDivergedError` (see ``on_divergence``) or
    any error the chain raises, such as :class:`~fallbackchain.AllTiersFailedError`.
    """

    def started(self) -> Self:
        """Send now, as the SDK does: an up-front failure raises here (and closes)."""
        try:
            self._pull()
        except BaseException:
            self._events.close()
            raise
        return self

    def _pull(self) -> None:
        with self._feed.errors:
            try:
                event = next(self._events)
            except StopIteration:
                self._feed.end(self._events.response)
                return
            except BaseException:
                self._feed.stop()
                raise
            self._feed.take(event)

    def __iter__(self) -> Iterator[ResponseStreamEvent]:
        return self

    def __next__(self) -> ResponseStreamEvent:
        while (event := self._feed.ready()) is None:
            self._pull()
        return event

    def close(self) -> None:
        """Stop early and release the connection; neutral for the breakers."""
        self._feed.stop()
        self._events.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncResponsesDropInStream(_Stream[_AsyncEvents]):
    """The asyncio twin of :class:`ResponsesDropInStream` (``async for``, ``await close()``)."""

    async def started(self) -> Self:
        """As :meth:`ResponsesDropInStream.started`, awaited."""
        try:
            await self._pull()
        except BaseException:
            await self._events.aclose()
            raise
        return self

    async def _pull(self) -> None:
        with self._feed.errors:
            try:
                event = await anext(self._events)
            except StopAsyncIteration:
                self._feed.end(self._events.response)
                return
            except BaseException:
                self._feed.stop()
                raise
            self._feed.take(event)

    def __aiter__(self) -> AsyncIterator[ResponseStreamEvent]:
        return self

    async def __anext__(self) -> ResponseStreamEvent:
        try:
            while (event := self._feed.ready()) is None:
                await self._pull()
        except StopIteration:
            raise StopAsyncIteration from None
        return event

    async def close(self) -> None:
        """Stop early and release the connection; neutral for the breakers."""
        self._feed.stop()
        await self._events.aclose()

    aclose = close

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


# --------------------------------------------------------------------------------------------
# chain.responses
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    """One ``create()`` call, planned before anything is sent (no I/O)."""

    request: dict[str, Any]
    options: dict[str, Any]
    errors: SdkErrors
    feed: _Feed | None  # None: not streamed


def _plan(config: ChainConfig, kwargs: dict[str, Any]) -> _Call:
    """Check ``create()``'s arguments and split them: the request, the chain's options."""
    divergence = check_divergence(kwargs.pop("on_divergence", "raise"))
    stream = kwargs.pop("stream", None)
    options = _split(kwargs)
    request = dict(kwargs)
    if request.get("model") is None:
        request.pop("model", None)
    errors = SdkErrors(str(config.openai.base_url))
    if not stream:
        return _Call(request, options, errors, None)
    eventer = _Eventer(request.get("model") or config.openai.model, divergence=divergence)
    return _Call(request, options, errors, _Feed(eventer, errors))


_T = TypeVar("_T")
_Awaited = Coroutine[Any, Any, _T]


class ChainResponses:
    """``chain.responses`` of a :class:`~fallbackchain.FallbackChain`."""

    def __init__(self, chain: _Chain[ChainResponse, _SyncEvents], config: ChainConfig) -> None:
        self._chain = chain
        self._config = config

    def _create(self, **kwargs: Any) -> Response | ResponsesDropInStream:
        """The SDK's ``responses.create()`` through the chain; ``kwargs`` are its options.

        ``model`` defaults to the configured one. ``timeout`` (seconds) bounds each attempt.
        ``on_divergence`` is this library's own and never sent (see the module docstring).
        The chain's per-call options (``deadline``, ``max_attempts``, ``cache``,
        ``fallbacks``) apply, never sent.
        """
        call = _plan(self._config, kwargs)
        with call.errors:
            if call.feed is None:
                answer = self._chain.complete_request(RESPONSES, call.request, **call.options)
                return _traced(answer)
            events = self._chain.stream_request(RESPONSES, call.request, **call.options)
            return ResponsesDropInStream(events, call.feed).started()

    if TYPE_CHECKING:  # the SDK's overloads; the body above is checked as _create
        create: _Create[Response, ResponsesDropInStream, Response | ResponsesDropInStream]
    else:
        create = _create


class AsyncChainResponses:
    """``chain.responses`` of an :class:`~fallbackchain.AsyncFallbackChain`."""

    def __init__(
        self, chain: _Chain[_Awaited[ChainResponse], _AsyncEvents], config: ChainConfig
    ) -> None:
        self._chain = chain
        self._config = config

    async def _create(self, **kwargs: Any) -> Response | AsyncResponsesDropInStream:
        """As :meth:`ChainResponses.create`, awaited; a stream is an async one."""
        call = _plan(self._config, kwargs)
        with call.errors:
            if call.feed is None:
                answer = await self._chain.complete_request(RESPONSES, call.request, **call.options)
                return _traced(answer)
            events = self._chain.stream_request(RESPONSES, call.request, **call.options)
            return await AsyncResponsesDropInStream(events, call.feed).started()

    if TYPE_CHECKING:  # the SDK's overloads, awaited
        create: _Create[
            _Awaited[Response],
            _Awaited[AsyncResponsesDropInStream],
            _Awaited[Response | AsyncResponsesDropInStream],
        ]
    else:
        create = _create
