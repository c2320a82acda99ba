"""The disk layer's database handle: opened safely, reopened when due, read-only when it must.

:class:`DiskHandle` opens the cache directory's diskcache (with :class:`SafeJSONDisk`, every
setting pinned, files ``0600``); falls back to a :class:`ReadOnlyStore` when the database
exists but cannot be written; tries a writable open again every minute of the cache's clock;
and drops a database found corrupt, to be reopened later. Failures are logged through the
cache's :class:`CacheCommon`, never raised (an unsafe directory on the first open excepted).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from typing import Any, Final

import diskcache

from .._errors import ConfigError
from ._common import CacheCommon
from ._directory import create_private, make_private, prepare_directory
from ._failures import cause_detail, is_corruption, root_cause
from ._read_only import ReadOnlyStore, cannot_write
from ._safe_disk import DB_NAME, SQLITE_TIMEOUT, SafeJSONDisk

__all__ = ["DiskHandle"]

_log = logging.getLogger("fallbackchain.cache")

_REOPEN_INTERVAL: Final = 60.0  # seconds of the cache clock between attempts to open the disk


class DiskHandle:
    """The open disk layer of one cache directory (``diskcache.Cache`` or read-only), or None.

    :attr:`disk` is None while unavailable; :attr:`read_only` says it could only be opened for
    reading. Swaps happen under the cache's lock (``common.lock``). Thread-safe.
    """

    def __init__(self, common: CacheCommon, directory: str) -> None:
        self._common = common
        self.directory = directory
        self.disk: Any = None  # diskcache.Cache (untyped), a ReadOnlyStore, or None
        self.read_only = False
        self._open_lock = threading.Lock()
        self._last_open_attempt: float | None = None

    def open_first(self) -> None:
        """The constructor's open: raises :class:`ConfigError` for an unsafe directory."""
        with self._open_lock:
            self._open(first=True)

    def current(self) -> Any:
        """The open disk layer, (re)opening it if due; ``None`` when unavailable.

        A read-only one is tried writable again every :data:`_REOPEN_INTERVAL` (the disk may
        have been freed, or remounted).
        """
        common = self._common
        disk = self.disk
        if common.closed or not common.config.enabled or (disk is not None and not self.read_only):
            return disk
        last = self._last_open_attempt
        if last is not None and 0.0 <= common.clock() - last < _REOPEN_INTERVAL:
            return disk
        if not self._open_lock.acquire(blocking=False):
            return disk  # another thread is opening it; do not wait
        try:
            if not common.closed:
                if self.disk is None:
                    self._open()
                elif self.read_only:
                    self._reopen_writable()
            return self.disk
        finally:
            self._open_lock.release()

    def detach(self) -> Any:
        """Forget the disk layer (closing the cache); returns it, for the caller to close."""
        with self._common.lock:
            disk, self.disk = self.disk, None
        return disk

    def drop_if_corrupt(self, disk: Any, exc: BaseException) -> None:
        """Drop ``disk`` when ``exc`` says the database is damaged (reopened when due)."""
        if not is_corruption(exc):
            return
        now = self._common.clock()
        with self._common.lock:
            if self.disk is disk:
                self.disk = None
                self._last_open_attempt = now
        with contextlib.suppress(Exception):  # already failing; the failure is logged
            disk.close()

    def _reopen_writable(self) -> None:
        """Swap the read-only disk layer for a writable one if writing works now.

        The caller holds ``_open_lock``. Otherwise stay read-only, quietly (the first warning
        said so).
        """
        self._last_open_attempt = self._common.clock()
        try:
            disk = self._open_writable()
        except Exception:  # noqa: BLE001 - still cannot write
            return
        with self._common.lock:
            old, closed = self.disk, self._common.closed
            if not closed:
                self.disk, self.read_only = disk, False
        with contextlib.suppress(Exception):  # a read-only connection has nothing to lose
            (disk if closed else old).close()
        _log.warning(
            "fallbackchain response cache at %s: writable again; new answers are stored",
            self.directory,
        )

    def _open(self, *, first: bool = False) -> None:
        """Open the disk layer (caller holds ``_open_lock``); log and stay memory-only on error.

        An unsafe directory raises :class:`ConfigError` on the ``first`` open (the
        constructor) and is logged on a later one. When the database exists but cannot be
        written (read-only filesystem, full disk, no write permission), it is opened read-only.
        """
        common = self._common
        self._last_open_attempt = common.clock()
        try:
            prepare_directory(self.directory)
        except ConfigError as exc:
            if first:
                raise
            common.warn_once(
                ("open", "unsafe directory"),
                "fallbackchain response cache: %s; continuing memory-only",
                exc,
            )
            return
        except Exception as exc:  # noqa: BLE001 - carry on memory-only
            common.failure("open", exc, "continuing memory-only")
            return
        read_only = False
        try:
            disk = self._open_writable()
        except Exception as exc:  # noqa: BLE001 - carry on read-only, or memory-only
            disk = self._open_read_only(exc)
            if disk is None:
                return
            read_only = True
        with common.lock:
            closed = common.closed
            if not closed:
                self.disk = disk
                self.read_only = read_only
        if closed:
            disk.close()

    def _open_writable(self) -> Any:
        settings: dict[str, Any] = dict(diskcache.DEFAULT_SETTINGS)
        # Pin every setting, so values planted in the Settings table are overwritten.
        # cull_limit=0: diskcache would evict after every row it writes (three SQL statements
        # a row); the cache calls ``cull()`` once per write transaction instead (#14).
        settings.update(
            eviction_policy="least-recently-stored",
            size_limit=self._common.config.size_limit,
            statistics=0,
            tag_index=0,
            cull_limit=0,
        )
        database = os.path.join(self.directory, DB_NAME)
        create_private(database)  # SQLite gives its -wal and -shm files the database's mode
        make_private(database)  # one made by an older version or another tool
        return diskcache.Cache(
            self.directory, timeout=SQLITE_TIMEOUT, disk=SafeJSONDisk, **settings
        )

    def _open_read_only(self, exc: Exception) -> ReadOnlyStore | None:
        """After the writable open failed with ``exc``: the database read-only, or None (logged)."""
        common = self._common
        if not cannot_write(exc):
            common.failure("open", exc, "continuing memory-only")
            return None
        try:
            store = ReadOnlyStore(self.directory)
        except Exception:  # noqa: BLE001 - nothing to serve: the first failure is the story
            common.failure("open", exc, "continuing memory-only")
            return None
        common.warn_once(
            ("open", "read-only"),
            "fallbackchain response cache at %s: cannot write (%s); opened read-only: stored "
            "answers are served, new answers are not stored",
            self.directory,
            cause_detail(root_cause(exc)),
        )
        return store
