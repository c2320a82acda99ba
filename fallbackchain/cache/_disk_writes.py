"""Writing answers to the disk layer: one row, or a batch in one SQLite transaction.

What a caller can rely on (the caller holds the write lock, :attr:`WriteBehind.lock`): a row is
written only when the disk is open and writable and the answer has time left to live; an answer
the disk row already holds (same model and choices, young enough) is not rewritten (counted as
unchanged); every write transaction evicts what diskcache would (expired rows, then the oldest
stored past ``size_limit``) once, not once per row (#14); a corrupt database is dropped, to be
reopened. A ``kill -9`` during a transaction loses it, never a row: SQLite rolls it back.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Mapping
from typing import Any, Literal

import diskcache

from .._errors import CacheError
from ._common import CacheCommon
from ._disk_handle import DiskHandle
from ._rows import HeldEntry, answer_part, decode_row, encode_row, fresh, seconds
from ._writer import QueuedWrite

__all__ = ["DiskWrites", "Written", "peek"]

Written = Literal["stored", "unchanged", "skipped"]
"""What one write did: the row was written, the disk already held the answer, or neither."""


class DiskWrites:
    """The disk cache's writes, for :class:`ResponseCache` and its writer thread."""

    def __init__(self, common: CacheCommon, handle: DiskHandle) -> None:
        self._common = common
        self._handle = handle

    def write_batch(self, batch: list[tuple[str, QueuedWrite]]) -> None:
        """Write ``batch`` in one disk transaction (one commit); one by one if that fails.

        The caller holds the write lock. A ``kill -9`` during the transaction loses the
        batch, never a row: SQLite rolls it back.
        """
        disk = self._handle.current()
        if len(batch) > 1 and isinstance(disk, diskcache.Cache) and not self._handle.read_only:
            outcomes: list[str] = []
            committed = False
            with contextlib.suppress(Exception):  # rolled back: each is tried (and logged) alone
                with disk.transact(retry=True):
                    outcomes = [self._write(key, item) for key, item in batch]
                committed = True
            if committed:
                if "stored" in outcomes:
                    self.evict()
                self._common.count_stores(outcomes.count("stored"))
                return
        for key, item in batch:
            self.write_counted(key, item)

    def write_counted(self, key: str, item: QueuedWrite) -> None:
        """:meth:`_write`, never raising: failures are logged (caller holds the write lock)."""
        common = self._common
        outcome = common.guarded(
            "put", "answer not stored", lambda: self.write_alone(key, item), "skipped"
        )
        if outcome == "stored":
            self.evict()
        common.count_store(outcome == "stored")

    def write_alone(self, key: str, item: QueuedWrite) -> Written:
        """:meth:`_write` in a transaction of its own; the caller then calls :meth:`evict`.

        The caller holds the write lock. Inside another transaction (``import_row``), this one
        is part of it, and the eviction waits for the outer commit.
        """
        disk = self._handle.current()
        if disk is None or self._handle.read_only:
            return "skipped"
        try:
            with disk.transact():  # not retried: a locked database fails the write (logged)
                written = self._write(key, item)
        except Exception as exc:
            item.held.on_disk = False  # rolled back
            self._handle.drop_if_corrupt(disk, exc)
            raise
        return written

    def evict(self) -> None:
        """Evict down to the size limit; call it after a write transaction commits.

        Once per transaction, not once per row (``cull_limit=0``: DiskHandle). Only after the
        commit: diskcache measures the database file, which shrinks at a commit (auto-vacuum),
        so a cull inside the writing transaction sees the file never shrink and evicts every
        row. Never raises: a failed eviction is tried again after the next write.
        """
        disk = self._handle.current()
        if isinstance(disk, diskcache.Cache) and not self._handle.read_only:
            with contextlib.suppress(Exception):
                disk.cull()

    def _write(self, key: str, item: QueuedWrite) -> Written:
        """Write one answer to disk (caller holds the write lock); the caller counts a store.

        Inside a transaction: the caller commits, then evicts (:meth:`evict`).

        ``skipped``: no writable disk, or the answer expired while it waited. ``unchanged``
        (counted here): the disk row already holds it.
        """
        disk = self._handle.current()
        if disk is None or self._handle.read_only:
            return "skipped"
        held = item.held
        now = self._common.clock()
        ttl_left = self._common.ttl - (now - held.stored_at)
        if ttl_left <= 0:
            return "skipped"
        try:
            if item.check_disk and self._unchanged_on_disk(disk, key, held.body, now):
                self._common.count_unchanged()
                held.on_disk = True
                return "unchanged"
            stored = bool(disk.set(key, encode_row(held.body, held.stored_at), expire=ttl_left))
        except Exception as exc:
            self._handle.drop_if_corrupt(disk, exc)
            raise
        held.on_disk = stored
        return "stored" if stored else "skipped"

    def _unchanged_on_disk(self, disk: Any, key: str, body: Mapping[str, Any], now: float) -> bool:
        """True when the disk row for ``key`` holds the same answer and is young enough.

        Reads the row's JSON only (no validation); an unreadable row is False (overwritten).
        """
        try:
            text = disk.get(key)
            row = json.loads(text) if isinstance(text, str) else None
        except (CacheError, ValueError, RecursionError):
            return False
        if not isinstance(row, dict) or not isinstance(row.get("completion"), dict):
            return False
        at = seconds(row.get("stored_at"))
        if at is None or not fresh(at, now, self._common.ttl):
            return False
        return answer_part(row["completion"]) == answer_part(body)


def peek(disk: Any, key: str) -> HeldEntry | None:
    """The disk row for ``key`` (expired or not) without counting it; unreadable is None."""
    try:
        text = disk.get(key)
        return None if text is None else decode_row(text)
    except CacheError:
        return None
