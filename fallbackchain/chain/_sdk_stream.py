"""The openai SDK's ``Stream`` / ``AsyncStream`` shape over a chain's events, for any item type.

Both drop-in surfaces stream this way: chat (``ChatCompletionChunk``) and the Responses API
(its typed events). A sans-I/O :class:`StreamFeed` holds the logic (the items waiting, the
end, a failure); :class:`SdkStream` and :class:`AsyncSdkStream` only move the chain's events
to it, and differ only in how they wait for the next one. Each surface subclasses the two
streams for its item type and adds what only it has.
"""

from __future__ import annotations

from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Generic, Protocol, Self, TypeVar

from .._results import ChainEvent, ChainResponse
from ._dropin_errors import SdkErrors

__all__ = [
    "AsyncChainEvents",
    "AsyncSdkStream",
    "ChainEvents",
    "ItemMaker",
    "SdkStream",
    "StreamFeed",
]

_Item = TypeVar("_Item")


class ChainEvents(Protocol):
    """A ``ChainStream`` (structural: the chain imports the drop-ins, not the reverse)."""

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


class ItemMaker(Protocol[_Item]):
    """What turns one request's chain events into the items a stream yields."""

    def event(self, event: ChainEvent) -> list[_Item]:
        """The items for one chain event (maybe none)."""
        ...

    def end(self, response: ChainResponse) -> list[_Item]:
        """The items that finish the stream; may raise instead (a divergence)."""
        ...


class StreamFeed(Generic[_Item]):
    """The items waiting to be yielded, and the end of the stream (sans I/O)."""

    __slots__ = ("_done", "_errors", "_maker", "_pending")

    def __init__(self, maker: ItemMaker[_Item], errors: SdkErrors) -> None:
        self._maker = maker
        self._pending: deque[_Item] = deque()
        self._done = False
        self._errors = errors

    def pop(self, stop: type[Exception]) -> _Item | None:
        """The next item; ``None`` when another event is needed; raises ``stop`` at the end."""
        if self._pending:
            return self._pending.popleft()
        if self._done:
            raise stop
        return None

    def take(self, event: ChainEvent | None, events: ChainEvents | AsyncChainEvents) -> None:
        """Take the next event, or ``None`` at their end (``events.response`` is then final)."""
        if event is None:
            if not self._done:  # else closed meanwhile, from another thread or task
                self._done = True
                self._pending.extend(self._maker.end(events.response))
        else:
            self._pending.extend(self._maker.event(event))

    def failed(self) -> SdkErrors:
        """The pull failed: nothing more is yielded; errors are raised as the SDK's too."""
        self.close()
        return self._errors

    def close(self) -> None:
        self._done = True
        self._pending.clear()


_Events = TypeVar("_Events", ChainEvents, AsyncChainEvents)


class _Stream(Generic[_Events, _Item]):
    """What both streams hold: the chain's events and the feed; the trace behind them."""

    def __init__(self, events: _Events, feed: StreamFeed[_Item]) -> None:
        self._events: _Events = events
        self._feed = feed

    @property
    def _fallbackchain_trace(self) -> ChainResponse:  # trace_of reads it (_dropin_stream.TRACE)
        """What ``trace_of`` gives (``StreamNotFinishedError`` before the end)."""
        return self._events.response


class SdkStream(_Stream[ChainEvents, _Item]):
    """The SDK's ``Stream[_Item]``: iteration, ``close()``, ``with``.

    The request is under way once :meth:`started` returns (an error before any answer is
    raised there). After any error nothing more is yielded and the connection is released.
    """

    def started(self) -> Self:
        """Sent now, as the SDK does: an error before any answer is raised here."""
        self._pull()
        return self

    def _pull(self) -> None:
        try:
            self._feed.take(next(self._events, None), self._events)
        except BaseException:
            self._events.close()  # release the connection now, whatever the error
            with self._feed.failed():
                raise

    def __iter__(self) -> Iterator[_Item]:
        return self

    def __next__(self) -> _Item:
        while (item := self._feed.pop(StopIteration)) is None:
            self._pull()
        return item

    def close(self) -> None:
        """Stop early and release the connection; neutral for the breakers."""
        self._feed.close()
        self._events.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncSdkStream(_Stream[AsyncChainEvents, _Item]):
    """The SDK's ``AsyncStream[_Item]``: ``async for``, ``await close()``, ``async with``.

    ``aclose()`` is ``close()``, as on the SDK's ``AsyncStream``.
    """

    async def started(self) -> Self:
        """Sent now, as the SDK does: an error before any answer is raised here."""
        await self._pull()
        return self

    async def _pull(self) -> None:
        try:
            self._feed.take(await anext(self._events, None), self._events)
        except BaseException:
            await self._events.aclose()  # release the connection now, whatever the error
            with self._feed.failed():
                raise

    def __aiter__(self) -> AsyncIterator[_Item]:
        return self

    async def __anext__(self) -> _Item:
        while (item := self._feed.pop(StopAsyncIteration)) is None:
            await self._pull()
        return item

    async def close(self) -> None:
        """Stop early and release the connection; neutral for the breakers."""
        self._feed.close()
        await self._events.aclose()

    aclose = close

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
