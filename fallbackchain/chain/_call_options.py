"""One call's own options: what a caller may set per request, checked before anything is sent.

None of them ever reaches a provider: ``deadline``, ``max_attempts``, ``cache`` and
``fallbacks`` shape the chain's own run (see :class:`CallOptions`), and ``timeout`` tightens
the bounds the chain sets on each attempt.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Literal, NamedTuple, TypedDict

from .._config import PRIMARY_ROUTE, ChainConfig

__all__ = ["CacheUse", "CallKeywords", "CallOptions", "call_options", "call_timeout"]


CacheUse = Literal["use", "refresh", "off"]
"""How one call uses the cache: ``"use"`` (answer from it when the live tiers fail, store a
live answer), ``"refresh"`` (never answer from it, store a live answer), ``"off"`` (neither)."""


class CallKeywords(TypedDict, total=False):
    """A call's own options as keywords (see :meth:`FallbackChain.stream` for each one)."""

    deadline: float | None
    max_attempts: int | None
    cache: CacheUse
    fallbacks: bool | Collection[str]


# A NamedTuple, not a frozen dataclass: import time (CONTRIBUTING.md).
class CallOptions(NamedTuple):
    """One call's own settings, never sent to a provider (checked by :func:`call_options`)."""

    deadline: float | None = None
    max_attempts: int | None = None
    cache: CacheUse = "use"
    routes: frozenset[str] | None = None  # the routes this call may use; None: all


def call_options(
    config: ChainConfig,
    deadline: float | None,
    max_attempts: int | None,
    cache: str,
    fallbacks: bool | Collection[str],
) -> CallOptions | None:
    """Check a call's own options; ``None`` when all are the defaults (nothing to apply)."""
    if deadline is None and max_attempts is None and cache == "use" and fallbacks is True:
        return None
    if deadline is not None and (
        isinstance(deadline, bool)
        or not isinstance(deadline, int | float)
        or not math.isfinite(deadline)
        or deadline <= 0
    ):
        raise ValueError(f"deadline must be a positive number of seconds (got {deadline!r})")
    if max_attempts is not None and (
        isinstance(max_attempts, bool) or not isinstance(max_attempts, int) or max_attempts < 1
    ):
        raise ValueError(f"max_attempts must be a whole number >= 1 (got {max_attempts!r})")
    if cache not in ("use", "refresh", "off"):
        raise ValueError(f"cache must be 'use', 'refresh' or 'off' (got {cache!r})")
    known = [entry.name for entry in config.fallbacks]
    if fallbacks is True:
        routes = None
    elif fallbacks is False:
        routes = frozenset({PRIMARY_ROUTE})
    elif isinstance(fallbacks, str) or not isinstance(fallbacks, Collection):
        raise TypeError("fallbacks must be True, False or a collection of fallback names")
    else:
        unknown = sorted(set(fallbacks) - set(known))
        if unknown:
            raise ValueError(f"unknown fallback(s) {unknown}; configured: {known}")
        routes = frozenset({PRIMARY_ROUTE, *fallbacks})
    return CallOptions(
        None if deadline is None else float(deadline),
        max_attempts,
        cache,  # type: ignore[arg-type]  # checked above
        routes,
    )


def call_timeout(value: object) -> float | None:
    """A per-call ``timeout=`` as seconds: a positive number, or ``None`` (not given).

    The chain sets the SDK's timeout of each attempt itself (from the route's settings and
    the deadline); a caller's number tightens it. An ``httpx`` timeout object is refused:
    its parts (connect, read, pool) would each need a meaning here.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"timeout must be a number of seconds, not {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"timeout must be a positive number of seconds (got {value!r})")
    return float(value)
