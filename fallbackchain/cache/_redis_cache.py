"""The response cache shared through Redis by many processes and hosts (`cache.backend="redis"`).

:class:`RedisResponseCache` satisfies the :class:`~fallbackchain.cache.Cache` protocol, as the
disk cache :class:`~fallbackchain.cache.ResponseCache` does (plus ``aget``/``aput`` on
``redis.asyncio``); it shares the memory layer, the row format and the counters with it by
composition (:class:`CacheCommon`), not by inheritance.
Keys are ``{namespace}:cache:{fc1-...}``; values are the same JSON rows the disk cache writes,
stored with ``SET ... PX`` so Redis expires them after ``ttl``; only complete answers are
stored; nothing read back is ever unpickled. A TTL memory layer sits in front. On any Redis
failure the cache carries on with its memory layer (see ``_redis_link``); no Redis error ever
reaches a caller.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final, Unpack, cast

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.exceptions
from openai.types.chat import ChatCompletion

from .. import _redis_link as redis_link
from .._config import CacheConfig
from .._errors import CacheError
from ._common import CacheCommon
from ._failures import CacheFailure
from ._jsonl import ExportRow, ImportOutcome
from ._protocol import Cache, PutOptions
from ._rows import CachedAnswer, HeldEntry, StoredRow, decode_row
from ._stats import CacheStats, StoredAges

__all__ = ["RedisCacheError", "RedisResponseCache"]

_SCAN_COUNT: Final = 500


class RedisCacheError(CacheError):
    """Internal: the Redis layer of the cache failed for one operation (logged, never raised)."""


_IMPORT = redis_link.RedisScript.of(
    """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, row = pcall(cjson.decode, cur)
  if ok and type(row) == 'table' and type(row['stored_at']) == 'number'
     and row['stored_at'] >= tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)

_DELETE_IF_SAME = redis_link.RedisScript.of(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)


# --------------------------------------------------------------------------------------------
# The response cache
# --------------------------------------------------------------------------------------------


def _scan_op(cursor: int, pattern: str) -> Callable[[redis.Redis], Any]:
    return lambda r: r.scan(cursor, match=pattern, count=_SCAN_COUNT)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _px(row: StoredRow) -> int:
    """A row's time to live in Redis (``SET ... PX``): whole milliseconds, at least 1."""
    return max(1, math.ceil(row.ttl_left * 1000))


class RedisResponseCache(Cache):
    """The last good answer per request key, in Redis, with a TTL memory layer in front.

    The :class:`Cache` protocol's interface and guarantees (nothing raises from the
    cache operations; only complete answers; JSON only; never serves an answer ``ttl`` old),
    shared by every process and host using the same Redis and ``namespace``. ``aget`` and
    ``aput`` use ``redis.asyncio`` on the running event loop. Entries expire in Redis after
    ``ttl`` (``SET ... PX``). The memory layer is per process: an entry it holds is served
    until it expires there, even after another process clears or replaces it in Redis (set
    ``memory_items = 0`` to always read Redis).
    """

    def __init__(
        self,
        config: CacheConfig,
        *,
        namespace: str,
        clock: Callable[[], float] = time.time,
        link: redis_link.RedisLink | None = None,
    ) -> None:
        self._link = link if link is not None else redis_link.shared_link(config.redis_url)
        self.namespace = namespace
        self.prefix = f"{namespace}:cache:"
        # The memory layer, row rules, counters and failure log; Redis is the storage.
        self._common = CacheCommon(
            config, clock, where=f"{self._link.display} {self.prefix}*", describe=_describe
        )
        self._loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

    # --- public API ------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        """Where the entries live: the Redis URL (password masked) and the key pattern."""
        return self._common.where

    @property
    def disk_available(self) -> bool:
        """True while Redis is usable (it plays the disk layer's part). Never raises.

        Outside an event loop this asks Redis (one PING, bounded by the link's timeout)
        unless it is already known to be down; on an event loop it reports what is known.
        """
        if not self._common.usable() or not self._link.available:
            return False
        if redis_link.on_event_loop():
            return True
        try:
            return bool(self._link.call(lambda r: r.ping()))
        except redis_link.RedisUnavailableError:
            return False

    @property
    def read_only(self) -> bool:
        """Always False: Redis is either usable for reads and writes, or unavailable."""
        return False

    @property
    def link(self) -> redis_link.RedisLink:
        return self._link

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer for ``key``, or ``None``. Never raises; never serves expired."""
        return self._common.lookup(key, self._read)

    def get_held(self, key: str) -> CachedAnswer | None:
        """The answer for ``key`` if the memory layer holds it, else ``None`` (not a miss).

        No Redis I/O and no wait beyond an in-process lock. A hit counts as one.
        """
        return self._common.get_held(key)

    async def aget(self, key: str) -> CachedAnswer | None:
        """:meth:`get` on ``redis.asyncio``: never blocks the event loop. Never raises."""
        common = self._common
        if not common.usable():
            return None
        answer = common.memory.get(key, common.clock())
        if answer is None:
            try:
                self._loops.add(asyncio.get_running_loop())
                raw = await self._link.acall(lambda r: r.get(self.prefix + key))
                answer = common.from_row(key, raw, common.clock())
            except Exception as exc:  # noqa: BLE001 - the cache must never break a request
                common.failure("get", exc, "treated as a miss")
        return common.count_lookup(answer)

    def put(self, key: str, completion: ChatCompletion, **options: Unpack[PutOptions]) -> bool:
        """Store a complete answer; True if it was written to Redis. Never raises.

        As :meth:`ResponseCache.put`: incomplete answers are refused, the memory layer is
        updated even when Redis is unavailable, and ``stored_at`` dates a restored answer.
        Every put is written (a SET), so ``rewrite`` changes nothing here.
        """
        common = self._common
        if not common.usable():
            return False
        stored_at = options.get("stored_at")  # every put is a SET: ``rewrite`` changes nothing
        stored = common.guarded(
            "put", "answer not stored", lambda: self._set(key, completion, stored_at), False
        )
        return common.count_store(stored)

    def put_later(self, key: str, completion: ChatCompletion) -> bool:
        """:meth:`put`, synchronously: Redis has no write-behind queue (a write is one SET).

        Mirrors :meth:`ResponseCache.put_later` so a chain can use either cache.
        """
        return self.put(key, completion)

    def flush(self, timeout: float | None = None) -> bool:
        """Nothing is ever queued: True at once."""
        return True

    async def aput(
        self, key: str, completion: ChatCompletion, *, stored_at: float | None = None
    ) -> bool:
        """:meth:`put` on ``redis.asyncio``: never blocks the event loop. Never raises."""
        common = self._common
        if not common.usable():
            return False
        try:
            row = common.prepare_row(key, completion, stored_at)
            stored = row is not None and await self._aset(key, row)
        except Exception as exc:  # noqa: BLE001 - the cache must never break a request
            common.failure("put", exc, "answer not stored")
            return False
        return common.count_store(stored)

    # put's write, apart from the client it goes through (a row that put refuses is not written)

    def _set(self, key: str, completion: ChatCompletion, stored_at: float | None) -> bool:
        row = self._common.prepare_row(key, completion, stored_at)
        if row is None:
            return False
        name, px = self.prefix + key, _px(row)
        return bool(self._link.call(lambda r: r.set(name, row.text, px=px)))

    async def _aset(self, key: str, row: StoredRow) -> bool:
        name, px = self.prefix + key, _px(row)
        self._loops.add(asyncio.get_running_loop())
        return bool(await self._link.acall(lambda r: r.set(name, row.text, px=px)))

    def stats(self, *, scan: bool = False) -> CacheStats:
        """Counters and sizes (``entries``/``bytes``: this namespace in Redis). Never raises.

        ``entries`` and ``bytes`` walk the namespace's keys (SCAN); ``scan=True`` also reads
        every value to fill in ``oldest``, ``newest`` and ``expired``.
        """
        common = self._common
        entries = size = 0
        ages = StoredAges(common.clock(), common.ttl) if scan else None
        if common.usable():
            try:
                if ages is None:
                    for batch in self._key_batches():
                        lengths = self._lengths(batch)
                        entries += sum(1 for n in lengths if n)
                        size += sum(lengths)
                else:
                    for _key, value, entry in self._values("stats"):
                        entries += 1
                        size += len(value)
                        if entry is not None:
                            ages.add(entry.stored_at)
            except Exception as exc:  # noqa: BLE001 - stats are best effort
                common.failure("stats", exc, "Redis sizes reported as 0")
                entries = size = 0
                if ages is not None:
                    ages = StoredAges(ages.now, common.ttl)
        return common.stats(entries, size, ages, 0)

    def clear(self) -> int:
        """Remove every entry of this namespace; returns the number of Redis keys removed.

        When Redis is unavailable, the number of memory entries removed. Never raises.
        Other processes' memory layers keep what they hold until it expires there.
        """
        memory_removed = self._common.memory.clear()
        if not self._common.usable():
            return memory_removed
        removed = 0
        try:
            for batch in self._key_batches():
                removed += int(self._link.call(self._unlink_op(batch)))
        except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
            self._common.failure("clear", exc, "cache not (fully) cleared")
            return removed or memory_removed
        return removed

    def iter_keys(self) -> Iterator[str]:
        """Yield the key of every entry of this namespace in Redis (SCAN order). Never raises."""
        if not self._common.usable():
            return
        try:
            for batch in self._key_batches():
                yield from batch
        except Exception as exc:  # noqa: BLE001
            self._common.failure("iter_keys", exc, "key listing stopped")

    def prune(self) -> int:
        """Remove every entry at least ``ttl`` old by the cache's clock. Never raises.

        Redis already expires entries ``ttl`` after they were written; this also removes
        those dated older by the cache's clock. A value rewritten meanwhile is never removed.
        """
        now = self._common.clock()
        self._common.memory.prune(now)

        def delete_if_same(key: str, raw: bytes, _entry: HeldEntry) -> int:
            return int(self._link.call(self._delete_if_same_op(key, raw)))

        return self._common.prune_rows(now, self._scan_entries("prune"), delete_if_same)

    def export_rows(self) -> Iterator[ExportRow]:
        """Yield every servable entry (unexpired, readable, complete), in Redis SCAN order.

        Unreadable rows are logged and skipped; the memory layer is not listed. Does not count
        as hits or misses. Never raises.
        """
        return self._common.export_rows(self._scan_entries("export"))

    def import_row(self, key: str, completion: ChatCompletion, stored_at: float) -> ImportOutcome:
        """Store an exported answer unless Redis holds one for ``key`` as new or newer.

        Validation and outcomes as :meth:`ResponseCache.import_row`; the comparison and the
        write are one Lua script.
        """

        def write(at: float) -> ImportOutcome:
            row = self._common.prepare_row(key, completion, at)
            if row is None:
                return "failed"
            name, args = self.prefix + key, (redis_link.redis_number(at), row.text, str(_px(row)))
            written = self._link.call(lambda r: _IMPORT.run(r, (name,), args))
            return "imported" if int(written) else "kept"

        return self._common.import_row(key, completion, stored_at, write)

    def close(self) -> None:
        """Drop the memory layer; later calls miss. Idempotent.

        Redis connections are shared by the process (see :func:`redis_link.shared_link`); the idle
        connections of the event loops this cache used are closed here, best effort.
        """
        if not self._common.mark_closed():
            self._link.close_loop_clients(list(self._loops))

    async def aclose(self) -> None:
        """:meth:`close`, closing this event loop's async client properly."""
        self._common.mark_closed()
        await self._link.aclose_loop_client()

    def __repr__(self) -> str:
        state = self._common.state("redis", self._link.available)
        return f"RedisResponseCache({self.directory!r}, {state})"

    # --- internals -------------------------------------------------------------------------

    def _read(self, key: str, _now: float) -> CachedAnswer | None:
        """get() after a memory miss: the Redis row."""
        raw = self._link.call(lambda r: r.get(self.prefix + key))
        return self._common.from_row(key, raw, self._common.clock())

    def _key_batches(self) -> Iterator[list[str]]:
        """Yield the namespace's keys (prefix removed) in batches; raises on a Redis failure."""
        pattern = _glob_escape(self.prefix) + "*"
        cursor: int = 0
        seen: set[str] = set()
        start = len(self.prefix)
        while True:
            cursor, names = cast(
                tuple[int, list[bytes]], self._link.call(_scan_op(cursor, pattern))
            )
            batch: list[str] = []
            for name in names:
                try:
                    key = name.decode("utf-8")[start:]
                except UnicodeDecodeError:
                    continue
                if key not in seen:
                    seen.add(key)
                    batch.append(key)
            if batch:
                yield batch
            if int(cursor) == 0:
                return

    def _unlink_op(self, batch: Sequence[str]) -> Callable[[redis.Redis], Any]:
        names = [self.prefix + k for k in batch]
        return lambda r: r.unlink(*names)

    def _delete_if_same_op(self, key: str, raw: bytes) -> Callable[[redis.Redis], Any]:
        name = self.prefix + key
        return lambda r: _DELETE_IF_SAME.run(r, (name,), (raw,))

    def _fetch(self, batch: Sequence[str]) -> list[bytes | None]:
        names = [self.prefix + k for k in batch]
        return cast(list[bytes | None], self._link.call(lambda r: r.mget(names)))

    def _lengths(self, batch: Sequence[str]) -> list[int]:
        def op(r: redis.Redis) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for k in batch:
                pipe.strlen(self.prefix + k)
            return pipe.execute()

        return [int(n) for n in self._link.call(op)]

    def _values(self, operation: str) -> Iterator[tuple[str, bytes, HeldEntry | None]]:
        """Every value of the namespace with its key, decoded; raises on a Redis failure.

        The entry is None for an unreadable value (logged as a skipped row).
        """
        for batch in self._key_batches():
            for key, value in zip(batch, self._fetch(batch), strict=True):
                if value is None:
                    continue
                entry: HeldEntry | None
                try:
                    entry = decode_row(value)
                except CacheError as exc:
                    self._common.skip_row(operation, exc)
                    entry = None
                yield key, value, entry

    def _scan_entries(self, operation: str) -> Iterator[tuple[str, bytes, HeldEntry]]:
        """Every readable entry with its key and raw value; unreadable ones are logged."""
        if not self._common.usable():
            return
        try:
            for key, value, entry in self._values(operation):
                if entry is not None:
                    yield key, value, entry
        except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
            self._common.failure(operation, exc, "scan stopped")


def _describe(exc: BaseException) -> CacheFailure | None:
    """How the Redis cache names ``exc`` in its WARNING; None when the link logged it."""
    if isinstance(exc, redis_link.RedisUnavailableError):
        return None  # the link logged it (once), and says when Redis is back
    mapped: CacheError
    if isinstance(exc, CacheError):
        mapped = exc
    else:
        mapped = RedisCacheError("unexpected error in the Redis cache")
        mapped.__cause__ = exc
    cause = mapped.__cause__ if mapped.__cause__ is not None else mapped
    return CacheFailure(mapped, type(cause).__name__, (type(mapped).__name__,))
