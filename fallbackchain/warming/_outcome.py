"""One prompt sent through the chain, and what its outcome means for the run.

What a caller can rely on:

* **Only live answers count.** A prompt is *warmed* when a live tier answered it (and the chain
  wrote the answer through). An answer served from the cache, :class:`AllTiersFailedError`, an
  API rejection (``openai.BadRequestError`` and the like) or any other error makes that send a
  failure with a one-line message; :func:`ask` and :func:`ask_async` never raise for one prompt.
* **Nothing gets worse.** With ``refresh`` a new answer cut short (``finish_reason ==
  "length"``) never replaces a cached answer that was not: the old entry is put back with its
  original age and the send counts as failed.
* **Each API through its own door.** A chat prompt goes through ``chain.complete``; a Responses
  one through ``chain.responses.create``, under the key that call reads
  (:func:`request_key`), its ``Response`` stored as the chain stores it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import openai
from openai.types.chat import ChatCompletion

from .._errors import AllTiersFailedError, FallbackChainError
from .._results import Attempt, ChainResponse
from ..cache import CachedAnswer
from ..chain import CHAT, RESPONSES, Endpoint, FallbackChain, trace_of
from ._prompts import WarmRequest

if TYPE_CHECKING:
    from ..chain import AsyncFallbackChain  # the async driver loads on first use

__all__ = ["Prompt", "SendResult", "ask", "ask_async", "request_key"]

_log = logging.getLogger("fallbackchain.warm")


@dataclass(slots=True)
class Prompt:
    """One prompt of a run: its request, its cache key once known, and what happened so far.

    ``old`` is the answer cached before the run (sent anyway only with ``refresh``); ``tries``
    counts its sends, outage retries included.
    """

    request: WarmRequest
    key: str | None = None
    looked_up: bool = False
    old: CachedAnswer | None = None
    tries: int = 0


@dataclass(frozen=True, slots=True)
class SendResult:
    """What one send of a prompt came to.

    ``client_error``: the request itself was refused (retrying it cannot help);
    ``downgraded``: the new answer was worse than the cached one, which was kept.
    """

    warmed: bool
    tokens: int = 0
    message: str | None = None
    attempts: tuple[Attempt, ...] = ()
    client_error: bool = False
    downgraded: bool = False


def _endpoint(request: WarmRequest) -> Endpoint[Any]:
    return RESPONSES if request.api == "responses" else CHAT


def request_key(chain: FallbackChain | AsyncFallbackChain, request: WarmRequest) -> str | None:
    """The cache key ``chain`` reads for ``request`` (``None``: it cannot be cached).

    For a Responses request, the key ``chain.responses.create(**request.params)`` reads. Raises
    what preparing the request raises (:class:`TypeError`, :class:`ValueError`).
    """
    if request.api == "responses":
        return chain.request_key(RESPONSES, request.params)
    return chain.cache_key(request.messages, request.model, **request.options)


def _traced(answer: object) -> ChainResponse:
    trace = trace_of(answer)
    if trace is None:  # pragma: no cover - chain.responses always attaches its trace
        raise TypeError(f"no trace on {type(answer).__name__}")
    return trace


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _failed_attempts(attempts: Sequence[Attempt]) -> str:
    return "; ".join(f"{a.tier}: {a.error}" for a in attempts if a.error) or "no attempt"


def _rank(completion: ChatCompletion) -> int:
    """2 for an answer that ended on its own, 1 when any choice was cut short by a limit."""
    return 1 if any(c.finish_reason == "length" for c in completion.choices) else 2


def _from_response(
    response: ChainResponse, old: CachedAnswer | None, request: WarmRequest
) -> SendResult:
    if response.source == "cache":
        return SendResult(
            False,
            message="live tiers failed, so the chain answered from the cache and nothing was "
            f"refreshed ({_short(_failed_attempts(response.attempts))})",
            attempts=response.attempts,
        )
    usage = response.completion.usage
    tokens = usage.total_tokens if usage is not None else 0
    stored = _endpoint(request).encode(response.completion)
    if old is not None and _rank(old.completion) > _rank(stored):
        return SendResult(
            False,
            tokens=tokens,
            message="the new answer was cut short (finish_reason 'length'); kept the cached answer",
            attempts=response.attempts,
            downgraded=True,
        )
    return SendResult(True, tokens=tokens, attempts=response.attempts)


def _from_error(exc: Exception) -> SendResult:
    if isinstance(exc, AllTiersFailedError):
        return SendResult(False, message=_short(str(exc)), attempts=exc.attempts)
    if isinstance(exc, openai.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        detail = body.get("message")
        message = detail if isinstance(detail, str) and detail else exc.message
        return SendResult(
            False,
            message=_short(f"rejected by the API: HTTP {exc.status_code}: {message}"),
            client_error=True,
        )
    if isinstance(exc, FallbackChainError | TypeError | ValueError):
        return SendResult(False, message=_short(f"{type(exc).__name__}: {exc}"), client_error=True)
    _log.debug("unexpected error while warming", exc_info=exc)
    return SendResult(False, message=_short(f"unexpected {type(exc).__name__}: {exc}"))


def _restore_if_worse(
    chain: FallbackChain | AsyncFallbackChain, item: Prompt, r: SendResult, response: ChainResponse
) -> SendResult:
    """Put a better cached answer back after a refresh that brought a worse one; returns ``r``.

    A refresh that brought an answer identical to the cached one restamps it: the cache
    would otherwise keep the identical entry with its old age.
    """
    if item.old is None or item.key is None:
        return r
    if r.downgraded:
        chain.cache.put(item.key, item.old.completion, stored_at=item.old.stored_at)
    elif r.warmed:
        chain.cache.put(item.key, _endpoint(item.request).encode(response.completion), rewrite=True)
    return r


def ask(chain: FallbackChain, item: Prompt) -> SendResult:
    """Send ``item`` through ``chain``'s live path, which writes the answer through.

    Never raises an :class:`Exception` for one prompt: every failure is a :class:`SendResult`.
    """
    request = item.request
    try:
        if request.api == "responses":
            response = _traced(chain.responses.create(**request.params))
        else:
            response = chain.complete(request.messages, request.model, **request.options)
    except Exception as exc:  # noqa: BLE001 - one prompt must never end the run
        return _from_error(exc)
    result = _from_response(response, item.old, request)
    return _restore_if_worse(chain, item, result, response)


async def ask_async(chain: AsyncFallbackChain, item: Prompt) -> SendResult:
    """:func:`ask` for an :class:`AsyncFallbackChain` (the cache write runs in a thread)."""
    request = item.request
    try:
        if request.api == "responses":
            response = _traced(await chain.responses.create(**request.params))
        else:
            response = await chain.complete(request.messages, request.model, **request.options)
    except Exception as exc:  # noqa: BLE001 - one prompt must never end the run
        return _from_error(exc)
    result = _from_response(response, item.old, request)
    return await asyncio.to_thread(_restore_if_worse, chain, item, result, response)
