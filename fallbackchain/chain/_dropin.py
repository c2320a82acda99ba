"""The drop-in surface: ``chain.chat.completions.create(...)`` shaped like the openai SDK's.

Built only on the chains' public API (``stream()`` events and the final ``ChainResponse``):

* not streaming, ``create()`` returns the answer's real ``ChatCompletion`` (a copy: the cache
  may hold the original), whichever tier gave it; ``n > 1`` asks for several choices;
* with ``stream=True`` it returns a :class:`DropInStream` (:class:`AsyncDropInStream`) that
  behaves like the SDK's ``Stream[ChatCompletionChunk]`` and yields real ``ChatCompletionChunk``
  objects: a role chunk, content chunks, tool-call chunks as the SDK streams them
  (``delta.tool_calls``: the first chunk of a call has its ``index``, ``id``, ``type`` and
  function ``name``, later ones append ``function.arguments``), refusal chunks
  (``delta.refusal``), a last chunk with ``finish_reason``, then a usage chunk if
  ``stream_options={"include_usage": True}``;
* :func:`trace_of` gives the :class:`~fallbackchain.ChainResponse` (source, attempts) behind a
  completion or a finished stream, without changing either's shape;
* when no tier answers, the :class:`~fallbackchain.AllTiersFailedError` raised is also the
  SDK's matching error (``openai.RateLimitError``, ``openai.APIConnectionError``, ...);
* ``with_raw_response`` gives ``.parse()``, not the HTTP parts; ``with_streaming_response``
  is refused (there is no single HTTP response).

A fault in the middle of a stream is invisible when the replacement continues what was
yielded (text, tool calls, refusal; see ``_dropin_continuation``); otherwise ``on_divergence``
applies: ``"raise"`` (default) raises :class:`StreamDivergedError` carrying the replacement,
``"buffer"`` yields nothing until the answer is final. Never two answers glued into one.

The pieces: ``_dropin_args`` plans a call (sans I/O), ``_dropin_chunks`` turns events into
chunks (under ``_dropin_continuation``'s rule), ``_dropin_stream`` holds the streams
(``_sdk_stream``'s, for chunks), ``_dropin_errors`` the SDK's error classes, ``_dropin_raw``
the raw-response wrappers. This module only does the I/O.
"""

from __future__ import annotations

from collections.abc import Coroutine, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol, TypeVar, overload

from openai.types.chat import ChatCompletion, ChatCompletionMessageParam, ParsedChatCompletion

from .._config import ChainConfig
from .._results import ChainResponse
from ._dropin_args import DropInCall, plan_create, plan_parse
from ._dropin_continuation import Divergence, StreamDivergedError
from ._dropin_raw import AsyncRawCompletions, RawCompletions, no_streaming_response
from ._dropin_stream import AsyncDropInStream, DropInStream, trace_of, traced
from ._sdk_stream import AsyncChainEvents, ChainEvents

__all__ = [
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

_Format = TypeVar("_Format")
_Messages = Iterable[ChatCompletionMessageParam]
_Whole_co = TypeVar("_Whole_co", covariant=True)
_Stream_co = TypeVar("_Stream_co", covariant=True)
_Either_co = TypeVar("_Either_co", covariant=True)


class _Create(Protocol[_Whole_co, _Stream_co, _Either_co]):
    """The SDK's ``create()`` overloads, declared once for the sync and the async surface.

    ``stream=True`` gives ``_Stream_co``; ``stream=False`` or no ``stream``, ``_Whole_co``; a plain
    ``bool``, ``_Either_co`` (the async surface's are awaitables of those). The other
    keyword arguments are the implementation's (``model``, ``on_divergence``, the SDK's).
    """

    @overload
    def __call__(
        self, *, messages: _Messages, stream: Literal[False] | None = ..., **kwargs: Any
    ) -> _Whole_co: ...
    @overload
    def __call__(self, *, messages: _Messages, stream: Literal[True], **kw: Any) -> _Stream_co: ...
    @overload
    def __call__(self, *, messages: _Messages, stream: bool, **kwargs: Any) -> _Either_co: ...


# The chains as this module uses them (their public API): structural types, so that _chain
# can import this module for its ``chat`` property without an import cycle. ``complete``
# gives a ChainResponse (sync) or an awaitable of one (async); ``stream``, its event stream.


class _Chain(Protocol[_Whole_co, _Stream_co]):
    config: ChainConfig

    def stream(self, messages: Sequence[Any], model: str | None = ..., **p: Any) -> _Stream_co: ...
    def complete(self, messages: Sequence[Any], model: str | None = ..., **p: Any) -> _Whole_co: ...


class _Completions:
    """What both completions classes share: planning a call (no I/O), the SDK's extras."""

    def __init__(self, config: ChainConfig) -> None:
        self._config = config

    def _plan(self, kwargs: dict[str, Any], *response_format: Any) -> DropInCall:
        """``create()``'s call, or ``parse()``'s when given its ``response_format``."""
        if response_format:
            return plan_parse(self._config, kwargs, response_format[0])
        return plan_create(self._config, kwargs)

    @property
    def with_streaming_response(self) -> NoReturn:
        """Not supported: raises ``NotImplementedError`` (there is no single HTTP response)."""
        no_streaming_response()


class ChainCompletions(_Completions):
    """``chain.chat.completions`` of a :class:`~fallbackchain.FallbackChain`."""

    def __init__(self, chain: _Chain[ChainResponse, ChainEvents]) -> None:
        super().__init__(chain.config)
        self._chain = chain

    @property
    def with_raw_response(self) -> RawCompletions:
        """``create()``/``parse()`` giving ``.parse()``, not HTTP parts (see ``_dropin_raw``)."""
        return RawCompletions(self)

    def _create(self, **kwargs: Any) -> ChatCompletion | DropInStream:
        """The SDK's ``create()`` through the chain; ``kwargs`` are the SDK's other options.

        ``model`` defaults to the configured one. ``timeout`` (seconds) bounds each attempt, as
        for the chain's own calls. ``on_divergence`` is this library's own and never sent: see
        :class:`StreamDivergedError`. The chain's per-call options (``deadline``,
        ``max_attempts``, ``cache``, ``fallbacks``) apply, never sent. ``n > 1`` is refused
        with ``stream=True`` (``ValueError``: a stream carries one choice).
        """
        call = self._plan(kwargs)
        with call.errors:
            if call.feed is None:
                return traced(self._chain.complete(*call.args, **call.params))
            return DropInStream(self._chain.stream(*call.args, **call.params), call.feed).started()

    if TYPE_CHECKING:  # the SDK's overloads; the body above is checked as _create
        create: _Create[ChatCompletion, DropInStream, ChatCompletion | DropInStream]
    else:
        create = _create

    def parse(
        self, *, messages: _Messages, response_format: type[_Format] | Any = None, **kwargs: Any
    ) -> ParsedChatCompletion[_Format]:
        """The SDK's ``parse()`` through the chain; the answer parsed as the SDK does.

        ``response_format``: a pydantic model (or a JSON-schema format); ``tools``: strict
        function tools, as for the SDK. Never streamed; the chain's per-call options apply as
        for :meth:`create`.
        """
        call = self._plan(dict(kwargs, messages=messages), response_format)
        with call.errors:
            response = self._chain.complete(*call.args, **call.params)
        return call.parsed(response)


_T = TypeVar("_T")
_Awaited = Coroutine[Any, Any, _T]


class AsyncChainCompletions(_Completions):
    """``chain.chat.completions`` of an :class:`~fallbackchain.AsyncFallbackChain`."""

    def __init__(self, chain: _Chain[_Awaited[ChainResponse], AsyncChainEvents]) -> None:
        super().__init__(chain.config)
        self._chain = chain

    @property
    def with_raw_response(self) -> AsyncRawCompletions:
        """As :attr:`ChainCompletions.with_raw_response`, awaited."""
        return AsyncRawCompletions(self)

    async def _create(self, **kwargs: Any) -> ChatCompletion | AsyncDropInStream:
        """As :meth:`ChainCompletions.create`, awaited; a stream is an AsyncDropInStream."""
        call = self._plan(kwargs)
        with call.errors:
            if call.feed is None:
                return traced(await self._chain.complete(*call.args, **call.params))
            events = self._chain.stream(*call.args, **call.params)
            return await AsyncDropInStream(events, call.feed).started()

    if TYPE_CHECKING:  # the SDK's overloads, awaited
        create: _Create[
            _Awaited[ChatCompletion],
            _Awaited[AsyncDropInStream],
            _Awaited[ChatCompletion | AsyncDropInStream],
        ]
    else:
        create = _create

    async def parse(
        self, *, messages: _Messages, response_format: type[_Format] | Any = None, **kwargs: Any
    ) -> ParsedChatCompletion[_Format]:
        """As :meth:`ChainCompletions.parse`, awaited."""
        call = self._plan(dict(kwargs, messages=messages), response_format)
        with call.errors:
            response = await self._chain.complete(*call.args, **call.params)
        return call.parsed(response)


class ChainChat:
    """``chain.chat``: holds ``completions``, as the SDK's ``client.chat`` does."""

    def __init__(self, chain: _Chain[ChainResponse, ChainEvents]) -> None:
        self.completions = ChainCompletions(chain)


class AsyncChainChat:
    """``chain.chat`` of an :class:`~fallbackchain.AsyncFallbackChain`."""

    def __init__(self, chain: _Chain[_Awaited[ChainResponse], AsyncChainEvents]) -> None:
        self.completions = AsyncChainCompletions(chain)
