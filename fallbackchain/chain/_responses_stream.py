"""The drop-in Responses streams: what ``chain.responses.create(stream=True)`` returns.

:class:`ResponsesDropInStream` (sync) and :class:`AsyncResponsesDropInStream` behave like the
SDK's ``Stream[ResponseStreamEvent]`` / ``AsyncStream``: they are the shared SDK streams
(``_sdk_stream``) for the typed events a ``ResponsesEventer`` makes.

``trace_of(stream)`` (and of a ``Response`` :func:`traced_response` made) gives the
:class:`~fallbackchain.ChainResponse`, whose ``attempts`` also list where a background stream
was resumed (:func:`with_resumptions`).
"""

from __future__ import annotations

import dataclasses

from openai.types.responses import Response, ResponseStreamEvent

from .._errors import Attempt
from .._results import ChainResponse
from ._dropin_stream import with_trace
from ._responses_resume import resumptions_of
from ._sdk_stream import AsyncSdkStream, SdkStream

__all__ = [
    "AsyncResponsesDropInStream",
    "ResponsesDropInStream",
    "traced_response",
    "with_resumptions",
]


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
    return with_trace(answer, with_resumptions(response))


class ResponsesDropInStream(SdkStream[ResponseStreamEvent]):
    """What ``responses.create(stream=True)`` returns: iterate it for the SDK's typed events.

    Behaves like the SDK's ``Stream[ResponseStreamEvent]``: iteration, ``close()``, ``with``.
    The request is under way when ``create()`` returns (an error before any answer is raised
    there). May raise :class:`~fallbackchain.StreamDivergedError` (see ``on_divergence``) or
    any error the chain raises, such as :class:`~fallbackchain.AllTiersFailedError`.
    """

    @property
    def _fallbackchain_trace(self) -> ChainResponse:
        """What ``trace_of`` gives: with where the stream was resumed (after the end)."""
        return with_resumptions(self._events.response)


class AsyncResponsesDropInStream(AsyncSdkStream[ResponseStreamEvent]):
    """The asyncio twin of :class:`ResponsesDropInStream` (``async for``, ``await close()``)."""

    @property
    def _fallbackchain_trace(self) -> ChainResponse:
        """As :class:`ResponsesDropInStream`'s."""
        return with_resumptions(self._events.response)
