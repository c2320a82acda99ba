"""Backoff and retry decisions: pure functions of the error, the attempt count and the clock.

Nothing here sleeps or reads the time: the caller passes ``elapsed`` and a ``random`` function,
so every rule is testable without waiting. The drivers in ``_chain`` do the sleeping.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from ._config import RetryConfig
from ._errors import (
    BreakerOpenError,
    DeadlineExceededError,
    FirstTokenTimeoutError,
    IdleTimeoutError,
    QuotaExceededError,
    TierError,
)

__all__ = ["RetryDecision", "decide", "full_jitter"]

Action = Literal["retry", "next_tier", "skip_live"]


@dataclass(frozen=True, slots=True)
class RetryDecision:
    """What to do after a failed attempt.

    ``"retry"``: sleep ``delay`` seconds, then try the same tier again.
    ``"next_tier"``: go to the next live tier at once (no sleep).
    ``"skip_live"``: skip every remaining live tier; the cache answers if it can.
    ``reason`` is a short text for logs and attempt records.
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


def decide(
    error: TierError,
    *,
    attempt: int,
    elapsed: float,
    config: RetryConfig,
    random: Callable[[], float] = _random.random,
) -> RetryDecision:
    """Decide what follows the ``attempt``-th (1-based) failed try at a tier.

    ``elapsed`` is the time since the request started; no decision ever schedules a sleep that
    would end past ``config.deadline``. Rules, in order:

    * quota exhausted or deadline passed → skip the live tiers;
    * breaker open, a silent route (no first token) or an idle stall → next tier at once;
    * a non-retryable error (e.g. ``x-should-retry: false``) → next tier;
    * the tier's ``max_attempts`` used → next tier;
    * a ``Retry-After`` above ``max_retry_after`` → next tier; otherwise wait exactly that;
    * else full-jitter backoff;
    * a wait that would cross the deadline → next tier instead of sleeping.
    """
    if isinstance(error, QuotaExceededError):
        return RetryDecision("skip_live", reason="quota exhausted")
    if isinstance(error, DeadlineExceededError) or elapsed >= config.deadline:
        return RetryDecision("skip_live", reason="deadline reached")
    if isinstance(error, BreakerOpenError):
        return RetryDecision("next_tier", reason="breaker open")
    if isinstance(error, FirstTokenTimeoutError | IdleTimeoutError):
        return RetryDecision("next_tier", reason="silent route")
    if not error.retryable:
        return RetryDecision("next_tier", reason="not retryable")
    if attempt >= config.max_attempts:
        return RetryDecision("next_tier", reason="attempts exhausted")
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        if retry_after > config.max_retry_after:
            return RetryDecision("next_tier", reason="retry-after too long")
        delay = float(retry_after)
    else:
        delay = full_jitter(attempt - 1, config.base_delay, config.max_delay, random)
    if elapsed + delay >= config.deadline:
        return RetryDecision("next_tier", reason="backoff would cross the deadline")
    return RetryDecision("retry", delay=delay, reason="backoff")
