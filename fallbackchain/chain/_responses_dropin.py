"""``chain.responses.create(...)``: the openai SDK's Responses shape over a chain (drop-in).

Built on the chains' ``stream_request`` / ``complete_request`` with
:data:`~fallbackchain.chain.RESPONSES`, the same chain as chat (stream with retries →
non-streamed → fallbacks → cache), the same per-call options (``deadline``,
``max_attempts``, ``cache``, ``fallbacks``, ``timeout``: never sent) and the same divergence
rule as the chat drop-in:

* not streaming, ``create()`` returns the answer's real ``Response`` (a copy: the cache may
  hold the original), whichever tier gave it; ``trace_of(response)`` gives the
  :class:`~fallbackchain.ChainResponse` behind it;
* with ``stream=True`` it returns a :class:`~fallbackchain.chain.ResponsesDropInStream`
  (``AsyncResponsesDropInStream``, in ``_responses_stream``) that behaves like the SDK's
  ``Stream[ResponseStreamEvent]`` and yields the SDK's typed events, in the order
  ``_responses_events`` describes, ending with ``response.completed`` carrying the answer's
  real ``Response``.

When no tier answers, the :class:`~fallbackchain.AllTiersFailedError` raised (at
``create()`` or mid-stream) is also the SDK's class for the last attempt that reached a
provider, as for chat (``_dropin_errors``): ``except openai.APIError`` keeps working.

Every event before ``response.completed`` carries one ``resp_fc…`` response id and the
requested model, and ``fc…`` item ids: they are handed out before the chain knows which
upstream answer will stand. ``response.completed``'s ``response`` is the upstream's own
(its ``id`` is what ``previous_response_id`` takes), as is ``trace_of(stream).completion``.
Sequence numbers count from 0 with no gap, whatever the chain did underneath (a resumed
background stream, a retry, a fallback).

A fault in the middle of a stream: as for chat (``_dropin_continuation``), events handed out
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
from collections.abc import Coroutine, Mapping
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar, Unpack, overload

from openai.types.responses import Response, ResponseStreamEvent

from .._config import ChainConfig
from .._results import ChainResponse
from ._call_options import CallKeywords
from ._dropin_args import CHAIN_OPTIONS, check_keywords
from ._dropin_continuation import check_divergence
from ._dropin_errors import SdkErrors
from ._endpoint import Endpoint
from ._responses_endpoint import RESPONSES
from ._responses_events import ResponsesEventer
from ._responses_stream import AsyncResponsesDropInStream, ResponsesDropInStream, traced_response
from ._sdk_stream import AsyncChainEvents, ChainEvents, StreamFeed

__all__ = ["AsyncChainResponses", "ChainResponses"]

_Whole_co = TypeVar("_Whole_co", covariant=True)
_Stream_co = TypeVar("_Stream_co", covariant=True)
_Either_co = TypeVar("_Either_co", covariant=True)


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
        self, endpoint: Endpoint[Any], request: Mapping[str, Any], **options: Unpack[CallKeywords]
    ) -> _Stream_co: ...
    def complete_request(
        self, endpoint: Endpoint[Any], request: Mapping[str, Any], **options: Unpack[CallKeywords]
    ) -> _Whole_co: ...


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------


def _split(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Refuse unknown names; take the chain's own options out of ``kwargs`` and return them."""
    from openai.resources.responses import Responses  # noqa: PLC0415 - loaded on first use

    check_keywords(kwargs, Responses.create)
    return {name: kwargs.pop(name) for name in CHAIN_OPTIONS if name in kwargs}


# --------------------------------------------------------------------------------------------
# chain.responses
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class _Call:
    """One ``create()`` call, planned before anything is sent (no I/O)."""

    request: dict[str, Any]
    options: dict[str, Any]
    errors: SdkErrors
    feed: StreamFeed[ResponseStreamEvent] | None  # None: not streamed


def _plan(config: ChainConfig, kwargs: dict[str, Any]) -> _Call:
    """Check ``create()``'s arguments and split them: the request, the chain's options."""
    divergence = check_divergence(kwargs.pop("on_divergence", "raise"))
    stream = kwargs.pop("stream", None)
    options = _split(kwargs)
    request = dict(kwargs)
    if request.get("model") is None:
        request.pop("model", None)
    errors = SdkErrors(str(config.openai.base_url), "responses")
    if not stream:
        return _Call(request, options, errors, None)
    eventer = ResponsesEventer(request.get("model") or config.openai.model, divergence=divergence)
    return _Call(request, options, errors, StreamFeed(eventer, errors))


_T = TypeVar("_T")
_Awaited = Coroutine[Any, Any, _T]
_AsyncStream = AsyncResponsesDropInStream
_AsyncCreate = _Create[
    _Awaited[Response], _Awaited[_AsyncStream], _Awaited[Response | _AsyncStream]
]
"""The async surface's ``create()``: the SDK's overloads, each awaited."""


class ChainResponses:
    """``chain.responses`` of a :class:`~fallbackchain.FallbackChain`."""

    def __init__(self, chain: _Chain[ChainResponse, ChainEvents], config: ChainConfig) -> None:
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
                return traced_response(answer)
            events = self._chain.stream_request(RESPONSES, call.request, **call.options)
            return ResponsesDropInStream(events, call.feed).started()

    if TYPE_CHECKING:  # the SDK's overloads; the body above is checked as _create
        create: _Create[Response, ResponsesDropInStream, Response | ResponsesDropInStream]
    else:
        create = _create


class AsyncChainResponses:
    """``chain.responses`` of an :class:`~fallbackchain.AsyncFallbackChain`."""

    def __init__(
        self, chain: _Chain[_Awaited[ChainResponse], AsyncChainEvents], config: ChainConfig
    ) -> None:
        self._chain = chain
        self._config = config

    async def _create(self, **kwargs: Any) -> Response | AsyncResponsesDropInStream:
        """As :meth:`ChainResponses.create`, awaited; a stream is an async one."""
        call = _plan(self._config, kwargs)
        with call.errors:
            if call.feed is None:
                answer = await self._chain.complete_request(RESPONSES, call.request, **call.options)
                return traced_response(answer)
            events = self._chain.stream_request(RESPONSES, call.request, **call.options)
            return await AsyncResponsesDropInStream(events, call.feed).started()

    if TYPE_CHECKING:  # the SDK's overloads, awaited
        create: _AsyncCreate
    else:
        create = _create
