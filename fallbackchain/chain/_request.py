"""One request, prepared once before anything is sent: its endpoint, body, cache key and options.

Shared by both drivers and the core. :func:`prepare` checks the caller's arguments (the
endpoint refuses what its API cannot take) and computes the cache key; :meth:`Request.kwargs`
gives one attempt's arguments for the SDK; :class:`ResponseSlot` is where the answer lands.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, NamedTuple

import httpx2

from .._results import ChainResponse
from ._call_options import CallOptions, call_timeout
from ._endpoint import Endpoint
from ._steps import Tier

__all__ = ["Request", "ResponseSlot", "prepare"]

logger = logging.getLogger("fallbackchain")


# A NamedTuple, not a frozen dataclass: import time (CONTRIBUTING.md).
class Request(NamedTuple):
    """A request as the chain runs it (immutable; one per ``stream()`` / ``complete()``)."""

    endpoint: Endpoint[Any]
    body: Mapping[str, Any]
    """The caller's request as the endpoint takes it: ``model`` set, no ``timeout``."""
    model: str
    key: str | None
    """The cache key (``None``: the request cannot be cached)."""
    timeout: float | None = None
    """A per-call ``timeout=``: bounds each attempt's connect and every wait for data."""
    whole_first: bool = False
    """``complete()`` with ``openai.complete_streams = false``: whole completions first."""
    options: CallOptions | None = None
    """This call's own deadline, budget, cache use and routes (``None``: the config's)."""

    @property
    def reads_cache(self) -> bool:
        return self.options is None or self.options.cache == "use"

    @property
    def writes_cache(self) -> bool:
        return self.options is None or self.options.cache != "off"

    def kwargs(self, tier: Tier, *, streaming: bool, read: float) -> dict[str, Any]:
        """The SDK arguments of one attempt at ``tier``; ``read``: how long a read may wait."""
        kwargs = self.endpoint.kwargs(
            self.body,
            model=tier.model or self.model,
            streaming=streaming,
            stream_usage=tier.route.stream_usage,
        )
        # connect, write and pool waits: no longer than a read may wait (so never past the
        # deadline either), nor than the route's timeout or the call's own
        read = max(read, 0.001)
        bound = tier.route.timeout
        if self.timeout is not None:
            bound = min(bound, self.timeout)
        # all four given: httpx's other branch checks a runtime Protocol (~4 µs per request)
        other = min(bound, read)
        kwargs["timeout"] = httpx2.Timeout(connect=other, read=read, write=other, pool=other)
        return kwargs


def prepare(
    endpoint: Endpoint[Any],
    request: Mapping[str, Any],
    *,
    default_model: str,
    whole_first: bool = False,
    options: CallOptions | None = None,
    keyed: bool = True,
) -> Request:
    """Check ``request`` and prepare it; raises what :meth:`Endpoint.validate` raises.

    ``keyed=False``: no cache key (``key`` is ``None``): nothing will read or write the cache.
    """
    body = dict(request)
    body["model"] = model = body.get("model") or default_model
    timeout = call_timeout(body.pop("timeout", None))
    endpoint.validate(body)
    key: str | None = None
    try:
        if keyed:
            key = endpoint.cache_key(body)
    except TypeError:  # a value with no JSON form: answer live, never cache it
        logger.warning("request cannot be cached: a parameter has no JSON form")
        key = None
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug("request %s %s %r", endpoint.name, (key or "-")[:16], body)
    return Request(endpoint, body, model, key, timeout, whole_first, options)


class ResponseSlot:
    """Where a request's flow leaves its :class:`ChainResponse` once it has one.

    The stream object reads it (``response``); ``endpoint`` is the API the request is for.
    """

    __slots__ = ("cancelled", "endpoint", "reading", "response")

    def __init__(self, endpoint: Endpoint[Any]) -> None:
        self.endpoint = endpoint
        self.response: ChainResponse | None = None
        # Set by a close() from another thread or task while the driver is reading: the
        # driver ends the request (neutral) and iteration stops, as the SDK's streams do.
        self.cancelled = False
        self.reading: Any = None  # the upstream stream being read, closed by such a close()

    def cancel(self) -> Any:
        """A close() from another thread or task: mark it; the upstream stream to close, if any."""
        self.cancelled = True
        return self.reading
