"""Resumption: a dropped background response stream goes on where it stopped.

A background response (``background=True``, stored) keeps running on the provider when its
stream drops; ``responses.retrieve(id, stream=True, starting_after=N)`` streams its events
after sequence number ``N``. :class:`ResumingStream` (sync) and :class:`AsyncResumingStream`
wrap the SDK's stream of such a request and do exactly that:

* when the connection drops (refused, reset, cut mid-body) or the stream ends without a
  terminal event (``response.completed``, ``response.incomplete``,
  ``response.failed``, ``error``) after ``response.created`` named the response, they call
  ``retrieve`` with the last sequence number seen and go on reading: no new generation, no
  second bill;
* each event is yielded once: a resumed stream's events at or below the last sequence number
  already yielded are skipped;
* before the first event of a resumed connection they yield a :class:`Resumed` marker (the
  assembler records it; nothing is shown), so the trace can say what happened;
* a read that timed out is not resumed: it already used the chain's ``idle_timeout``, so
  the chain ends the attempt for it (and falls back, as for chat);
* when the provider cannot resume (``retrieve`` fails), the drop is raised as the chain's
  error saying so (``"...; could not resume (HTTP 404)"``); when :data:`MAX_RESUMES`
  resumptions in a row bring nothing new, the last failure is raised as it came. Either way
  the chain treats the attempt as failed and falls back to a fresh request, as for any
  dropped stream.

Closing the wrapper closes the stream being read and stops any resumption. Closing it before a
terminal event (the chain abandoned the attempt: a failure it could not resume, a stall, a lost
hedge race, a consumer who stopped reading) also cancels the background response with
``responses.cancel(id)``, best effort and bounded by :data:`CANCEL_TIMEOUT`: a background
response left running would go on generating, and billing, for nobody.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Generic, Self, TypeVar

import openai

from .._errors import (
    TierError,
    TruncatedStreamError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
    map_error,
)

__all__ = [
    "CANCEL_TIMEOUT",
    "MAX_RESUMES",
    "TERMINAL_EVENTS",
    "AsyncResumingStream",
    "Resumed",
    "ResumingStream",
    "mark_resumptions",
    "not_resumed",
    "resumptions_of",
]

CANCEL_TIMEOUT: Final = 2.0
"""Seconds a ``responses.cancel`` of an abandoned background response may take."""

MAX_RESUMES: Final = 3
"""Resumptions in a row that bring no new event before the stream is given up."""

TERMINAL_EVENTS: Final = frozenset(
    {"response.completed", "response.incomplete", "response.failed", "error"}
)
"""The event types that end a Responses stream."""

_RESUMED: Final = "_fallbackchain_resumed"  # where a final Response keeps its resumptions


@dataclass(frozen=True, slots=True)
class Resumed:
    """One resumption of a background response's stream.

    ``response_id`` and ``after`` (the ``starting_after`` sent) name what was resumed;
    ``error`` is why the stream had to be resumed (the drop, mapped into the chain's tree;
    a :class:`~fallbackchain.TruncatedStreamError` for a stream that ended early).
    """

    response_id: str
    after: int
    error: TierError


def resumptions_of(answer: object) -> tuple[Resumed, ...]:
    """The resumptions behind a streamed ``Response`` (empty when there was none)."""
    found = getattr(answer, _RESUMED, ())
    return found if isinstance(found, tuple) else ()


def mark_resumptions(answer: object, resumptions: list[Resumed]) -> None:
    """Record ``resumptions`` on ``answer`` (for :func:`resumptions_of`); a no-op when none."""
    if resumptions:
        object.__setattr__(answer, _RESUMED, tuple(resumptions))


def not_resumed(error: TierError, exc: BaseException) -> TierError:
    """``error`` (why a stream was to be resumed), saying that resuming it failed with ``exc``.

    The chain then ends the attempt with it and falls back to a fresh request; its text says
    both, by status code or error class (never a server's message).
    """
    if isinstance(exc, openai.APIStatusError):
        why = f"HTTP {exc.status_code}"
    else:
        mapped = map_error(exc, content_seen=True)
        why = mapped.message if mapped is not None else type(exc).__name__
    text = f"{error.message}; could not resume ({why})"
    if isinstance(error, UpstreamConnectionError):
        return UpstreamConnectionError(text)
    return TruncatedStreamError(text)


class _Progress:
    """What both wrappers track: the response, the last sequence number, the resumptions."""

    __slots__ = ("closed", "ended", "last", "response_id", "stalled", "terminal")

    def __init__(self) -> None:
        self.response_id: str | None = None
        self.last: int | None = None
        self.stalled = 0  # resumptions in a row that brought nothing new
        self.closed = False
        self.ended = False  # a terminal event was yielded, or the stream cannot go on
        self.terminal = False  # a terminal event was yielded: the response is over upstream

    def take(self, event: Any) -> tuple[Any, ...]:
        """What to yield of ``event``: itself when new, nothing when already yielded.

        Tracks the response id and the sequence; a terminal event sets :attr:`ended`.
        """
        sequence = getattr(event, "sequence_number", None)
        if isinstance(sequence, int):
            if self.last is not None and sequence <= self.last:
                return ()
            self.last = sequence
        kind = getattr(event, "type", None)
        if kind == "response.created":
            self.response_id = getattr(getattr(event, "response", None), "id", None)
        self.ended = self.terminal = kind in TERMINAL_EVENTS
        self.stalled = 0
        return (event,)

    def after(self, failure: Exception | None) -> Resumed | None:
        """The stream being read stopped: the resumption to make, or ``None`` for the end.

        ``failure``: what stopped it (``None``: it ended, perhaps without a terminal event).
        Raises ``failure`` when it cannot be resumed; after ``None`` :attr:`ended` is set.
        """
        why = None if self.ended else self.why(failure)
        if why is None:
            self.ended = True
            if failure is not None:
                raise failure
            return None
        return self.resumed(why)

    def why(self, failure: BaseException | None) -> TierError | None:
        """The reason to resume after ``failure`` (``None``: a clean early end), or ``None``.

        ``None`` when the stream cannot or must not be resumed: closed by the consumer, no
        response id or sequence number yet, too many fruitless resumptions, or a failure that
        is not a dropped connection (a malformed event, an error of our own).
        """
        if self.closed or self.response_id is None or self.last is None:
            return None
        if self.stalled >= MAX_RESUMES:
            return None
        if failure is None:
            return TruncatedStreamError(
                f"stream ended without a terminal event after sequence number {self.last}"
            )
        mapped = map_error(failure, content_seen=True)
        # A read that timed out already took the chain's whole idle allowance: the chain ends
        # the attempt for it whatever comes next, so a resumption would be a wasted request.
        if isinstance(mapped, UpstreamTimeoutError):
            return None
        return mapped if isinstance(mapped, UpstreamConnectionError) else None

    def abandoned(self) -> str | None:
        """On close: the id of the response to cancel (it was not over), once; else ``None``."""
        response_id = None if self.terminal or self.closed else self.response_id
        self.closed = True
        return response_id

    def resumed(self, error: TierError) -> Resumed:
        """Count one resumption (after :meth:`why` allowed it) and describe it."""
        response_id, last = self.response_id, self.last
        if response_id is None or last is None:  # why() refuses this case
            raise error
        self.stalled += 1
        return Resumed(response_id, last, error)


_Call = TypeVar("_Call", bound=Callable[..., Any])


class _Wrapper(Generic[_Call]):
    """What both wrappers hold: the stream being read, how to resume and cancel, progress."""

    def __init__(self, stream: Any, reopen: _Call, cancel: _Call | None = None) -> None:
        """Wrap ``stream``: ``reopen(id, after)`` streams the rest, ``cancel(id)`` ends it."""
        self._stream = stream
        # The HTTP response that created the answer (its x-request-id is the answer's), as
        # the SDK's stream offers it; a resumption's own responses are not.
        self.response: Any = getattr(stream, "response", None)
        self._reopen = reopen
        self._cancel = cancel
        self._progress = _Progress()


class ResumingStream(_Wrapper[Callable[..., Any]]):
    """The SDK's ``Stream`` of a background response, resumed after a drop (sync)."""

    def __iter__(self) -> Iterator[Any]:
        return self._events()

    def _events(self) -> Iterator[Any]:
        progress = self._progress
        while not progress.ended:
            failure: Exception | None = None
            try:
                for event in self._stream:
                    yield from progress.take(event)
                    if progress.ended:
                        break
            except Exception as exc:  # noqa: BLE001 - mapped; anything else is re-raised
                failure = exc
            if (marker := progress.after(failure)) is not None:
                self._stream.close()
                self._stream = self._resume(marker, failure)
                yield marker

    def _resume(self, marker: Resumed, failure: Exception | None) -> Any:
        try:
            return self._reopen(marker.response_id, marker.after)
        except Exception as exc:  # noqa: BLE001 - the provider cannot resume: the drop stands
            raise not_resumed(marker.error, exc) from (failure or exc)

    def close(self) -> None:
        """Close the stream being read; no resumption after this; cancel an abandoned one."""
        response_id = self._progress.abandoned()
        self._stream.close()
        if response_id is not None and self._cancel is not None:
            with contextlib.suppress(Exception):  # best effort: the answer is not waited for
                self._cancel(response_id)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncResumingStream(_Wrapper[Callable[..., Awaitable[Any]]]):
    """The SDK's ``AsyncStream`` of a background response, resumed after a drop.

    As :class:`ResumingStream`, with ``reopen`` and ``cancel`` awaited.
    """

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._events()

    async def _events(self) -> AsyncIterator[Any]:
        progress = self._progress
        while not progress.ended:
            failure: Exception | None = None
            try:
                async for event in self._stream:
                    for new in progress.take(event):
                        yield new
                    if progress.ended:
                        break
            except Exception as exc:  # noqa: BLE001 - mapped; anything else is re-raised
                failure = exc
            if (marker := progress.after(failure)) is not None:
                await self._stream.close()
                self._stream = await self._resume(marker, failure)
                yield marker

    async def _resume(self, marker: Resumed, failure: Exception | None) -> Any:
        try:
            return await self._reopen(marker.response_id, marker.after)
        except Exception as exc:  # noqa: BLE001 - the provider cannot resume: the drop stands
            raise not_resumed(marker.error, exc) from (failure or exc)

    async def close(self) -> None:
        """Close the stream being read; no resumption after this; cancel an abandoned one."""
        response_id = self._progress.abandoned()
        await self._stream.close()
        if response_id is not None and self._cancel is not None:
            with contextlib.suppress(Exception):  # best effort: the answer is not waited for
                await self._cancel(response_id)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
