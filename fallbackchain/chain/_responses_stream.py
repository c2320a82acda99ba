"""The drop-in Responses streams: what ``chain.responses.create(stream=True)`` returns.

:class:`ResponsesDropInStream` (sync) and :class:`AsyncResponsesDropInStream` behave like the
SDK's ``Stream[ResponseStreamEvent]`` / ``AsyncStream``. Both are thin drivers over one
sans-I/O :class:`ResponsesFeed` (the events waiting to be yielded, turned from the chain's by
a :class:`~fallbackchain.chain.ResponsesEventer`): each pull is one line, sync or awaited.

``trace_of(stream)`` (and of a ``Response`` :func:`traced_response` made) gives the
:class:`~fallbackchain.ChainResponse`, whose ``attempts`` also list where a background stream
was resumed (:func:`with_resumptions`).
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Generic, Self, TypeVar

from openai.types.responses import Response, ResponseStreamEvent

from .._errors import Attempt
from .._results import ChainEvent, ChainResponse
from ._dropin_errors import SdkErrors
from ._dropin_stream import TRACE, AsyncChainEvents, ChainEvents
from ._responses_events import ResponsesEventer
from ._responses_resume import resumptions_of

__all__ = [
    "AsyncResponsesDropInStream",
    "ResponsesDropInStream",
    "ResponsesFeed",
    "traced_response",
    "with_resumptions",
]

_Events = TypeVar("_Events", ChainEvents, AsyncChainEvents)


def with_resumptions(response: ChainResponse) -> ChainResponse:
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


def traced_response(response: ChainResponse) -> Response:
    """A copy of the answer that ``trace_of`` finds ``response`` on."""
    answer: Response = response.completion.model_copy()  # type: ignore[assignment]
    # A plain attribute: not a field, so dumps, equality and the SDK shape are unchanged.
    object.__setattr__(answer, TRACE, with_resumptions(response))
    return answer


class ResponsesFeed:
    """The events waiting to be yielded, and the end of the stream (sans I/O).

    Each pull of a chain event is wrapped in :meth:`pulling` and handed to :meth:`take`
    (``None`` at the end of the chain's events).
    """

    __slots__ = ("_done", "_eventer", "_pending", "errors")

    def __init__(self, eventer: ResponsesEventer, errors: SdkErrors) -> None:
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

    @contextmanager
    def pulling(self) -> Iterator[None]:
        """Around one pull of a chain event.

        An ``AllTiersFailedError`` is raised as the SDK's too; after any failure nothing more
        is yielded.
        """
        with self.errors:
            try:
                yield
            except BaseException:
                self.stop()
                raise

    def take(self, event: ChainEvent | None, events: ChainEvents | AsyncChainEvents) -> None:
        """What the chain's next event (``None``: their end, and ``events.response``) yields."""
        if event is None:
            if not self._done:  # else closed meanwhile, from another thread or task
                self.end(events.response)
        else:
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

    def __init__(self, events: _Events, feed: ResponsesFeed) -> None:
        self._events: _Events = events
        self._feed = feed

    @property
    def _fallbackchain_trace(self) -> ChainResponse:  # the name is TRACE: trace_of reads it
        """What ``trace_of`` gives (``StreamNotFinishedError`` before the end)."""
        return with_resumptions(self._events.response)


class ResponsesDropInStream(_Stream[ChainEvents]):
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
        with self._feed.pulling():
            self._feed.take(next(self._events, None), self._events)

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


class AsyncResponsesDropInStream(_Stream[AsyncChainEvents]):
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
        with self._feed.pulling():
            self._feed.take(await anext(self._events, None), self._events)

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
