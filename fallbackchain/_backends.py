"""Which breaker stores and cache a chain uses, chosen by the config.

``breaker.storage = "memory"`` (the default) keeps each tier's breaker in this process;
``"redis"`` shares it with every process using the same ``breaker.namespace``.
``cache.backend = "disk"`` (the default) is the local disk cache with its memory layer;
``"redis"`` shares answers across processes and hosts.
"""

from __future__ import annotations

from ._breaker import GateStore, MemoryGateStore
from ._cache import ResponseCache
from ._config import ChainConfig
from ._timing import Clock

__all__ = ["gate_store", "response_cache"]


def gate_store(config: ChainConfig, tier: str) -> GateStore:
    """The state store for ``tier``'s breaker."""
    if config.breaker.storage == "memory":
        return MemoryGateStore()
    raise NotImplementedError(f"breaker.storage = {config.breaker.storage!r}")  # issue 4


def response_cache(config: ChainConfig, clock: Clock) -> ResponseCache:
    """The fallback cache for a chain."""
    if config.cache.backend == "disk":
        return ResponseCache(config.cache, clock=clock)
    raise NotImplementedError(f"cache.backend = {config.cache.backend!r}")  # issue 4
