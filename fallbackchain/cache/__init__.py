"""The fallback cache: the last good answer per request, on disk or in Redis, memory in front.

The modules here are private; other parts of fallbackchain import from this package. A chain,
``warm`` and the CLI ask for a :class:`Cache` (the protocol); :class:`ResponseCache` is the
disk one, :class:`RedisResponseCache` (loaded on first use: it imports redis) the Redis one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import loaded_on_first_use
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

# RedisResponseCache imports the redis client: loaded only when first asked for.
__getattr__ = loaded_on_first_use(globals(), {"RedisResponseCache": "._redis_cache"})
