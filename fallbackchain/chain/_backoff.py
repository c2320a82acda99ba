"""Backoff and retry decisions: pure functions of the error, the attempt counts and the clock.

Nothing here sleeps or reads the time: the caller passes ``elapsed`` and a ``random`` function,
so every rule is testable without waiting. The drivers in ``_chain`` do the sleeping.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from typing import Literal, NamedTuple

from .._config import RetryConfig
from .._errors import (
    BreakerOpenError,
    DeadlineExceededError,
    FirstTokenTimeoutError,
    IdleTimeoutError,
    QuotaExceededError,
    StreamProtocolError,
    TierError,
    UpstreamConnectionError,
    UpstreamTimeoutError,
)

__all__ = ["RetryDecision", "decide", "full_jitter", "is_transport_fault"]

Action = Literal["retry", "next_tier", "next_route", "defer_route", "skip_live"]


# A NamedTuple, not a frozen dataclass: import time (CONTRIBUTING.md).
class RetryDecision(NamedTuple):
    """What to do after a failed attempt.

    ``"retry"``: sleep ``delay`` seconds, then try again on the same route (the same tier, or
    its next one if this tier's breaker just opened). ``"next_tier"``: go to the route's next
    tier at once. ``"next_route"``: skip the rest of this route for this request.
    ``"defer_route"``: skip the rest of this route for now; its tiers are tried again only
    after every other route (a silent model). ``"skip_live"``: skip every remaining live tier;
    the cache answers if it can. ``reason`` is a short text for logs and attempt records.
    """

    action: Action
    delay: float = 0.0
    reason: str = ""


def full_jitter(
    retry_index: int, base: float, cap: float, random: Callable[[], float] = _random.random
) -> float:
    """Full-jitter exponential delay: ``U(0, min(cap, base * 2**retry_index))``.

    ``retry_index`` is 0 for the first retry. Never negative, never above ``cap``.
    """
    exponent = min(retry_index, 64)  # 2**64 * base overflows nothing and is capped anyway
    ceiling = min(cap, base * (2.0**exponent))
    return max(0.0, ceiling * random())


def is_transport_fault(error: TierError, *, content_seen: bool) -> bool:
    """True when ``error`` is a fault of one stream's transport, not of the route (the model).

    A stream that broke after it began answering (dropped after content, truncated, a
    malformed chunk, an SSE ``error`` event) says little about the model: another stream may
    well succeed. Everything else (429, 5xx, refused, reset, an SSE ``error`` or a bad chunk
    before any content, silence, a stall) describes the route. So does a stream that ended
    for a reason another attempt would meet again (``error.retryable`` false, such as a
    Responses answer cut for a reason the chain does not know), even after content: it moves
    on at once rather than asking the same model again. (A Responses answer cut where the
    request asked, ``max_output_tokens`` or ``content_filter``, is no error: it is the answer.)
    """
    return (
        content_seen
        and error.retryable
        and isinstance(error, StreamProtocolError | UpstreamConnectionError)
        and not isinstance(error, UpstreamTimeoutError)
    )


def decide(
    error: TierError,
    *,
    attempt: int,
    elapsed: float,
    config: RetryConfig,
    random: Callable[[], float] = _random.random,
    transport: bool = False,
    max_attempts: int | None = None,
) -> RetryDecision:
    """Decide what follows a failed attempt.

    ``attempt`` (1-based) is what the budget counts: for a route fault, the attempts on the
    route so far, whichever tier, that failed for the route's reasons; for a ``transport``
    fault (:func:`is_transport_fault`), the attempts on this tier. Both budgets are
    ``max_attempts`` (default ``config.max_attempts``): a stream that keeps breaking does not
    spend the model's budget, and a failing model does not spend the stream's. ``elapsed`` is
    the time since the request started; no decision ever schedules a sleep that would end past
    ``config.deadline``. Rules, in order:

    * quota exhausted or deadline passed → skip the live tiers;
    * breaker open → next tier at once;
    * a silent route (no first content) or an idle stall → defer the route: other routes first;
    * a transport fault → retry this tier with backoff while its attempts last, then the
      route's next tier at once (another request to a model that answers);
    * a non-retryable error (e.g. ``x-should-retry: false``) → next route;
    * the route's budget used → next route;
    * a ``Retry-After`` above ``max_retry_after`` → next route; otherwise wait exactly that
      (before any tier of the route);
    * else full-jitter backoff on the route's attempt count, never under ``base_delay / 2``
      for a route fault (only a server's own ``Retry-After`` may say "now");
    * a wait that would cross the deadline → next route (next tier for a transport fault)
      instead of sleeping.
    """
    if isinstance(error, QuotaExceededError):
        return RetryDecision("skip_live", reason="quota exhausted")
    if isinstance(error, DeadlineExceededError) or elapsed >= config.deadline:
        return RetryDecision("skip_live", reason="deadline reached")
    if isinstance(error, BreakerOpenError):
        return RetryDecision("next_tier", reason="breaker open")
    if isinstance(error, FirstTokenTimeoutError | IdleTimeoutError):
        return RetryDecision("defer_route", reason="silent route")
    budget = config.max_attempts if max_attempts is None else max_attempts
    give_up: Action = "next_tier" if transport else "next_route"
    if not error.retryable:
        return RetryDecision(give_up, reason="not retryable")
    if attempt >= budget:
        return RetryDecision(give_up, reason="attempts exhausted")
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        if retry_after > config.max_retry_after:
            return RetryDecision("next_route", reason="retry-after too long")
        delay = float(retry_after)
    else:
        delay = full_jitter(attempt - 1, config.base_delay, config.max_delay, random)
        if not transport:  # the model's own trouble: never asked again at once
            delay = max(delay, config.base_delay / 2)
    if elapsed + delay >= config.deadline:
        return RetryDecision(give_up, reason="backoff would cross the deadline")
    return RetryDecision("retry", delay=delay, reason="backoff")
