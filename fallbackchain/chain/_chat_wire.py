"""One chat attempt sent with the SDK and read as the provider sent it (JSON, not SDK models).

The SDK still does everything but build its models: it sends the request, raises its status
errors, reads the body, decodes a stream's server-sent events (an ``error`` event is its
``APIError``, a broken or stalled read its ``APIConnectionError`` / ``APITimeoutError``) and
closes the response. The chain asks its raw response for JSON (``with_raw_response`` and
``parse(to=...)``, as the SDK documents them), because building the models is most of the
SDK's CPU: about three quarters per streamed chunk, where the chain reads a few keys of each
chunk and validates one ``ChatCompletion`` at the end. A whole answer is validated with
pydantic (several times faster than the SDK's recursive construction), and built the SDK's
lenient way when it does not validate, so a provider's odd but usable answer reads as
``create()`` would read it.

A client without ``with_raw_response`` (a stand-in or a wrapper that provides ``create()``
alone) is called with ``create()``, and its stream's items are handed on as dicts
(``model_dump()``), so it works as before at the SDK's cost.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import openai

from .._completion_json import completion_from_json

__all__ = ["acreate", "create"]


def create(client: openai.OpenAI, kwargs: dict[str, Any]) -> Any:
    """Send one attempt: a stream of chunks as sent (dicts), or a whole ``ChatCompletion``."""
    completions = client.chat.completions
    raw_api = getattr(completions, "with_raw_response", None)
    if raw_api is None:
        answer = completions.create(**kwargs)
        return _Dumped(answer) if kwargs["stream"] else answer
    raw = raw_api.create(**kwargs)
    if kwargs["stream"]:
        return raw.parse(to=openai.Stream[object])
    return _completion(raw.parse(to=object), raw.request_id)


async def acreate(client: openai.AsyncOpenAI, kwargs: dict[str, Any]) -> Any:
    """:func:`create` with the async client."""
    completions = client.chat.completions
    raw_api = getattr(completions, "with_raw_response", None)
    if raw_api is None:
        answer = await completions.create(**kwargs)
        return _AsyncDumped(answer) if kwargs["stream"] else answer
    raw = await raw_api.create(**kwargs)
    if kwargs["stream"]:
        return raw.parse(to=openai.AsyncStream[object])
    return _completion(raw.parse(to=object), raw.request_id)


def _completion(data: object, request_id: str | None) -> object:
    """A whole answer's JSON as a ``ChatCompletion``; anything else as it came.

    ``check`` refuses what is not a completion. A body whose Content-Type does not say JSON
    comes as text, and is read as JSON if it is (the SDK does so for a model type). The
    completion keeps the response's ``x-request-id`` as ``_request_id``, as the SDK's does.
    """
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except ValueError:
            return data
    if not isinstance(data, dict):
        return data
    completion = completion_from_json(data)
    completion._request_id = request_id
    return completion


def _as_sent(item: Any) -> Any:
    dump = getattr(item, "model_dump", None)
    return item if dump is None else dump()


class _Wrapped:
    """A stream of SDK chunk models (from ``create()``); its ``response`` is the stream's."""

    __slots__ = ("_stream",)

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    @property
    def response(self) -> Any:
        return self._stream.response


class _Dumped(_Wrapped):
    """A sync stream handing on each chunk model as a dict.

    Entering, leaving and closing are the wrapped stream's own.
    """

    __slots__ = ()

    def __iter__(self) -> Iterator[Any]:
        return (_as_sent(item) for item in self._stream)

    def close(self) -> None:
        self._stream.close()

    def __enter__(self) -> _Dumped:
        self._stream.__enter__()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self._stream.__exit__(*exc_info)


class _AsyncDumped(_Wrapped):
    """:class:`_Dumped` for an async stream (``close()`` is awaited, as the SDK's is)."""

    __slots__ = ()

    async def __aiter__(self) -> AsyncIterator[Any]:
        async for item in self._stream:
            yield _as_sent(item)

    async def close(self) -> None:
        await self._stream.close()

    async def __aenter__(self) -> _AsyncDumped:
        await self._stream.__aenter__()
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        await self._stream.__aexit__(*exc_info)
