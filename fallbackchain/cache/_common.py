"""What every response cache owns (the disk one and the Redis one), by composition.

:class:`CacheCommon` holds the config, the clock and ttl, the memory layer, the counters, the
rate-limited failure log, and does the steps of get/put/import/export/prune/stats that do not
touch storage. A cache does its storage I/O and hands the rest to it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from openai.types.chat import ChatCompletion

from .._config import CacheConfig
from ._failures import CacheFailure
from ._memory import MemoryLayer
from ._rows import (
    CachedAnswer,
    HeldEntry,
    LocalAnswer,
    StoredRow,
    clamp_stored_at,
    decode_row,
    encode_row,
    fresh,
    is_complete,
    is_expired,
    same_answer,
)
from ._writer import QueuedWrite

if TYPE_CHECKING:
    # Export, import and stats load on first use: no request needs them (#14: import time).
    from ._jsonl import ExportRow, ImportOutcome
    from ._stats import CacheStats, StoredAges

__all__ = ["CacheCommon", "Entries"]

_log = logging.getLogger("fallbackchain.cache")

_LOG_INTERVAL: Final = 60.0  # seconds of the cache clock between two logs of one failure kind

Entries = Iterator[tuple[str, Any, HeldEntry]]
"""A scan of stored rows: ``(key, raw value, entry)`` for each readable one."""

_T = TypeVar("_T")


class CacheCommon:
    """The parts a response cache shares with the others; thread-safe.

    ``where`` names the storage in log lines and stats (a directory, or a Redis URL and key
    pattern); ``describe`` says how to name a failure in the WARNING (None: counted but not
    logged here, e.g. because a lower layer logged it).
    """

    def __init__(
        self,
        config: CacheConfig,
        clock: Callable[[], float],
        *,
        where: str,
        describe: Callable[[BaseException], CacheFailure | None],
    ) -> None:
        self.config = config
        self.clock = clock
        self.ttl = float(config.ttl)
        self.where = where
        self._describe = describe
        self.lock = threading.Lock()  # counters, log state, closed (and the cache's own state)
        self.memory = MemoryLayer(config.memory_items if config.enabled else 0, self.ttl, clock)
        self.closed = False
        self._logged: dict[tuple[str, ...], float] = {}
        self._hits = 0
        self._misses = 0
        self._stores = 0
        self._errors = 0
        self._skipped = 0
        self._unchanged = 0  # identical answers not rewritten
        self._dropped = 0  # queued writes dropped for a full queue

    # --- state ------------------------------------------------------------------------------

    def usable(self) -> bool:
        """True while the cache is enabled and not closed."""
        return self.config.enabled and not self.closed

    def mark_closed(self) -> bool:
        """Refuse later calls and drop the memory layer; True if it was already closed."""
        with self.lock:
            already, self.closed = self.closed, True
        self.memory.clear()
        return already

    def state(self, storage: str, available: bool) -> str:
        """The state ``__repr__`` shows: disabled, closed, ``storage`` or memory-only."""
        if not self.config.enabled:
            return "disabled"
        if self.closed:
            return "closed"
        return storage if available else "memory-only"

    # --- reads ------------------------------------------------------------------------------

    def get_held(self, key: str) -> CachedAnswer | None:
        """The answer for ``key`` if the memory layer holds it, else ``None`` (not a miss).

        No I/O and no wait beyond an in-process lock. A hit counts as one.
        """
        if not self.usable():
            return None
        answer = self.memory.get(key, self.clock())
        if answer is not None:
            with self.lock:
                self._hits += 1
        return answer

    def lookup(
        self, key: str, read: Callable[[str, float], CachedAnswer | None]
    ) -> CachedAnswer | None:
        """``get``: the memory layer, else ``read(key, now)``; a failure is a miss (logged)."""
        if not self.usable():
            return None
        try:
            now = self.clock()
            answer = self.memory.get(key, now)
            if answer is None:
                answer = read(key, now)
        except Exception as exc:  # noqa: BLE001 - the cache must never break a request
            self.failure("get", exc, "treated as a miss")
            answer = None
        return self.count_lookup(answer)

    def from_row(self, key: str, raw: object, now: float) -> CachedAnswer | None:
        """The hit a stored row gives at ``now`` (None: no row, or expired); promoted to memory."""
        if raw is None:
            return None
        entry = decode_row(raw)
        answer = entry.answer(now, self.ttl)
        if answer is not None:
            self.memory.put(key, entry)
        return answer

    # --- writes -----------------------------------------------------------------------------

    def guarded(self, operation: str, consequence: str, step: Callable[[], _T], failed: _T) -> _T:
        """``step()``, or ``failed`` when it raises (counted and logged, never raised)."""
        try:
            return step()
        except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
            self.failure(operation, exc, consequence)
            return failed

    def snapshot(
        self, key: str, completion: ChatCompletion, stored_at: float | None
    ) -> tuple[dict[str, Any], float, float] | None:
        """``(body, stored_at, now)`` of an answer being stored, or None (incomplete, too old).

        ``body`` is a private copy: later changes to ``completion`` cannot leak into the cache.
        """
        if type(key) is not str:
            raise TypeError(f"cache keys must be str, not {type(key).__name__}")
        if not is_complete(completion):
            _log.debug("not caching an incomplete answer in %s", self.where)
            return None
        now = self.clock()
        at = clamp_stored_at(now, stored_at, self.ttl)
        if at is None:
            return None
        return completion.model_dump(mode="json"), at, now

    def prepare_row(
        self, key: str, completion: ChatCompletion, stored_at: float | None
    ) -> StoredRow | None:
        """The row ``put`` writes, or None (incomplete, or too old); the memory layer is updated."""
        snapshot = self.snapshot(key, completion, stored_at)
        if snapshot is None:
            return None
        body, at, now = snapshot
        text = encode_row(body, at)
        self.memory.put(key, LocalAnswer(body, at))
        return StoredRow(text, self.ttl - (now - at))

    def take(
        self,
        key: str,
        completion: ChatCompletion,
        stored_at: float | None,
        pending: bool,
        *,
        rewrite: bool = False,
    ) -> QueuedWrite | Literal["unchanged"] | None:
        """Snapshot an answer being stored and hold it in memory; what the disk write needs.

        None: refused (incomplete, or too old). ``"unchanged"`` (counted): the key already
        holds the same answer, on disk or on its way there (``pending``), younger than
        :data:`UNCHANGED_FOR` of the ttl, and neither ``stored_at`` nor ``rewrite`` was given.
        """
        snapshot = self.snapshot(key, completion, stored_at)
        if snapshot is None:
            return None
        body, at, now = snapshot
        held = self.memory.peek(key)
        check = stored_at is None and not rewrite
        if check and held is not None and fresh(held.stored_at, now, self.ttl):
            known = isinstance(held, HeldEntry) or held.on_disk or pending
            if known and same_answer(held, body):
                self.count_unchanged()
                return "unchanged"
        new = LocalAnswer(body, at)
        self.memory.put(key, new)
        return QueuedWrite(new, check_disk=held is None and check)

    def import_row(
        self,
        key: str,
        completion: ChatCompletion,
        stored_at: float,
        write: Callable[[float], ImportOutcome],
    ) -> ImportOutcome:
        """``import_row``: the checks and outcomes around ``write(at)``, the storage step.

        ``write`` stores the row dated ``at`` unless storage holds one for the key dated ``at``
        or later (``"kept"``); it returns ``"imported"``, ``"kept"`` or ``"failed"``.
        """
        from ._jsonl import check_import  # noqa: PLC0415 - loaded on first use

        check_import(key, completion, stored_at)
        if not self.usable():
            return "failed"
        at = clamp_stored_at(self.clock(), stored_at, self.ttl)
        if at is None:
            return "expired"
        outcome: ImportOutcome = self.guarded(
            "import", "row not imported", lambda: write(at), "failed"
        )
        self.count_store(outcome == "imported")
        return outcome

    # --- scans ------------------------------------------------------------------------------

    def export_rows(self, entries: Entries) -> Iterator[ExportRow]:
        """The servable (unexpired) ones of ``entries``, as export rows."""
        from ._jsonl import ExportRow  # noqa: PLC0415 - loaded on first use

        now = self.clock()
        for key, _raw, entry in entries:
            if not is_expired(entry.stored_at, now, self.ttl):
                yield ExportRow(key, entry.stored_at, entry.completion)

    def prune_rows(
        self, now: float, entries: Entries, delete: Callable[[str, Any, HeldEntry], int]
    ) -> int:
        """Remove the ones of ``entries`` expired at ``now`` with ``delete(key, raw, entry)``.

        ``delete`` returns how many rows it removed; the first failure stops pruning (logged).
        """
        removed = 0
        for key, raw, entry in entries:
            if not is_expired(entry.stored_at, now, self.ttl):
                continue
            try:
                removed += delete(key, raw, entry)
            except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
                self.failure("prune", exc, "pruning stopped")
                break
        return removed

    def ages(self, entries: Iterable[tuple[str, Any, HeldEntry]]) -> StoredAges:
        """``stats(scan=True)``: the ages of ``entries``."""
        from ._stats import StoredAges  # noqa: PLC0415 - loaded on first use

        ages = StoredAges(self.clock(), self.ttl)
        for _key, _raw, entry in entries:
            ages.add(entry.stored_at)
        return ages

    # --- counters ---------------------------------------------------------------------------

    def count_lookup(self, answer: CachedAnswer | None) -> CachedAnswer | None:
        """Count ``answer`` as a hit, or a miss when it is None; returns it."""
        with self.lock:
            if answer is None:
                self._misses += 1
            else:
                self._hits += 1
        return answer

    def count_stores(self, count: int) -> None:
        """Count ``count`` answers stored."""
        if count:
            with self.lock:
                self._stores += count

    def count_store(self, stored: bool) -> bool:
        """Count one answer stored when ``stored``; returns ``stored``."""
        self.count_stores(int(stored))
        return stored

    def count_unchanged(self) -> None:
        """Count an identical answer not rewritten."""
        with self.lock:
            self._unchanged += 1

    def count_dropped(self) -> None:
        """Count a queued write dropped for a full queue."""
        with self.lock:
            self._dropped += 1

    def stats(self, entries: int, size: int, ages: StoredAges | None, queued: int) -> CacheStats:
        """A snapshot of the counters, with what the storage reported."""
        from ._stats import CacheStats  # noqa: PLC0415 - loaded on first use

        memory_entries = self.memory.size()
        with self.lock:
            return CacheStats(
                directory=self.where,
                entries=entries,
                bytes=size,
                hits=self._hits,
                misses=self._misses,
                stores=self._stores,
                errors=self._errors,
                memory_entries=memory_entries,
                oldest=ages.oldest if ages is not None else None,
                newest=ages.newest if ages is not None else None,
                expired=ages.expired if ages is not None else None,
                skipped=self._skipped,
                unchanged=self._unchanged,
                queued=queued,
                dropped=self._dropped,
            )

    # --- failures ---------------------------------------------------------------------------

    def skip_row(self, operation: str, exc: BaseException) -> None:
        """A scan left out one unreadable row: counted in ``stats().skipped``, and logged."""
        with self.lock:
            self._skipped += 1
        self.failure(operation, exc, "row skipped")

    def failure(self, operation: str, exc: BaseException, consequence: str) -> None:
        """Count a failure; log it (see :meth:`warn_once`) unless ``describe`` says not to."""
        with self.lock:
            self._errors += 1
        failure = self._describe(exc)
        if failure is None:
            return
        self.warn_once(
            (operation, *failure.kind),
            "fallbackchain response cache at %s: %s during %s: %s (%s); %s",
            self.where,
            type(failure.error).__name__,
            operation,
            failure.error,
            failure.detail,
            consequence,
        )

    def warn_once(self, kind: tuple[str, ...], message: str, *args: object) -> None:
        """A WARNING, at most one per ``kind`` per minute of the cache's clock."""
        now = self.clock()
        with self.lock:
            last = self._logged.get(kind)
            if last is not None and 0.0 <= now - last < _LOG_INTERVAL:
                return
            self._logged[kind] = now
        _log.warning(message, *args)
