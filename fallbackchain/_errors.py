"""The one exception tree of fallbackchain, and the map from foreign errors into it.

Every error the library raises is a :class:`FallbackChainError`, except the caller's own
mistakes, which propagate unchanged, once, and are never counted by a breaker, because
retrying or falling back cannot fix them:

* a request the primary route rejects (400, 401, 403, 404, 422, context length, content
  policy): the openai SDK's own exception. A *fallback* route's rejection is not the caller's
  mistake but the provider's incompatibility (say, a parameter the primary accepts): see
  :func:`map_rejection`;
* a request the SDK cannot even build, raised before anything is sent (a value with no JSON
  form, a lone surrogate in a string, a closed client): the SDK's ``TypeError``,
  ``ValueError`` or ``RuntimeError``.

::

    FallbackChainError
    ├── ConfigError                      bad config file, key or value (also a ValueError)
    ├── ChainClosedError                 the chain was used after close() (also a RuntimeError)
    ├── AllTiersFailedError              no tier and no cache answered; .attempts lists each
    ├── StreamNotFinishedError           stream.response read before the stream ended
    ├── StreamDivergedError *            a drop-in stream's replacement said something else
    ├── InputFileError *                 a bad line in a prompts or import file (a ValueError)
    ├── TierError                        one attempt at one live tier failed (found in .attempts)
    │   ├── UpstreamStatusError          HTTP 408/409/429/5xx; .status_code, .retry_after
    │   │   ├── RateLimitedError         429
    │   │   │   └── QuotaExceededError   429 insufficient_quota: never retried
    │   │   └── ServerError              5xx
    │   ├── UpstreamConnectionError      connection refused, reset, dropped mid-body
    │   │   └── UpstreamTimeoutError     a read or connect timed out
    │   │       ├── FirstTokenTimeoutError   no content within first_token_timeout
    │   │       └── IdleTimeoutError         a gap between chunks above idle_timeout
    │   ├── DeadlineExceededError        the request's overall live deadline ran out
    │   ├── RouteRejectedError           a fallback route refused a request (400/401/403/404/422)
    │   ├── BreakerOpenError             the tier's circuit breaker refused the attempt
    │   │   └── BreakerBusyError         unproven, its limited slots stayed full while we waited
    │   └── StreamProtocolError          the stream itself was bad
    │       ├── TruncatedStreamError     ended cleanly but without finish_reason (silent truncation)
    │       │   └── ResponseIncompleteError *  a Responses stream ended ``incomplete``
    │       ├── StreamEventError         the server sent an SSE ``error`` event mid-stream
    │       └── MalformedChunkError      a chunk was not valid JSON / not a chunk
    └── CacheError                       the fallback cache could not be used (logged, bypassed)
        ├── CacheCorruptError            unreadable database or row
        └── UnsafeCacheRowError          a row asked to be unpickled: refused

``*``: defined beside the code that raises it (``chain`` for the drop-in and the Responses API,
``cache`` for JSON Lines files) and exported from ``fallbackchain`` like every other.

:class:`Attempt`, the record of one try that ``AllTiersFailedError.attempts`` (and a response's
``attempts``) lists, is defined here too, beside the errors it carries, so that no module of
the package imports this one back (``_results`` re-exports it).

:func:`map_error` turns any foreign exception met on a live attempt (openai, httpx2, json, OS
errors) into the most specific class above, chained ``from`` the original, or returns ``None``
for the caller's mistakes that must propagate unchanged.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import openai

from ._redact import brief_repr, redact

# The exception tree only; Attempt, defined here too, is exported through _results.
__all__ = [
    "AllTiersFailedError",
    "BreakerBusyError",
    "BreakerOpenError",
    "CacheCorruptError",
    "CacheError",
    "ChainClosedError",
    "ConfigError",
    "DeadlineExceededError",
    "FallbackChainError",
    "FirstTokenTimeoutError",
    "IdleTimeoutError",
    "MalformedChunkError",
    "QuotaExceededError",
    "RateLimitedError",
    "RouteRejectedError",
    "ServerError",
    "StreamEventError",
    "StreamNotFinishedError",
    "StreamProtocolError",
    "TierError",
    "TruncatedStreamError",
    "UnsafeCacheRowError",
    "UpstreamConnectionError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
]


class FallbackChainError(Exception):
    """Root of every error fallbackchain raises.

    Every one pickles and unpickles to an equal error (same class, message and attributes),
    so it crosses process boundaries (``multiprocessing``, ``concurrent.futures``) intact.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        # The subclasses' __init__ take other arguments than ``args``: rebuild without it.
        # The state goes third, so pickle restores it after memoising the error: a ConfigError
        # lists itself in ``errors``.
        return (_rebuild, (type(self), self.args), self.__dict__)


def _rebuild(cls: type[FallbackChainError], args: tuple[Any, ...]) -> Any:
    error = cls.__new__(cls, *args)
    error.args = args
    return error


class ConfigError(FallbackChainError, ValueError):
    """A configuration file, key or value is wrong.

    ``file``, ``line``, ``key`` and ``value`` name what is wrong (``None`` where it does not
    apply or is not known); the message always names them. ``value`` is the value as shown:
    credentials masked (``***``), deep structures cut. Secrets are never part of it.

    ``errors`` lists every problem found in one pass (just this error when there is one);
    the message lists them all, one per line, and ``file``/``line``/``key``/``value`` are the
    first one's.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        value: Any = None,
        line: int | None = None,
    ) -> None:
        where = []
        if file is not None:
            where.append(str(file))
        if key is not None:
            where.append(f"key {key!r}")
        prefix = ": ".join(where)
        text = f"{prefix}: {message}" if prefix else message
        shown = None if value is None else redact(value, name=key)
        details = [] if shown is None else [f"got {brief_repr(shown)}"]
        if line is not None and f"line {line}" not in message:
            details.append(f"line {line}")
        if details:
            text += f" ({'; '.join(details)})"
        super().__init__(text)
        self.file = file
        self.line = line
        self.key = key
        self.value = shown
        self.errors: list[ConfigError] = [self]

    @classmethod
    def combine(cls, errors: Sequence[ConfigError]) -> ConfigError:
        """One error reporting all of ``errors`` (which must not be empty), in order."""
        if len(errors) == 1:
            return errors[0]
        first = errors[0]
        head = f"{first.file}: " if first.file is not None else ""
        listed = "\n".join(f"  {error}" for error in errors)
        combined = cls(f"{head}{len(errors)} problems in the config:\n{listed}")
        combined.file, combined.line = first.file, first.line
        combined.key, combined.value = first.key, first.value
        combined.errors = list(errors)
        return combined


class ChainClosedError(FallbackChainError, RuntimeError):
    """The chain was used after ``close()``/``aclose()``: nothing is sent, nothing counted."""


class StreamNotFinishedError(FallbackChainError):
    """``stream.response`` was read before the stream was iterated to its end."""


class TierError(FallbackChainError):
    """One attempt at one live tier failed. ``retryable`` says whether another try may help."""

    retryable: bool = True

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UpstreamStatusError(TierError):
    """The API answered with a retryable HTTP error status."""

    def __init__(
        self,
        message: str,
        *,
        status_code: int,
        retry_after: float | None = None,
        should_retry: bool | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.retry_after = retry_after
        self.code = code
        if should_retry is not None:
            self.retryable = should_retry


class RateLimitedError(UpstreamStatusError):
    """429: the API asked us to slow down."""


class QuotaExceededError(RateLimitedError):
    """429 ``insufficient_quota``: waiting will not help, so the live tiers are skipped."""

    retryable = False


class ServerError(UpstreamStatusError):
    """5xx from the API."""


class UpstreamConnectionError(TierError):
    """The connection failed: refused, reset, or dropped in the middle of a body."""


class UpstreamTimeoutError(UpstreamConnectionError):
    """A connect or read timed out."""


class FirstTokenTimeoutError(UpstreamTimeoutError):
    """No content arrived within ``first_token_timeout``."""


class IdleTimeoutError(UpstreamTimeoutError):
    """The stream went quiet for longer than ``idle_timeout``."""


class DeadlineExceededError(TierError):
    """The request's overall ``deadline`` for live attempts ran out."""

    retryable = False


class RouteRejectedError(TierError):
    """A fallback route rejected a request the primary route would take (HTTP 400-422).

    Its provider cannot serve this request (a parameter it does not support, a model it
    lacks, a key it refuses): the route is skipped for this request and no breaker counts it.
    The provider's exception is ``__cause__``; its message is not copied (it may echo the
    request).
    """

    retryable = False


class BreakerOpenError(TierError):
    """The tier's circuit breaker is open (or its one half-open probe is taken)."""

    retryable = False


class BreakerBusyError(BreakerOpenError):
    """The tier's breaker stayed busy for as long as this request could wait.

    Unproven, a breaker admits at most ``fail_max`` attempts failed or in flight (see
    ``fallbackchain.breaker.BUSY``).
    """


class StreamProtocolError(TierError):
    """The stream was not a well-formed, complete chat completion stream."""


class TruncatedStreamError(StreamProtocolError):
    """The stream ended cleanly but without ``finish_reason``: the answer is incomplete."""


class StreamEventError(StreamProtocolError):
    """The server sent an SSE ``error`` event in the middle of the stream."""


class MalformedChunkError(StreamProtocolError):
    """A stream chunk (or a completion body) could not be decoded."""


class CacheError(FallbackChainError):
    """The fallback cache could not be used. The chain logs it and carries on without the cache."""


class CacheCorruptError(CacheError):
    """The cache database or one of its rows could not be read."""


class UnsafeCacheRowError(CacheError):
    """A cache row asked to be unpickled. It is refused: unpickling runs arbitrary code."""


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at one tier.

    ``error`` is ``None`` for the attempt that answered, else a short text (never the prompt or
    a secret); ``exception`` is the mapped :class:`~fallbackchain.TierError` (its ``__cause__``
    is the original foreign error). ``delay_before`` is the backoff slept before this attempt.
    """

    tier: str
    error: str | None
    duration: float
    exception: TierError | None = field(default=None, repr=False, compare=False)
    status_code: int | None = None
    retry_after: float | None = None
    delay_before: float = 0.0
    time_to_first_token: float | None = None

    @property
    def error_type(self) -> str | None:
        """The class name of the mapped error, or ``None`` on success."""
        return type(self.exception).__name__ if self.exception is not None else None


class AllTiersFailedError(FallbackChainError):
    """Every live tier failed and the cache had no answer for this prompt.

    ``attempts`` lists each try in order (tier, short error text, duration); the message
    summarises them. It never contains the prompt or any secret.
    """

    def __init__(self, attempts: Sequence[Attempt]) -> None:
        self.attempts = tuple(attempts)
        lines = [f"{a.tier}: {a.error or 'ok'}" for a in self.attempts]
        summary = "; ".join(lines) if lines else "no attempt was possible"
        super().__init__(
            f"all tiers failed after {len(self.attempts)} attempt(s) and the cache had no "
            f"answer: {summary}"
        )


# --------------------------------------------------------------------------------------------
# Mapping foreign errors
# --------------------------------------------------------------------------------------------

_CLIENT_ERRORS = (
    openai.BadRequestError,
    openai.AuthenticationError,
    openai.PermissionDeniedError,
    openai.NotFoundError,
    openai.UnprocessableEntityError,
)


def _header_seconds(headers: Any) -> float | None:
    """Parse ``retry-after-ms`` then ``retry-after`` (seconds) from response headers."""
    for name, divisor in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        raw = headers.get(name)
        if raw is None:
            continue
        try:
            value = float(raw) / divisor
        except ValueError:
            continue
        if value >= 0 and not math.isnan(value):
            return value
    return None


def _should_retry_header(headers: Any) -> bool | None:
    raw = headers.get("x-should-retry")
    if raw == "true":
        return True
    if raw == "false":
        return False
    return None


def _short(message: str, limit: int = 200) -> str:
    message = " ".join(str(message).split())
    return message if len(message) <= limit else message[: limit - 1] + "…"


def is_client_error(exc: BaseException) -> bool:
    """True for the SDK's errors that are the caller's mistake and must propagate unchanged."""
    return isinstance(exc, _CLIENT_ERRORS)


def is_context_length_error(exc: BaseException) -> bool:
    """True for the API's "prompt too long for this model" rejection."""
    return isinstance(exc, openai.BadRequestError) and (exc.code or "") in (
        "context_length_exceeded",
        "string_above_max_length",
    )


_CONTENT_POLICY_CODES = ("content_policy_violation", "content_filter", "invalid_prompt")


def map_rejection(exc: BaseException) -> RouteRejectedError | None:
    """A client error from a *fallback* route as that route's fault, or ``None``.

    ``None`` (the caller's mistake, propagated unchanged) for what no provider would take:
    a prompt too long (see :func:`is_context_length_error`) or refused for its content.
    Anything else the fallback rejects (400, 401, 403, 404, 422) is its incompatibility with
    a request the primary accepts: a :class:`RouteRejectedError` chained ``from`` ``exc``.
    """
    if not isinstance(exc, openai.APIStatusError) or not is_client_error(exc):
        return None
    if is_context_length_error(exc) or (exc.code or "") in _CONTENT_POLICY_CODES:
        return None
    text = f"HTTP {exc.status_code}" + (f" {exc.code}" if exc.code else "")
    rejected = RouteRejectedError(f"rejected by this route: {text}")
    rejected.__cause__ = exc
    return rejected


def is_raised_before_sending(exc: BaseException) -> bool:
    """True when ``exc``, met before any response began, comes from this side, not the network.

    The SDK builds and serialises the request itself and lets its errors escape unwrapped:
    ``TypeError`` for a value with no JSON form, ``UnicodeEncodeError`` for a lone surrogate,
    ``RuntimeError`` for a client already closed. Anything that is not a network, HTTP or
    decoding error (``openai.APIError``, ``OSError``, the transport's own errors, a JSON or
    UTF-8 decoding error) is such an error: the caller's, never the provider's.
    """
    if isinstance(exc, openai.APIError | OSError | json.JSONDecodeError | UnicodeDecodeError):
        return False
    import httpx2  # noqa: PLC0415 - the SDK's transport; imported lazily, only for odd paths

    return not isinstance(exc, httpx2.HTTPError | httpx2.StreamError)


def map_error(
    exc: BaseException, *, content_seen: bool = False, responded: bool = True
) -> TierError | None:
    """Map a foreign exception from a live attempt to the most specific :class:`TierError`.

    Returns ``None`` for the caller's own mistakes, which must be re-raised unchanged and never
    counted: a client error (see :func:`is_client_error`), or, while no response has begun
    (``responded=False``: the SDK call has not returned), an error raised on this side before
    anything was sent (see :func:`is_raised_before_sending`). The returned error has
    ``__cause__`` set to ``exc``. ``content_seen`` says whether content had already arrived,
    to tell a first-token timeout from an idle one.
    """
    if isinstance(exc, TierError):
        return exc
    if is_client_error(exc) or (not responded and is_raised_before_sending(exc)):
        return None
    mapped = _map(exc, content_seen=content_seen)
    mapped.__cause__ = exc
    return mapped


def _map(exc: BaseException, *, content_seen: bool) -> TierError:
    if isinstance(exc, openai.APIStatusError):
        headers = exc.response.headers
        status = exc.status_code
        retry_after = _header_seconds(headers)
        should_retry = _should_retry_header(headers)
        code = exc.code
        text = f"HTTP {status}" + (f" {code}" if code else "")
        if status == 429 and code == "insufficient_quota":
            return QuotaExceededError(text, status_code=status, code=code)
        if status == 429:
            return RateLimitedError(
                text,
                status_code=status,
                retry_after=retry_after,
                should_retry=should_retry,
                code=code,
            )
        if status >= 500:
            return ServerError(
                text,
                status_code=status,
                retry_after=retry_after,
                should_retry=should_retry,
                code=code,
            )
        retryable = status in (408, 409) if should_retry is None else should_retry
        return UpstreamStatusError(
            text, status_code=status, retry_after=retry_after, should_retry=retryable, code=code
        )
    if isinstance(exc, openai.APITimeoutError):
        return _timed_out(content_seen=content_seen)
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamConnectionError(_short(f"connection error: {_cause_name(exc)}"))
    if isinstance(exc, openai.APIResponseValidationError):
        return MalformedChunkError("response did not match the chat completion schema")
    if isinstance(exc, openai.APIError):
        # A bare APIError from the SDK's stream decoder is an SSE error event.
        # The server's own message stays on __cause__: it may echo the request back.
        body = exc.body if isinstance(exc.body, dict) else {}
        code = body.get("code") or body.get("type") or "no code"
        return StreamEventError(_short(f"SSE error event: {code}"))
    if isinstance(exc, json.JSONDecodeError | UnicodeDecodeError):
        return MalformedChunkError(f"malformed chunk: {type(exc).__name__}")
    if isinstance(exc, TimeoutError):
        return _timed_out(content_seen=content_seen)
    if isinstance(exc, ConnectionError | OSError):
        return UpstreamConnectionError(f"connection error: {type(exc).__name__}")
    if isinstance(exc, openai.OpenAIError):
        return TierError(_short(f"{type(exc).__name__}: {exc}"))
    return _map_httpx2(exc, content_seen=content_seen)


def _timed_out(*, content_seen: bool) -> UpstreamTimeoutError:
    """A read or wait that timed out: idle once content had arrived, else no first content."""
    if content_seen:
        return IdleTimeoutError("read timed out between chunks")
    return FirstTokenTimeoutError("timed out before the first content")


def _cause_name(exc: BaseException) -> str:
    cause = exc.__cause__ or exc.__context__
    return type(cause).__name__ if cause is not None else type(exc).__name__


def _map_httpx2(exc: BaseException, *, content_seen: bool) -> TierError:
    import httpx2  # noqa: PLC0415 - the SDK's transport; imported lazily, only for odd paths

    if isinstance(exc, httpx2.TimeoutException):
        return _timed_out(content_seen=content_seen)
    if isinstance(exc, httpx2.TransportError | httpx2.StreamError):
        return UpstreamConnectionError(f"connection error: {type(exc).__name__}")
    if isinstance(exc, httpx2.HTTPError):
        return UpstreamConnectionError(f"HTTP error: {type(exc).__name__}")
    return TierError(f"unexpected {type(exc).__name__}")
