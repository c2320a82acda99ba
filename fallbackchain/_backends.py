"""Which breaker stores and cache a chain uses, chosen by the config.

``breaker.storage = "memory"`` (the default) keeps each tier's breaker in this process;
``"redis"`` shares it with every process using the same ``breaker.namespace``.
``cache.backend = "disk"`` (the default) is the local disk cache with its memory layer;
``"redis"`` shares answers across processes and hosts (keys in ``breaker.namespace`` too).
The ``redis`` package is only imported when a Redis backend is configured, diskcache only when
the disk cache is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._config import ChainConfig
from ._errors import ConfigError
from ._timing import Clock
from .breaker import GateStore, MemoryGateStore

if TYPE_CHECKING:
    from .cache import Cache  # the cache's modules load when a config names one

__all__ = ["gate_store", "response_cache"]


def _require_redis(config: ChainConfig, key: str) -> None:
    """A ConfigError naming ``key`` if the redis client package is missing."""
    try:
        import redis  # noqa: F401, PLC0415 - optional dependency, only for Redis backends
    except ImportError as exc:
        raise ConfigError(
            "needs the redis client package: pip install redis",
            file=config.source,
            key=key,
            value="redis",
        ) from exc


def gate_store(config: ChainConfig, tier: str) -> GateStore:
    """The state store for ``tier``'s breaker."""
    if config.breaker.storage == "memory":
        return MemoryGateStore()
    if config.breaker.storage == "redis":
        _require_redis(config, "breaker.storage")
        from .breaker import RedisGateStore  # noqa: PLC0415 - loads redis

        store: GateStore = RedisGateStore(
            config.breaker.redis_url, namespace=config.breaker.namespace, name=tier
        )
        return store
    raise ConfigError(
        "must be one of 'memory', 'redis'", key="breaker.storage", value=config.breaker.storage
    )


def response_cache(config: ChainConfig, clock: Clock) -> Cache:
    """The fallback cache for a chain: on disk, or in Redis (``cache.backend``)."""
    if config.cache.backend == "disk":
        from .cache import ResponseCache  # noqa: PLC0415 - loads diskcache and SQLite

        return ResponseCache(config.cache, clock=clock)
    if config.cache.backend == "redis":
        _require_redis(config, "cache.backend")
        from .cache import RedisResponseCache  # noqa: PLC0415 - loads redis

        return RedisResponseCache(config.cache, namespace=config.breaker.namespace, clock=clock)
    raise ConfigError(
        "must be one of 'disk', 'redis'", key="cache.backend", value=config.cache.backend
    )
