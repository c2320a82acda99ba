"""Drop-in streams: the SDK's ``Stream[ChatCompletionChunk]`` shape over a chain stream.

:class:`DropInStream` and :class:`AsyncDropInStream` only move events from the chain to a
:class:`ChunkFeed`, which holds all the logic (the chunks waiting, the end, the errors):
the two differ only in how they wait for the next event.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final, Protocol, Self, TypeVar

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from .._results import ChainEvent, ChainResponse
from ._dropin_chunks import Chunker
from ._dropin_errors import SdkErrors

__all__ = [
    "AsyncChainEvents",
    "AsyncDropInStream",
    "ChainEvents",
    "ChunkFeed",
    "DropInStream",
    "trace_of",
    "traced",
    "with_trace",
]

TRACE: Final = "_fallbackchain_trace"  # where a returned completion keeps its ChainResponse
# What next()/anext() give at the end of the chain's events: compared by identity only.
_END: Final = ChainEvent("reset", "", "end of the chain's events")

_NO_RESPONSE = (
    "a drop-in stream has no single HTTP response: its answer may be assembled from several "
    "attempts, routes, or the cache. Use fallbackchain.trace_of(stream) after the end for the "
    "source and attempts"
)


class ChainEvents(Protocol):
    """A ``ChainStream`` (structural: ``_chain`` imports the drop-in, not the reverse)."""

    @property
    def response(self) -> ChainResponse: ...
    def __next__(self) -> ChainEvent: ...
    def close(self) -> None: ...


class AsyncChainEvents(Protocol):
    """An ``AsyncChainStream``."""

    @property
    def response(self) -> ChainResponse: ...
    async def __anext__(self) -> ChainEvent: ...
    async def aclose(self) -> None: ...


_C = TypeVar("_C", bound=ChatCompletion)


def with_trace(completion: _C, response: ChainResponse) -> _C:
    """``completion``, on which :func:`trace_of` finds ``response``."""
    # A plain attribute: not a field, so dumps, equality and the SDK shape are unchanged.
    object.__setattr__(completion, TRACE, response)
    return completion


def traced(response: ChainResponse) -> ChatCompletion:
    """A copy of the answer's completion (the cache may hold the original), with its trace."""
    return with_trace(response.completion.model_copy(), response)


class ChunkFeed:
    """The chunks waiting to be yielded, and the end of the stream (sans I/O)."""

    __slots__ = ("_chunker", "_done", "_errors", "_pending")

    def __init__(self, chunker: Chunker, errors: SdkErrors) -> None:
        self._chunker = chunker
        self._pending: deque[ChatCompletionChunk] = deque()
        self._done = False
        self._errors = errors

    def pop(self, stop: type[Exception]) -> ChatCompletionChunk | None:
        """The next chunk; ``None`` when another event is needed; raises ``stop`` at the end."""
        if self._pending:
            return self._pending.popleft()
        if self._done:
            raise stop
        return None

    def take(self, event: ChainEvent, events: ChainEvents | AsyncChainEvents) -> None:
        """Take the next event, or ``_END`` (the chain's ``response`` is then final)."""
        if event is _END:
            if not self._done:  # else closed meanwhile, from another thread or task
                self._done = True
                self._pending.extend(self._chunker.end(events.response))
        else:
            self._pending.extend(self._chunker.event(event))

    def failed(self) -> SdkErrors:
        """The pull failed: the stream is over; errors are raised as the SDK's too."""
        self._done = True
        return self._errors

    def close(self) -> None:
        self._done = True
        self._pending.clear()


class DropInStream:
    """What ``create(stream=True)`` returns: iterate it for ``ChatCompletionChunk`` objects.

    Behaves like the SDK's ``Stream[ChatCompletionChunk]``: iteration, ``close()``, ``with``.
    The request is under way when ``create()`` returns (an error before any answer is raised
    there). May raise :class:`StreamDivergedError` (see ``on_divergence``) or any error the
    chain raises, such as :class:`~fallbackchain.AllTiersFailedError` (also an
    ``openai.APIError``). ``.response`` (the SDK's httpx response) raises
    ``NotImplementedError``: the answer may not come from one HTTP response.
    """

    def __init__(self, events: ChainEvents, feed: ChunkFeed) -> None:
        self._events = events
        self._feed = feed

    def started(self) -> Self:
        """Sent now, as the SDK does: an error before any answer is raised here."""
        self._pull()
        return self

    def _pull(self) -> None:
        try:
            self._feed.take(next(self._events, _END), self._events)
        except BaseException:
            self._events.close()  # release the connection now, whatever the error
            with self._feed.failed():
                raise

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return self

    def __next__(self) -> ChatCompletionChunk:
        while (chunk := self._feed.pop(StopIteration)) is None:
            self._pull()
        return chunk

    def close(self) -> None:
        """Stop early and release the connection; neutral for the breakers."""
        self._feed.close()
        self._events.close()

    @property
    def response(self) -> Any:
        """Not supported: see the class docstring."""
        raise NotImplementedError(_NO_RESPONSE)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncDropInStream:
    """The asyncio twin of :class:`DropInStream`: ``async for``, ``await close()``, ``async with``.

    ``aclose()`` is ``close()``, as on the SDK's ``AsyncStream``.
    """

    def __init__(self, events: AsyncChainEvents, feed: ChunkFeed) -> None:
        self._events = events
        self._feed = feed

    async def started(self) -> Self:
        """Sent now, as the SDK does: an error before any answer is raised here."""
        await self._pull()
        return self

    async def _pull(self) -> None:
        try:
            self._feed.take(await anext(self._events, _END), self._events)
        except BaseException:
            await self._events.aclose()  # release the connection now, whatever the error
            with self._feed.failed():
                raise

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        while (chunk := self._feed.pop(StopAsyncIteration)) is None:
            await self._pull()
        return chunk

    async def close(self) -> None:
        """Stop early and release the connection; neutral for the breakers."""
        self._feed.close()
        await self._events.aclose()

    aclose = close

    @property
    def response(self) -> Any:
        """Not supported: see :class:`DropInStream`."""
        raise NotImplementedError(_NO_RESPONSE)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


def trace_of(answer: object) -> ChainResponse | None:
    """The :class:`ChainResponse` behind a drop-in answer, or ``None`` for anything else.

    ``answer`` is a ``ChatCompletion`` that ``chain.chat.completions.create()`` (or
    ``parse()``) returned, a ``Response`` that ``chain.responses.create()`` returned, or a
    drop-in stream of either iterated to its end (before the end this raises
    :class:`~fallbackchain.StreamNotFinishedError`). An answer from a plain openai client
    gives ``None``.
    """
    if isinstance(answer, DropInStream | AsyncDropInStream):
        return answer._events.response
    trace = getattr(answer, TRACE, None)  # also a Responses drop-in answer or stream
    return trace if isinstance(trace, ChainResponse) else None
