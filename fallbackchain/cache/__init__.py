"""The fallback cache: the last good answer per request, on disk or in Redis, memory in front.

The modules here are private; other parts of fallbackchain import from this package. A chain,
``warm`` and the CLI ask for a :class:`Cache` (the protocol); :class:`ResponseCache` is the
disk one, :class:`RedisResponseCache` (loaded on first use: it imports redis) the Redis one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._disk_cache import ResponseCache
from ._jsonl import (
    ExportRow,
    ImportOutcome,
    ImportReport,
    InputFileError,
    LineError,
    read_jsonl,
)
from ._keys import cache_key
from ._protocol import Cache
from ._rows import CachedAnswer, HeldEntry, StoredRow, decode_row
from ._safe_disk import SafeJSONDisk
from ._stats import CacheStats, StoredAges

if TYPE_CHECKING:
    from ._redis_cache import RedisResponseCache

__all__ = [
    "Cache",
    "CacheStats",
    "CachedAnswer",
    "ExportRow",
    "HeldEntry",
    "ImportOutcome",
    "ImportReport",
    "InputFileError",
    "LineError",
    "RedisResponseCache",
    "ResponseCache",
    "SafeJSONDisk",
    "StoredAges",
    "StoredRow",
    "cache_key",
    "decode_row",
    "read_jsonl",
]


def __getattr__(name: str) -> Any:
    """``RedisResponseCache`` imports the redis client, so only on first use (PEP 562)."""
    if name == "RedisResponseCache":
        from ._redis_cache import RedisResponseCache  # noqa: PLC0415 - loads redis

        return RedisResponseCache
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
