"""``with_raw_response`` and ``with_streaming_response`` on the drop-in, as far as honest.

The SDK's raw response is one HTTP response: its headers, status and body. A chain's answer
may be assembled from several attempts, come from another route, or from the cache, and the
chain's public API does not keep any attempt's headers. So:

* ``chain.chat.completions.with_raw_response.create(...)`` (and ``.parse(...)``) works for
  code that only calls ``.parse()`` on the result: it gives what ``create()`` would (a
  ``ChatCompletion`` or a drop-in stream, with its trace). Everything about the HTTP response
  (``headers``, ``status_code``, ``http_response``, ``text()``, ...) raises
  ``NotImplementedError`` naming :func:`~fallbackchain.trace_of`, rather than invent values;
* ``with_streaming_response`` (the raw body, read lazily) raises ``NotImplementedError``.
"""

from __future__ import annotations

from typing import Any, Final, Generic, NoReturn, TypeVar

__all__ = ["AsyncRawCompletions", "DropInRawResponse", "RawCompletions", "no_streaming_response"]

_T = TypeVar("_T")

_HTTP_PARTS: Final = frozenset(
    {
        "content",
        "elapsed",
        "headers",
        "http_request",
        "http_response",
        "http_version",
        "is_closed",
        "iter_bytes",
        "iter_lines",
        "iter_text",
        "json",
        "method",
        "read",
        "request_id",
        "retries_taken",
        "status_code",
        "text",
        "url",
    }
)
"""What the SDK's raw response offers about the HTTP response itself."""

_WHY = (
    "a fallbackchain answer has no single HTTP response (it may be assembled from several "
    "attempts, come from another route or from the cache), so {what} is not available; "
    "use fallbackchain.trace_of(answer) for its source and attempts"
)


class DropInRawResponse(Generic[_T]):
    """What ``with_raw_response.create()`` returns: ``.parse()`` gives the answer.

    The HTTP parts of the SDK's raw response raise ``NotImplementedError`` (see the module
    docstring).
    """

    def __init__(self, answer: _T) -> None:
        self._answer = answer

    def parse(self) -> _T:
        """What ``create()`` would have returned: a ``ChatCompletion`` or a drop-in stream."""
        return self._answer

    def __getattr__(self, name: str) -> NoReturn:
        if name in _HTTP_PARTS:
            raise NotImplementedError(_WHY.format(what=f"the raw response's .{name}"))
        raise AttributeError(name)


class RawCompletions:
    """``chain.chat.completions.with_raw_response``."""

    def __init__(self, completions: Any) -> None:
        self._completions = completions

    def create(self, **kwargs: Any) -> DropInRawResponse[Any]:
        """As ``chain.chat.completions.create(...)``, wrapped."""
        return DropInRawResponse(self._completions.create(**kwargs))

    def parse(self, **kwargs: Any) -> DropInRawResponse[Any]:
        """As ``chain.chat.completions.parse(...)``, wrapped."""
        return DropInRawResponse(self._completions.parse(**kwargs))


class AsyncRawCompletions:
    """``chain.chat.completions.with_raw_response`` of an ``AsyncFallbackChain``."""

    def __init__(self, completions: Any) -> None:
        self._completions = completions

    async def create(self, **kwargs: Any) -> DropInRawResponse[Any]:
        """As ``await chain.chat.completions.create(...)``, wrapped."""
        return DropInRawResponse(await self._completions.create(**kwargs))

    async def parse(self, **kwargs: Any) -> DropInRawResponse[Any]:
        """As ``await chain.chat.completions.parse(...)``, wrapped."""
        return DropInRawResponse(await self._completions.parse(**kwargs))


def no_streaming_response() -> NoReturn:
    """``with_streaming_response``: refused, see the module docstring."""
    raise NotImplementedError(_WHY.format(what="with_streaming_response (the raw HTTP body)"))
