"""Drop-in streams: the SDK's ``Stream[ChatCompletionChunk]`` shape over a chain stream.

:class:`DropInStream` and :class:`AsyncDropInStream` are the shared SDK streams
(``_sdk_stream``) for ``ChatCompletionChunk`` items, plus what only chat's has: ``.response``
refused with a reason. :func:`trace_of` finds the ``ChainResponse`` behind any drop-in answer.
"""

from __future__ import annotations

from typing import Any, Final, TypeVar

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from pydantic import BaseModel

from .._results import ChainResponse
from ._sdk_stream import AsyncSdkStream, SdkStream

__all__ = [
    "AsyncDropInStream",
    "DropInStream",
    "trace_of",
    "traced",
    "with_trace",
]

# Where a drop-in answer keeps its ChainResponse; a stream's is a property of that name.
TRACE: Final = "_fallbackchain_trace"

_NO_RESPONSE = (
    "a drop-in stream has no single HTTP response: its answer may be assembled from several "
    "attempts, routes, or the cache. Use fallbackchain.trace_of(stream) after the end for the "
    "source and attempts"
)

_Answer = TypeVar("_Answer", bound=BaseModel)


def with_trace(answer: _Answer, response: ChainResponse) -> _Answer:
    """``answer`` (a completion or a ``Response``), on which :func:`trace_of` finds ``response``."""
    # A plain attribute: not a field, so dumps, equality and the SDK shape are unchanged.
    object.__setattr__(answer, TRACE, response)
    return answer


def traced(response: ChainResponse) -> ChatCompletion:
    """A copy of the answer's completion (the cache may hold the original), with its trace."""
    return with_trace(response.completion.model_copy(), response)


class DropInStream(SdkStream[ChatCompletionChunk]):
    """What ``create(stream=True)`` returns: iterate it for ``ChatCompletionChunk`` objects.

    Behaves like the SDK's ``Stream[ChatCompletionChunk]``: iteration, ``close()``, ``with``.
    The request is under way when ``create()`` returns (an error before any answer is raised
    there). May raise :class:`StreamDivergedError` (see ``on_divergence``) or any error the
    chain raises, such as :class:`~fallbackchain.AllTiersFailedError` (also an
    ``openai.APIError``). ``.response`` (the SDK's httpx response) raises
    ``NotImplementedError``: the answer may not come from one HTTP response.
    """

    @property
    def response(self) -> Any:
        """Not supported: see the class docstring."""
        raise NotImplementedError(_NO_RESPONSE)


class AsyncDropInStream(AsyncSdkStream[ChatCompletionChunk]):
    """The asyncio twin of :class:`DropInStream`: ``async for``, ``await close()``, ``async with``.

    ``aclose()`` is ``close()``, as on the SDK's ``AsyncStream``.
    """

    @property
    def response(self) -> Any:
        """Not supported: see :class:`DropInStream`."""
        raise NotImplementedError(_NO_RESPONSE)


def trace_of(answer: object) -> ChainResponse | None:
    """The :class:`ChainResponse` behind a drop-in answer, or ``None`` for anything else.

    ``answer`` is a ``ChatCompletion`` that ``chain.chat.completions.create()`` (or
    ``parse()``) returned, a ``Response`` that ``chain.responses.create()`` returned, or a
    drop-in stream of either iterated to its end (before the end this raises
    :class:`~fallbackchain.StreamNotFinishedError`). An answer from a plain openai client
    gives ``None``.
    """
    trace = getattr(answer, TRACE, None)  # a stream's is a property (SdkStream)
    return trace if isinstance(trace, ChainResponse) else None
