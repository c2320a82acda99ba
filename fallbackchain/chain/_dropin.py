"""The drop-in surface: ``chain.chat.completions.create(...)`` shaped like the openai SDK's.

Built only on the chains' public API (``stream()`` events and the final ``ChainResponse``):

* not streaming, ``create()`` returns the answer's real ``ChatCompletion`` (a copy: the cache
  may hold the original), whichever tier gave it;
* with ``stream=True`` it returns a :class:`DropInStream` (:class:`AsyncDropInStream`) that
  behaves like the SDK's ``Stream[ChatCompletionChunk]`` and yields real ``ChatCompletionChunk``
  objects: a role chunk, content chunks, tool-call chunks as the SDK streams them
  (``delta.tool_calls``: the first chunk of a call has its ``index``, ``id``, ``type`` and
  function ``name``, later ones append ``function.arguments``), refusal chunks
  (``delta.refusal``), a last chunk with ``finish_reason``, then a usage chunk if
  ``stream_options={"include_usage": True}``;
* :func:`trace_of` gives the :class:`~fallbackchain.ChainResponse` (source, attempts) behind a
  completion or a finished stream, without changing either's shape.

Divergence: the chain's ``reset`` event (a replacement answer differs from text already
shown) has no SDK equivalent, and chunks handed out cannot be taken back. ``on_divergence``
chooses what happens: ``"raise"`` (default) lets the rest of the chain run, then raises
:class:`StreamDivergedError` carrying the replacement; ``"buffer"`` yields nothing until the
answer is complete, so it never diverges. Either way a consumer never gets two answers glued
into one. A tool call or refusal already yielded is never continued by another attempt (the
chain's events restart it with a reset: another attempt has other call ids and arguments), so a
fault in the middle of one diverges; ``"buffer"`` survives it.
"""

from __future__ import annotations

import functools
import inspect
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from typing import Any, Final, Literal, Protocol, Self, TypeVar, overload

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ParsedChatCompletion,
)

from .._config import ChainConfig
from .._errors import FallbackChainError
from .._results import ChainEvent, ChainResponse

__all__ = [
    "TRACE_ATTRIBUTE",
    "AsyncChainChat",
    "AsyncChainCompletions",
    "AsyncDropInStream",
    "ChainChat",
    "ChainCompletions",
    "Divergence",
    "DropInStream",
    "StreamDivergedError",
    "trace_of",
]

Divergence = Literal["raise", "buffer"]
"""What a drop-in stream does when the chain replaces text it already yielded."""

_DIVERGENCE: Final = ("raise", "buffer")

# Per-call options issue #15 plans for the chain but that it does not take yet: refused by
# name rather than sent to the provider (which would reject them, or worse, ignore them).
_CHAIN_OPTIONS: Final = frozenset({"deadline", "max_attempts", "cache", "fallbacks"})
"""The chain's own per-call options: passed to the chain, never sent to a provider."""

_Format = TypeVar("_Format")
_TRACE: Final = "_fallbackchain_trace"  # where a returned completion keeps its ChainResponse
TRACE_ATTRIBUTE: Final = _TRACE
"""The attribute where a drop-in answer (of any API, or a finished drop-in stream) keeps the
:class:`ChainResponse` that :func:`trace_of` returns."""


# The chains as this module uses them (their public API): structural types, so that _chain
# can import this module for its ``chat`` property without an import cycle.


class _Events(Protocol):
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


class _Chain(Protocol):
    """A ``FallbackChain``."""

    config: ChainConfig

    def stream(
        self, messages: Sequence[Any], model: str | None = None, **params: Any
    ) -> _Events: ...
    def complete(
        self, messages: Sequence[Any], model: str | None = None, **params: Any
    ) -> ChainResponse: ...


class _AsyncChain(Protocol):
    """An ``AsyncFallbackChain``."""

    config: ChainConfig

    def stream(
        self, messages: Sequence[Any], model: str | None = None, **params: Any
    ) -> _AsyncEvents: ...
    async def complete(
        self, messages: Sequence[Any], model: str | None = None, **params: Any
    ) -> ChainResponse: ...


class StreamDivergedError(FallbackChainError):
    """A drop-in stream's answer was replaced by a different one after text was yielded.

    Raised (with ``on_divergence="raise"``) once the chain has finished, in place of the chunks
    that would have glued a second answer onto the first. ``response`` is the replacement
    (``response.text``, ``.source``, ``.completion``, ``.attempts``); ``shown_chars`` is how
    many characters of the abandoned answer the consumer was given.
    """

    def __init__(self, response: ChainResponse, shown_chars: int) -> None:
        super().__init__(
            f"the answer changed after {shown_chars} character(s) were streamed: the "
            f"replacement from {response.source!r} differs and is in .response"
        )
        self.response = response
        self.shown_chars = shown_chars


def trace_of(answer: object) -> ChainResponse | None:
    """The :class:`ChainResponse` behind a drop-in answer, or ``None`` for anything else.

    ``answer`` is a ``ChatCompletion`` that ``chain.chat.completions.create()`` returned, or a
    drop-in stream iterated to its end (before the end this raises
    :class:`~fallbackchain.StreamNotFinishedError`). A completion from a plain openai client
    gives ``None``.
    """
    if isinstance(answer, DropInStream | AsyncDropInStream):
        return answer._events.response
    trace = getattr(answer, _TRACE, None)  # also a Responses drop-in answer or stream
    return trace if isinstance(trace, ChainResponse) else None


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


@functools.cache
def _sdk_params() -> frozenset[str]:
    """The keyword arguments the installed SDK's ``chat.completions.create`` takes."""
    signature = inspect.signature(openai.resources.chat.Completions.create)
    return frozenset(signature.parameters) - {"self"}


def _check_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Refuse names neither the SDK's ``create()`` nor the chain's own options."""
    unknown = sorted(set(kwargs) - _sdk_params() - _CHAIN_OPTIONS)
    if unknown:
        raise TypeError(
            f"create() got unexpected keyword argument(s): {', '.join(map(repr, unknown))}"
        )


def _check_divergence(on_divergence: object) -> Divergence:
    if on_divergence == "raise":
        return "raise"
    if on_divergence == "buffer":
        return "buffer"
    raise ValueError(f"on_divergence must be one of {_DIVERGENCE}, got {on_divergence!r}")


def _wants_usage(stream_options: object) -> bool:
    return isinstance(stream_options, Mapping) and stream_options.get("include_usage") is True


def _stream_params(kwargs: dict[str, Any]) -> bool:
    """Whether the caller wants a usage chunk; ``stream_options`` is taken out of ``kwargs``.

    The chain asks for usage itself, and a non-streaming tier must not get the option.
    """
    wants = _wants_usage(kwargs.pop("stream_options", None))
    n = kwargs.get("n")
    if n is not None and n != 1:
        raise ValueError(f"a drop-in stream carries one choice; n={n!r} is not supported")
    return wants


def _traced(response: ChainResponse) -> ChatCompletion:
    """A copy of the answer's completion that :func:`trace_of` can find ``response`` on."""
    completion = response.completion.model_copy()
    # A plain attribute: not a field, so dumps, equality and the SDK shape are unchanged.
    object.__setattr__(completion, _TRACE, response)
    return completion


def _parse_params(response_format: Any, tools: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    """``create()`` parameters for a ``parse()`` call, made by the SDK's own helpers.

    They live in a private module of the SDK (``openai.lib._parsing``): using them keeps the
    request and the parsing exactly the SDK's, which is the point of a drop-in.
    """
    from openai.lib._parsing import (  # noqa: PLC0415 - only parse() needs them
        type_to_response_format_param,
        validate_input_tools,
    )

    if kwargs.get("stream"):
        raise TypeError("parse() does not stream; use create(stream=True)")
    params = {k: v for k, v in kwargs.items() if k != "stream"}
    if tools is not None:
        validate_input_tools(tools)
        params["tools"] = tools
    if response_format is not None:
        params["response_format"] = type_to_response_format_param(response_format)
    return params


def _parsed(response: ChainResponse, response_format: Any, tools: Any) -> ParsedChatCompletion[Any]:
    from openai import omit  # noqa: PLC0415
    from openai.lib._parsing import parse_chat_completion  # noqa: PLC0415

    parsed: ParsedChatCompletion[Any] = parse_chat_completion(
        response_format=omit if response_format is None else response_format,
        input_tools=omit if tools is None else tools,
        chat_completion=response.completion,
    )
    object.__setattr__(parsed, _TRACE, response)  # trace_of() finds it, as for create()
    return parsed


# --------------------------------------------------------------------------------------------
# Events into chunks
# --------------------------------------------------------------------------------------------


class _Chunker:
    """Turns one request's chain events into SDK chunks, and applies ``on_divergence``.

    Every chunk of a stream shares one ``id`` (``chatcmpl-fc-`` + hex), ``created`` and
    ``model`` (the requested one): they are handed out before the chain knows which upstream
    answer will stand. ``trace_of(stream).completion`` has the upstream's own values.
    """

    __slots__ = (
        "_buffer",
        "_calls",
        "_created",
        "_diverged",
        "_handed",
        "_id",
        "_model",
        "_shown",
        "_started",
        "_usage",
    )

    def __init__(self, model: str, *, usage: bool, divergence: Divergence) -> None:
        self._id = f"chatcmpl-fc-{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._model = model
        self._usage = usage
        self._buffer = divergence == "buffer"
        self._started = False  # the role chunk was yielded
        self._shown = 0  # characters yielded: content, refusal, tool-call arguments
        self._handed = False  # any content, refusal or tool call was yielded
        self._calls: dict[int, tuple[str | None, str | None]] = {}  # id, name yielded per call
        self._diverged = False

    def _chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> ChatCompletionChunk:
        return ChatCompletionChunk.model_validate(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": choices,
                "usage": usage,
            }
        )

    def _delta(
        self, delta: dict[str, Any], finish_reason: str | None = None
    ) -> ChatCompletionChunk:
        return self._chunk(
            [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        )

    def _open(self) -> list[ChatCompletionChunk]:
        """The role chunk, before anything else."""
        if self._started:
            return []
        self._started = True
        return [self._delta({"role": "assistant", "content": ""})]

    def _text(self, text: str, kind: str = "content") -> list[ChatCompletionChunk]:
        out = self._open()
        if text:
            self._shown += len(text)
            self._handed = True
            out.append(self._delta({kind: text}))
        return out

    def _tool_call(
        self, index: int, call_id: str | None, name: str | None, arguments: str
    ) -> list[ChatCompletionChunk]:
        """One piece of a tool call, shaped as the SDK streams it."""
        out = self._open()
        function: dict[str, Any] = {"arguments": arguments}
        call: dict[str, Any] = {"index": index, "function": function}
        sent = self._calls.get(index)
        if sent is None:  # the call's first chunk: who and what
            call.update(id=call_id, type="function")
            function["name"] = name or ""
        else:  # later ones append; a name or id that grew is sent as the SDK would
            sent_id, sent_name = sent
            if call_id != sent_id:
                call["id"] = call_id
            if name and name != sent_name:
                known = sent_name or ""
                function["name"] = name[len(known) :] if name.startswith(known) else name
            if not arguments and len(call) == 2 and len(function) == 1:
                return out  # nothing new to say
        self._calls[index] = (call_id, name)
        self._shown += len(arguments)
        self._handed = True
        out.append(self._delta({"tool_calls": [call]}))
        return out

    def event(self, event: ChainEvent) -> list[ChatCompletionChunk]:
        """The chunks to yield for one chain event (none while buffering or diverged)."""
        if self._buffer or self._diverged:
            return []
        if event.type == "reset":
            # Nothing handed out yet: the replacement simply streams instead.
            self._diverged = self._handed
            return []
        if event.type == "tool_call":
            return self._tool_call(event.index, event.id, event.name, event.text)
        if event.type == "refusal":
            return self._text(event.text, "refusal")
        return self._text(event.text)

    def _whole(self, response: ChainResponse) -> list[ChatCompletionChunk]:
        """All of a buffered answer: its text, each tool call whole, its refusal."""
        out = self._text(response.text)
        completion = response.completion
        if not completion.choices:
            return out
        message = completion.choices[0].message
        for index, call in enumerate(message.tool_calls or ()):
            function = getattr(call, "function", None)  # custom (non-function) tools have none
            out += self._tool_call(
                index,
                call.id,
                getattr(function, "name", None),
                getattr(function, "arguments", "") or "",
            )
        if message.refusal:
            out += self._text(message.refusal, "refusal")
        return out

    def end(self, response: ChainResponse) -> list[ChatCompletionChunk]:
        """The chunks that finish the stream; raises :class:`StreamDivergedError` instead."""
        if self._diverged:
            raise StreamDivergedError(response, self._shown)
        completion = response.completion
        out = self._whole(response) if self._buffer else self._open()
        finish_reason = completion.choices[0].finish_reason if completion.choices else "stop"
        out.append(self._delta({}, finish_reason))
        if self._usage:
            usage = completion.usage.model_dump() if completion.usage is not None else None
            out.append(self._chunk([], usage))
        return out


# --------------------------------------------------------------------------------------------
# Streams
# --------------------------------------------------------------------------------------------


class DropInStream:
    """What ``create(stream=True)`` returns: iterate it for ``ChatCompletionChunk`` objects.

    Behaves like the SDK's ``Stream[ChatCompletionChunk]``: iteration, ``close()``, ``with``.
    The request is under way when ``create()`` returns (an error before any answer is raised
    there). May raise :class:`StreamDivergedError` (see ``on_divergence``) or any error the
    chain raises, such as :class:`~fallbackchain.AllTiersFailedError`.
    """

    def __init__(self, events: _Events, chunker: _Chunker) -> None:
        self._events = events
        self._chunker = chunker
        self._pending: deque[ChatCompletionChunk] = deque()
        self._done = False

    def _pull(self) -> None:
        try:
            event = next(self._events)
        except StopIteration:
            self._done = True
            self._pending.extend(self._chunker.end(self._events.response))
            return
        except BaseException:
            self._done = True
            raise
        self._pending.extend(self._chunker.event(event))

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return self

    def __next__(self) -> ChatCompletionChunk:
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


class AsyncDropInStream:
    """The asyncio twin of :class:`DropInStream`: ``async for``, ``await close()``, ``async with``.

    ``aclose()`` is ``close()``, as on the SDK's ``AsyncStream``.
    """

    def __init__(self, events: _AsyncEvents, chunker: _Chunker) -> None:
        self._events = events
        self._chunker = chunker
        self._pending: deque[ChatCompletionChunk] = deque()
        self._done = False

    async def _pull(self) -> None:
        try:
            event = await anext(self._events)
        except StopAsyncIteration:
            self._done = True
            self._pending.extend(self._chunker.end(self._events.response))
            return
        except BaseException:
            self._done = True
            raise
        self._pending.extend(self._chunker.event(event))

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
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
# chain.chat.completions
# --------------------------------------------------------------------------------------------


class ChainCompletions:
    """``chain.chat.completions`` of a :class:`~fallbackchain.FallbackChain`."""

    def __init__(self, chain: _Chain) -> None:
        self._chain = chain

    @overload
    def create(
        self,
        *,
        messages: Iterable[ChatCompletionMessageParam],
        model: str | None = ...,
        stream: Literal[False] | None = ...,
        on_divergence: Divergence = ...,
        **kwargs: Any,
    ) -> ChatCompletion: ...

    @overload
    def create(
        self,
        *,
        messages: Iterable[ChatCompletionMessageParam],
        model: str | None = ...,
        stream: Literal[True],
        on_divergence: Divergence = ...,
        **kwargs: Any,
    ) -> DropInStream: ...

    @overload
    def create(
        self,
        *,
        messages: Iterable[ChatCompletionMessageParam],
        model: str | None = ...,
        stream: bool,
        on_divergence: Divergence = ...,
        **kwargs: Any,
    ) -> ChatCompletion | DropInStream: ...

    def create(
        self,
        *,
        messages: Iterable[ChatCompletionMessageParam],
        model: str | None = None,
        stream: bool | None = None,
        on_divergence: Divergence = "raise",
        **kwargs: Any,
    ) -> ChatCompletion | DropInStream:
        """The SDK's ``create()`` through the chain; ``kwargs`` are the SDK's other options.

        ``model`` defaults to the configured one. ``timeout`` (seconds) bounds each attempt, as
        for the chain's own calls. ``on_divergence`` is this library's own
        and never sent: see :class:`StreamDivergedError`. The chain's per-call options
        (``deadline``, ``max_attempts``, ``cache``, ``fallbacks``) apply, never sent.
        """
        divergence = _check_divergence(on_divergence)
        _check_kwargs(kwargs)
        chain = self._chain
        if not stream:
            kwargs.pop("stream_options", None)
            return _traced(chain.complete(list(messages), model, **kwargs))
        usage = _stream_params(kwargs)
        events = chain.stream(list(messages), model, **kwargs)
        chunker = _Chunker(model or chain.config.openai.model, usage=usage, divergence=divergence)
        dropin = DropInStream(events, chunker)
        try:
            dropin._pull()  # send now, as the SDK does: an up-front failure raises here
        except BaseException:
            events.close()
            raise
        return dropin

    def parse(
        self,
        *,
        messages: Iterable[ChatCompletionMessageParam],
        model: str | None = None,
        response_format: type[_Format] | Any = None,
        tools: Any = None,
        **kwargs: Any,
    ) -> ParsedChatCompletion[_Format]:
        """The SDK's ``parse()`` through the chain; the answer parsed as the SDK does.

        ``response_format``: a pydantic model (or a JSON-schema format); ``tools``: strict
        function tools, as for the SDK. Never streamed; the chain's per-call options apply as
        for :meth:`create`.
        """
        params = _parse_params(response_format, tools, kwargs)
        _check_kwargs(params)
        response = self._chain.complete(list(messages), model, **params)
        return _parsed(response, response_format, tools)


class AsyncChainCompletions:
    """``chain.chat.completions`` of an :class:`~fallbackchain.AsyncFallbackChain`."""

    def __init__(self, chain: _AsyncChain) -> None:
        self._chain = chain

    @overload
    async def create(
        self,
        *,
        messages: Iterable[ChatCompletionMessageParam],
        model: str | None = ...,
        stream: Literal[False] | None = ...,
        on_divergence: Divergence = ...,
        **kwargs: Any,
    ) -> ChatCompletion: ...

    @overload
    async def create(
        self,
        *,
        messages: Iterable[ChatCompletionMessageParam],
        model: str | None = ...,
        stream: Literal[True],
        on_divergence: Divergence = ...,
        **kwargs: Any,
    ) -> AsyncDropInStream: ...

    @overload
    async def create(
        self,
        *,
        messages: Iterable[ChatCompletionMessageParam],
        model: str | None = ...,
        stream: bool,
        on_divergence: Divergence = ...,
        **kwargs: Any,
    ) -> ChatCompletion | AsyncDropInStream: ...

    async def create(
        self,
        *,
        messages: Iterable[ChatCompletionMessageParam],
        model: str | None = None,
        stream: bool | None = None,
        on_divergence: Divergence = "raise",
        **kwargs: Any,
    ) -> ChatCompletion | AsyncDropInStream:
        """As :meth:`ChainCompletions.create`, awaited; a stream is an AsyncDropInStream."""
        divergence = _check_divergence(on_divergence)
        _check_kwargs(kwargs)
        chain = self._chain
        if not stream:
            kwargs.pop("stream_options", None)
            return _traced(await chain.complete(list(messages), model, **kwargs))
        usage = _stream_params(kwargs)
        events = chain.stream(list(messages), model, **kwargs)
        chunker = _Chunker(model or chain.config.openai.model, usage=usage, divergence=divergence)
        dropin = AsyncDropInStream(events, chunker)
        try:
            await dropin._pull()  # send now, as the SDK does: an up-front failure raises here
        except BaseException:
            await events.aclose()
            raise
        return dropin

    async def parse(
        self,
        *,
        messages: Iterable[ChatCompletionMessageParam],
        model: str | None = None,
        response_format: type[_Format] | Any = None,
        tools: Any = None,
        **kwargs: Any,
    ) -> ParsedChatCompletion[_Format]:
        """As :meth:`ChainCompletions.parse`, awaited."""
        params = _parse_params(response_format, tools, kwargs)
        _check_kwargs(params)
        response = await self._chain.complete(list(messages), model, **params)
        return _parsed(response, response_format, tools)


class ChainChat:
    """``chain.chat``: holds ``completions``, as the SDK's ``client.chat`` does."""

    def __init__(self, chain: _Chain) -> None:
        self.completions = ChainCompletions(chain)


class AsyncChainChat:
    """``chain.chat`` of an :class:`~fallbackchain.AsyncFallbackChain`."""

    def __init__(self, chain: _AsyncChain) -> None:
        self.completions = AsyncChainCompletions(chain)
