"""The disk cache: :class:`ResponseCache`, the last good answer per request, memory in front.

What a caller can rely on:

* :class:`ResponseCache` never raises from :meth:`~ResponseCache.get`,
  :meth:`~ResponseCache.put`, :meth:`~ResponseCache.stats`, :meth:`~ResponseCache.clear`,
  :meth:`~ResponseCache.prune`, :meth:`~ResponseCache.export_rows`,
  :meth:`~ResponseCache.iter_keys` or :meth:`~ResponseCache.close`
  (:meth:`~ResponseCache.import_row` raises only :class:`ValueError`, for invalid arguments;
  :meth:`~ResponseCache.export_jsonl` and :meth:`~ResponseCache.import_jsonl` only for the
  file they are given). Any failure (corrupt or
  unreadable database, bad row, full disk, permissions, ...) is logged as a WARNING on the
  ``fallbackchain.cache`` logger, at most once per failure kind per 60 seconds of the cache's
  clock, and treated as a miss or a skipped write. Log lines name the cache directory and the
  fallbackchain error class, never a prompt or an answer.
* :meth:`~ResponseCache.put` is synchronous: when it returns True the disk holds the answer.
  :meth:`~ResponseCache.put_later` (what a chain uses) costs the caller a snapshot and an
  enqueue: the answer is served at once (memory layer, or the queue itself), and one writer
  thread per cache writes the queue to disk, up to 32 answers per SQLite transaction (it waits
  up to 50 ms for more before it writes, unless a flush or close asks). The queue
  is written by :meth:`~ResponseCache.flush`, :meth:`~ResponseCache.close` and at interpreter
  exit; a ``kill -9`` loses what is queued, never a row (SQLite rolls back). A full queue drops
  its oldest write, counted and logged.
* An answer identical to the one a key holds (same ``model`` and ``choices``; ``id``,
  ``created``, ``usage`` and the like do not count) is not rewritten while the held one is
  younger than half the ttl (:data:`UNCHANGED_FOR`); after that it is, so an answer that keeps
  coming back never expires. Storing validates nothing: the memory layer keeps the answer's
  JSON dump and validates it on its first hit.
* Only complete answers are stored (every choice finished with ``stop``, ``length``,
  ``tool_calls`` or ``function_call``), and an entry at least ``ttl`` seconds old (by the
  cache's clock) is never served.
* Nothing read from the cache directory is ever unpickled: :class:`SafeJSONDisk` refuses
  pickled keys and values (diskcache would otherwise run code from a planted row), and refuses
  rows that name files outside the cache directory.
* Entries at least ``ttl`` old are removed by :meth:`~ResponseCache.prune`.
* Export and import (JSON Lines, one ``{"key", "stored_at", "completion"}`` object a line)
  carry an entry's original ``stored_at``, so a shipped cache keeps its ages. An import
  validates every line (JSON only, key format, a valid and complete chat completion), reports
  bad lines by number, never replaces an entry with an older one, and never unpickles. An
  export to a path is atomic and the file is private (``0600``).
* A :class:`CachedAnswer` may share its ``completion`` with the memory layer: treat it as
  read-only.
* The cache directory is private. :class:`ResponseCache` raises :class:`ConfigError` (naming
  the path and the reason) for an existing directory owned by another user or writable by
  group or others, reached through another user's symlink, or below a directory every user can
  write that is not sticky; it creates directories ``0700`` and files ``0600``.
* A database that exists but cannot be written (read-only filesystem, full disk, no write
  permission) is opened read-only (:attr:`ResponseCache.read_only`): hits are served, writes
  are skipped (the memory layer still holds them), one WARNING says so, and a writable open is
  tried again every 60 seconds of the cache's clock.
* Scans (export, ``stats(scan=True)``, prune) skip an unreadable row (logged, and counted in
  :attr:`CacheStats.skipped`) and go on with the rest.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Final, Unpack

import diskcache
from openai.types.chat import ChatCompletion

from .._config import CacheConfig
from .._errors import CacheError
from ._common import CacheCommon, Entries
from ._disk_handle import DiskHandle
from ._disk_writes import DiskWrites, Written, peek
from ._failures import describe_disk_failure
from ._protocol import Cache, PutOptions
from ._read_only import connect_read_only
from ._rows import CachedAnswer, HeldEntry, decode_row
from ._safe_disk import SafeJSONDisk
from ._writer import WRITE_QUEUE_SIZE, WriteBehind

if TYPE_CHECKING:
    # Export, import and stats load on first use: no request needs them (#14: import time).
    from ._jsonl import ExportRow, ImportOutcome
    from ._stats import CacheStats

__all__ = ["ResponseCache"]

_ITER_BATCH: Final = 100
_CLEAR_ATTEMPTS: Final = 10  # a failed clear that made progress is retried, this many times in all


class ResponseCache(Cache):
    """The last good answer per request key: a TTL memory layer in front of a diskcache.

    See the module docstring for the guarantees. Thread-safe; open one per process and
    directory. ``clock`` is the wall clock used for ``stored_at``, ``ttl`` and the log and
    reopen intervals (injectable for tests).
    """

    def __init__(
        self,
        config: CacheConfig,
        *,
        clock: Callable[[], float] = time.time,
        write_queue: int = WRITE_QUEUE_SIZE,
    ) -> None:
        self._directory = os.path.abspath(os.path.expandvars(os.path.expanduser(config.directory)))
        self._common = CacheCommon(
            config, clock, where=self._directory, describe=describe_disk_failure
        )
        self._handle = DiskHandle(self._common, self._directory)
        self._rows = DiskWrites(self._common, self._handle)
        # put_later's queue; one writer thread drains it.
        self._writes = WriteBehind(
            write_queue,
            write_batch=self._rows.write_batch,
            write_one=self._rows.write_counted,
            on_drop=self._dropped_one,
            on_thread_end=self._writer_ended,
        )
        if config.enabled:
            self._handle.open_first()

    # --- public API ------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        """The absolute cache directory."""
        return self._directory

    @property
    def disk_available(self) -> bool:
        """True while the disk layer is open and usable (perhaps only for reading)."""
        return self._handle.disk is not None

    @property
    def read_only(self) -> bool:
        """True when the storage could only be opened for reading.

        That is a read-only filesystem, a full disk or no write permission: stored answers
        are served, new ones are kept in the memory layer only, and ``clear``, ``prune`` and
        ``import_row`` change nothing on disk. Opening it writable is tried again every 60
        seconds of the cache's clock; this turns False once that works.
        """
        return self._handle.read_only

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer for ``key``, or ``None``. Never raises; never serves expired."""
        return self._common.lookup(key, self._read)

    def get_held(self, key: str) -> CachedAnswer | None:
        """The answer for ``key`` if the memory layer holds it, else ``None`` (not a miss).

        No disk I/O and no wait beyond an in-process lock: safe to call on an event loop
        before falling back to :meth:`get` in a thread. A hit counts as one.
        """
        return self._common.get_held(key)

    def put(self, key: str, completion: ChatCompletion, **options: Unpack[PutOptions]) -> bool:
        """Store a complete answer now, synchronously; True if the disk holds it. Never raises.

        True when it was written, or when the key already holds the same answer (on disk or
        queued by :meth:`put_later`) younger than :data:`UNCHANGED_FOR` of the ttl: then
        nothing is rewritten (counted in :attr:`CacheStats.unchanged`), unless ``rewrite``
        (a refresh: the entry is written and restamped) or ``stored_at`` is given. A queued
        :meth:`put_later` answer for the key is superseded. The chain itself uses
        :meth:`put_later`.

        Incomplete answers (a choice without an accepted finish_reason, or no choice) are
        refused. The memory layer is updated even when the disk layer is unavailable.
        ``stored_at`` (default: now by the cache's clock; a later time counts as now) dates the
        answer, for restoring an entry with its original age; one at least ``ttl`` old is not
        stored.
        """
        common = self._common
        if not common.usable():
            return False
        stored_at, rewrite = options.get("stored_at"), options.get("rewrite", False)
        outcome = common.guarded(
            "put",
            "answer not stored",
            lambda: self._put(key, completion, stored_at, rewrite),
            "skipped",
        )
        if outcome == "stored":
            self._rows.evict()
        return outcome == "unchanged" or common.count_store(outcome == "stored")

    def put_later(self, key: str, completion: ChatCompletion) -> bool:
        """Store a complete answer in the background; True if it was accepted. Never raises.

        The caller pays for a snapshot of the answer and an enqueue: the memory layer holds
        the answer at once, :meth:`get` serves it at once (also with no memory layer), and one
        writer thread per cache writes it to disk. An answer the key already holds (see
        :data:`UNCHANGED_FOR`) is neither queued nor rewritten. A newer answer for a queued
        key replaces it in the queue. Everything queued is written by :meth:`flush`,
        :meth:`close` and at interpreter exit; a ``kill -9`` loses the queue, never a row
        already written. When ``write_queue`` keys are waiting, the oldest is dropped
        (counted in :attr:`CacheStats.dropped`, a WARNING at most once a minute): the caller's
        path never waits for the disk. Refused (False) as :meth:`put` refuses.
        """
        if not self._common.usable():
            return False
        return self._common.guarded(
            "put", "answer not stored", lambda: self._later(key, completion), False
        )

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every answer queued by :meth:`put_later` is written (or failed, logged).

        True when the queue is empty, False if ``timeout`` seconds passed first. Never raises.
        """
        return self._writes.flush(timeout)

    def stats(self, *, scan: bool = False) -> CacheStats:
        """Counters and sizes. Never raises.

        With ``scan=True`` every disk row is read to fill in ``oldest``, ``newest`` and
        ``expired`` (slower on a large cache; the hit and miss counters are not touched).
        """
        entries = size = 0
        if scan:
            self.flush()  # a scan lists what put_later queued too
        disk = self._handle.current()
        if disk is not None:
            try:
                entries = len(disk)
                size = int(disk.volume())
            except Exception as exc:  # noqa: BLE001 - stats are best effort
                self._common.failure("stats", exc, "disk sizes reported as 0")
                entries = size = 0
        ages = self._common.ages(self._scan_entries("stats")) if scan else None
        return self._common.stats(entries, size, ages, self._writes.count())

    def clear(self) -> int:
        """Remove every entry; returns the number of disk rows removed. Never raises.

        When the disk layer is unavailable, the number of memory entries removed; when it is
        :attr:`read_only`, 0 (nothing on disk is removed). A failure part way (logged once, with
        the rows removed and left; e.g. a planted row naming a file outside the directory, whose
        row is deleted but whose file is left alone) does not stop clearing while it makes
        progress, and the count is what was really removed: rows before minus rows left (other
        writers in the meantime can make it an estimate).
        """
        memory_removed = self._common.memory.clear()
        self._writes.cancel()  # queued answers are removed too: never written after this
        disk = self._handle.current()
        if disk is None:
            return memory_removed
        if self._handle.read_only:
            return 0
        removed = 0
        failure: Exception | None = None
        left: int | None = 0
        for _attempt in range(_CLEAR_ATTEMPTS):
            before = _row_count(disk)
            try:
                with self._writes.lock:
                    removed += int(disk.clear())
                left = 0
                break
            except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
                failure, left = exc, _row_count(disk)
                progress = _removed_by_failed_clear(exc, before, left)
                removed += progress
                if not progress or not left:
                    break
        if failure is not None:  # logged once, with the final counts
            shown = "an unknown number of" if left is None else str(left)
            self._common.failure("clear", failure, f"{removed} rows removed, {shown} left")
        return removed

    def iter_keys(self) -> Iterator[str]:
        """Yield the key of every unexpired disk row (memory-only entries are not listed).

        Pickled or non-text keys are refused, logged and skipped; a database error ends the
        iteration (logged). Never raises.
        """
        self.flush()  # what put_later queued is listed too
        disk = self._handle.current()
        if disk is None:
            return
        safe_disk: SafeJSONDisk = disk.disk
        failure = self._common.failure
        try:
            con = connect_read_only(self._directory)
        except Exception as exc:  # noqa: BLE001
            failure("iter_keys", exc, "no keys listed")
            return
        try:
            last_rowid = 0
            while True:
                try:
                    rows = con.execute(
                        "SELECT rowid, key, raw FROM Cache WHERE rowid > ?"
                        " AND (expire_time IS NULL OR expire_time > ?)"
                        " ORDER BY rowid LIMIT ?",
                        (last_rowid, time.time(), _ITER_BATCH),
                    ).fetchall()
                except Exception as exc:  # noqa: BLE001
                    failure("iter_keys", exc, "key listing stopped")
                    return
                if not rows:
                    return
                for rowid, db_key, raw in rows:
                    last_rowid = rowid
                    try:
                        key = safe_disk.get(db_key, raw)
                    except CacheError as exc:
                        failure("iter_keys", exc, "key skipped")
                        continue
                    yield key
        finally:
            con.close()

    def prune(self) -> int:
        """Remove every entry at least ``ttl`` old (by the cache's clock). Never raises.

        Returns the number of disk rows removed (0 when :attr:`read_only`). Rows that cannot be
        read are left alone (:meth:`get` treats them as misses). A row rewritten while pruning
        is never removed.
        """
        self.flush()  # a queued answer is a row like any other
        now = self._common.clock()
        self._common.memory.prune(now)
        disk = self._handle.current()
        if disk is None or self._handle.read_only:
            return 0
        removed = 0
        try:
            with self._writes.lock:
                removed += int(disk.expire())  # rows past diskcache's own (wall-clock) expiry
        except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
            self._common.failure("prune", exc, "expired rows kept")

        def delete_if_same(key: str, _text: object, entry: HeldEntry) -> int:
            with self._writes.lock, disk.transact(retry=True):
                current = peek(disk, key)
                if current is not None and current.stored_at == entry.stored_at:
                    return int(bool(disk.delete(key)))
            return 0

        return removed + self._common.prune_rows(now, self._scan_entries("prune"), delete_if_same)

    def export_rows(self) -> Iterator[ExportRow]:
        """Yield every servable disk entry (unexpired, readable, complete), oldest row first.

        Unreadable rows are logged and skipped; the memory layer is not listed, but what
        :meth:`put_later` queued is written first. Does not count as hits or misses. Never
        raises.
        """
        self.flush()
        return self._common.export_rows(self._scan_entries("export"))

    def import_row(self, key: str, completion: ChatCompletion, stored_at: float) -> ImportOutcome:
        """Store an exported answer unless the cache holds one for ``key`` as new or newer.

        Raises :class:`ValueError` when ``key`` is not a :func:`cache_key` key, ``completion``
        is not a complete answer, or ``stored_at`` is not a finite number >= 0 (a time in the
        future counts as now). Otherwise never raises; see :data:`ImportOutcome` for the result.
        The comparison and the write are one disk transaction.
        """

        def write(at: float) -> ImportOutcome:
            disk = self._handle.current()
            if disk is None or self._handle.read_only:
                return "failed"
            with self._writes.lock, disk.transact(retry=True):
                current = peek(disk, key)
                if current is not None and current.stored_at >= at:
                    return "kept"
                written = self._put(key, completion, at, False)
            if written != "stored":
                return "failed"
            self._rows.evict()  # after the commit (see DiskWrites.evict)
            return "imported"

        return self._common.import_row(key, completion, stored_at, write)

    def close(self) -> None:
        """Write what :meth:`put_later` queued, close the disk layer, drop the memory layer.

        Idempotent; later calls miss, and later puts are refused.
        """
        self._writes.stop()
        self._common.mark_closed()
        disk = self._handle.detach()
        if disk is not None:
            try:
                disk.close()
            except Exception as exc:  # noqa: BLE001
                self._common.failure("close", exc, "ignored")

    def __repr__(self) -> str:
        state = self._common.state("disk", self.disk_available)
        return f"ResponseCache({self._directory!r}, {state})"

    # --- internals -------------------------------------------------------------------------

    @property
    def _disk(self) -> Any:
        """The open disk layer as it is (``diskcache.Cache``, read-only store, or None)."""
        return self._handle.disk

    def _read(self, key: str, now: float) -> CachedAnswer | None:
        """get() after a memory miss: the write queue, then the disk."""
        pending = self._writes.waiting(key)  # on its way to the disk
        if pending is not None:
            return pending.held.answer(now, self._common.ttl)
        disk = self._handle.current()
        if disk is None:
            return None
        try:
            text = disk.get(key)
        except Exception as exc:
            self._handle.drop_if_corrupt(disk, exc)
            raise
        return self._common.from_row(key, text, now)

    def _later(self, key: str, completion: ChatCompletion) -> bool:
        """put_later(): hold the answer and queue it, unless refused or unchanged."""
        taken = self._common.take(key, completion, None, self._writes.is_pending(key))
        if taken is None:
            return False
        if taken != "unchanged":
            self._writes.enqueue(key, taken)
        return True

    def _put(
        self, key: str, completion: ChatCompletion, at: float | None, rewrite: bool
    ) -> Written:
        """put(): write now, superseding a queued answer for the key; the caller counts."""
        writes = self._writes
        with writes.lock:
            taken = self._common.take(key, completion, at, writes.is_pending(key), rewrite=rewrite)
            if taken is None:
                return "skipped"
            if taken == "unchanged":
                return taken
            writes.supersede(key)  # older than this one: never written now
            return self._rows.write_alone(key, taken)

    def _dropped_one(self) -> None:
        """The write queue was full and dropped its oldest answer: counted, and logged."""
        self._common.count_dropped()
        self._common.warn_once(
            ("put", "queue full"),
            "fallbackchain response cache at %s: the write queue is full (%d answers); "
            "dropped the oldest queued answer (the disk is slower than the answers coming in)",
            self._directory,
            self._writes.size,
        )

    def _writer_ended(self) -> None:
        """In the writer thread as it ends."""
        # diskcache keeps one SQLite connection per thread: close this thread's, so the
        # database is checkpointed and released when the cache closes.
        disk = self._handle.disk
        if isinstance(disk, diskcache.Cache):
            with contextlib.suppress(Exception):
                disk.close()

    def _scan_entries(self, operation: str) -> Entries:
        """Every readable disk row with its key and text; unreadable rows are logged, skipped."""
        disk = self._handle.current()
        if disk is None:
            return
        for key in self.iter_keys():
            try:
                text = disk.get(key)
                if text is None:
                    continue
                entry = decode_row(text)
            except CacheError as exc:
                self._common.skip_row(operation, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
                self._handle.drop_if_corrupt(disk, exc)
                self._common.failure(operation, exc, "scan stopped")
                return
            yield key, text, entry


def _row_count(disk: Any) -> int | None:
    """How many rows ``disk`` holds, or None when that cannot be read."""
    try:
        return len(disk)
    except Exception:  # noqa: BLE001 - a count is best effort
        return None


def _removed_by_failed_clear(exc: BaseException, before: int | None, left: int | None) -> int:
    """How many rows a ``clear`` that raised ``exc`` removed (counts: before, and left)."""
    if isinstance(exc, diskcache.Timeout) and exc.args and type(exc.args[0]) is int:
        return exc.args[0]  # diskcache counted the rows it deleted before the lock timed out
    if before is None or left is None:
        return 0
    return max(before - left, 0)
