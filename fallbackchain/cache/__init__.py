"""The fallback cache: the last good answer per request, on disk or in Redis, memory in front.

The modules here are private; other parts of fallbackchain import from this package. A chain,
``warm`` and the CLI ask for a :class:`Cache` (the protocol); :class:`ResponseCache` is the
disk one, :class:`RedisResponseCache` the Redis one. Both load on first use (the disk one
imports diskcache and SQLite, the Redis one the redis client): a chain builds the one its
config names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import loaded_on_first_use
from ._keys import cache_key

if TYPE_CHECKING:
    from ._disk_cache import ResponseCache
    from ._jsonl import (
        ExportRow,
        ImportOutcome,
        ImportReport,
        InputFileError,
        LineError,
        read_jsonl,
    )
    from ._protocol import Cache
    from ._redis_cache import RedisResponseCache
    from ._rows import CachedAnswer, HeldEntry, StoredRow, decode_row
    from ._safe_disk import SafeJSONDisk
    from ._stats import CacheStats, StoredAges

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

# Everything but `cache_key` (what a chain needs to prepare a request) loads when first
# asked for (#14: import time): each cache imports its storage's client (diskcache and SQLite,
# or redis) and is built only when a config names it; export, import and stats are not
# needed by a request.
__getattr__ = loaded_on_first_use(
    globals(),
    {
        "Cache": "._protocol",
        "CacheStats": "._stats",
        "CachedAnswer": "._rows",
        "ExportRow": "._jsonl",
        "HeldEntry": "._rows",
        "ImportOutcome": "._jsonl",
        "ImportReport": "._jsonl",
        "InputFileError": "._jsonl",
        "LineError": "._jsonl",
        "RedisResponseCache": "._redis_cache",
        "ResponseCache": "._disk_cache",
        "SafeJSONDisk": "._safe_disk",
        "StoredAges": "._stats",
        "StoredRow": "._rows",
        "decode_row": "._rows",
        "read_jsonl": "._jsonl",
    },
)
