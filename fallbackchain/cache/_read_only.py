"""The read-only fallback: a cache database that exists but cannot be written is still read.

A read-only filesystem, a full disk or no write permission (:func:`cannot_write`) leaves the
stored answers servable: :class:`ReadOnlyStore` reads them through a read-only SQLite
connection (:func:`connect_read_only`) and refuses every write.
"""

from __future__ import annotations

import errno
import pathlib
import sqlite3
import threading
import time
from typing import Any, Final

from .._errors import CacheError
from ._failures import root_cause
from ._safe_disk import DB_NAME, SQLITE_TIMEOUT, SafeJSONDisk

__all__ = ["ReadOnlyStore", "cannot_write", "connect_read_only"]

_UNWRITABLE_ERRNOS: Final = frozenset(
    {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
)
_UNWRITABLE_SQLITE: Final = ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_FULL", "SQLITE_PERM")


def cannot_write(exc: BaseException) -> bool:
    """True when ``exc`` says the cache directory cannot be written (but may be readable)."""
    cause = root_cause(exc)
    if isinstance(cause, sqlite3.OperationalError):
        name = getattr(cause, "sqlite_errorname", "") or ""
        return name.startswith(_UNWRITABLE_SQLITE) or name.startswith("SQLITE_IOERR")
    return isinstance(cause, OSError) and cause.errno in _UNWRITABLE_ERRNOS


def connect_read_only(directory: str) -> sqlite3.Connection:
    """A read-only connection to the cache database of ``directory``.

    ``mode=ro`` first; only when SQLite cannot even set up its shared-memory file next to the
    database (a read-only directory or filesystem, a full disk), ``immutable=1``: no locks,
    and anything left in a WAL file is not seen. Raises :class:`sqlite3.Error` when the
    database cannot be read.
    """
    uri = pathlib.Path(directory, DB_NAME).as_uri()
    try:
        return _probed_connection(uri + "?mode=ro")
    except sqlite3.OperationalError as exc:
        if not cannot_write(exc):  # e.g. locked: a live database must not be read immutable
            raise
    return _probed_connection(uri + "?mode=ro&immutable=1")


def _probed_connection(uri: str) -> sqlite3.Connection:
    """A connection to ``uri`` that has read the database once (SQLite opens lazily)."""
    con = sqlite3.connect(uri, uri=True, timeout=SQLITE_TIMEOUT, check_same_thread=False)
    try:
        con.execute("SELECT COUNT(*) FROM Settings").fetchone()
    except BaseException:
        con.close()
        raise
    return con


class ReadOnlyStore:
    """The disk layer opened for reading only: what of ``diskcache.Cache`` the cache reads with.

    ``get``, ``len()``, ``volume()``, ``close()`` and the ``disk`` (a :class:`SafeJSONDisk`)
    work as diskcache's do; every write raises :class:`CacheError`. Thread-safe.
    """

    def __init__(self, directory: str) -> None:
        self.disk = SafeJSONDisk(directory)
        self._con = connect_read_only(directory)
        self._lock = threading.Lock()

    def get(self, key: str) -> str | None:
        db_key, raw = self.disk.put(key)
        with self._lock:
            row = self._con.execute(
                "SELECT mode, filename, value FROM Cache WHERE key = ? AND raw = ?"
                " AND (expire_time IS NULL OR expire_time > ?)",
                (db_key, raw, time.time()),
            ).fetchone()
        if row is None:
            return None
        mode, filename, value = row
        return self.disk.fetch(mode, filename, value, False)

    def __len__(self) -> int:
        with self._lock:
            ((count,),) = self._con.execute("SELECT COUNT(*) FROM Cache").fetchall()
        return int(count)

    def volume(self) -> int:
        with self._lock:
            ((pages,),) = self._con.execute("PRAGMA page_count").fetchall()
            ((page_size,),) = self._con.execute("PRAGMA page_size").fetchall()
            row = self._con.execute("SELECT value FROM Settings WHERE key = 'size'").fetchone()
        files = int(row[0]) if row is not None and isinstance(row[0], int) else 0
        return int(pages) * int(page_size) + files

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def _refuse(self, *args: object, **kwargs: object) -> Any:
        raise CacheError("the cache is open read-only")

    set = clear = expire = delete = transact = _refuse
