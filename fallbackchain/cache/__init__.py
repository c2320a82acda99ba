"""The fallback cache: the last good answer per request, on disk or in Redis, memory in front.

The modules here are private; other parts of fallbackchain import from this package.
"""

from __future__ import annotations

from ._cache import (
    CacheBase,
    CachedAnswer,
    CacheFailure,
    CacheStats,
    ExportRow,
    HeldEntry,
    ImportOutcome,
    ImportReport,
    InputFileError,
    LineError,
    ResponseCache,
    SafeJSONDisk,
    StoredAges,
    StoredRow,
    cache_key,
    decode_row,
    read_jsonl,
)

__all__ = [
    "CacheBase",
    "CacheFailure",
    "CacheStats",
    "CachedAnswer",
    "ExportRow",
    "HeldEntry",
    "ImportOutcome",
    "ImportReport",
    "InputFileError",
    "LineError",
    "ResponseCache",
    "SafeJSONDisk",
    "StoredAges",
    "StoredRow",
    "cache_key",
    "decode_row",
    "read_jsonl",
]
