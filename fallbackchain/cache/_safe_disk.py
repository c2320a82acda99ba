"""The JSON-only diskcache ``Disk``: text in, text out, never pickle (CVE-2025-69872).

diskcache's own ``Disk`` unpickles whatever a row says, so a row planted in the cache
directory could run code. :class:`SafeJSONDisk` stores ``str`` keys and values only, refuses
pickled rows and keys without touching :mod:`pickle`, refuses rows naming files outside the
cache directory, and writes its files private (directories ``0700``, files ``0600``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat
from typing import Any, Final

import diskcache
import diskcache.core

from .._errors import CacheCorruptError, UnsafeCacheRowError
from ._rows import decode_text

__all__ = ["DB_NAME", "SQLITE_TIMEOUT", "SafeJSONDisk"]

SQLITE_TIMEOUT: Final = 1.0
"""Seconds a cache connection waits on a locked database: it must not hold a request long."""
_MAX_ROW_FILE_BYTES: Final = 64 << 20
_MODE_RAW: Final[int] = diskcache.core.MODE_RAW
_MODE_BINARY: Final[int] = diskcache.core.MODE_BINARY
_MODE_TEXT: Final[int] = diskcache.core.MODE_TEXT
_MODE_PICKLE: Final[int] = diskcache.core.MODE_PICKLE
DB_NAME: Final[str] = diskcache.core.DBNAME
"""The SQLite database file diskcache keeps in the cache directory."""


class SafeJSONDisk(diskcache.Disk):  # type: ignore[misc]
    """A diskcache ``Disk`` that stores text and never unpickles.

    Keys must be ``str`` and are stored raw. Values must be ``str`` (the cache stores JSON
    text) and are stored in diskcache's raw (inline) or text (file) modes. Reading a row whose
    key or value is pickled raises :class:`UnsafeCacheRowError` without touching
    :mod:`pickle`; a row naming a file outside the cache directory, or holding something that
    is not UTF-8 text, raises :class:`CacheCorruptError`. File handles (``read=True``) are not
    supported.
    """

    def __init__(
        self,
        directory: str,
        min_file_size: int = 0,
        pickle_protocol: int = 0,
        **unused_settings: object,
    ) -> None:
        # Unknown ``disk_*`` settings left in the database's Settings table are ignored rather
        # than failing the open.
        super().__init__(directory, min_file_size=min_file_size, pickle_protocol=pickle_protocol)
        self._real_directory = os.path.realpath(directory)

    # keys

    def put(self, key: Any) -> tuple[str, bool]:
        """Return the database key and raw flag for ``key``, which must be a ``str``."""
        if type(key) is not str:  # a str subclass would be pickled by the base class
            raise TypeError(f"SafeJSONDisk keys must be str, not {type(key).__name__}")
        return key, True

    def get(self, key: Any, raw: Any) -> str:
        """Return the key of a row; a pickled key (``raw`` false) is refused unread."""
        if not raw:
            raise UnsafeCacheRowError("refused a pickled cache key")
        if type(key) is not str:
            raise CacheCorruptError(f"cache key is a {type(key).__name__}, not text")
        return key

    # values

    def store(
        self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN
    ) -> tuple[int, int, str | None, Any]:
        """Return ``(size, mode, filename, db_value)`` for a ``str`` value; never pickles."""
        if read or type(value) is not str:
            raise TypeError(f"SafeJSONDisk values must be str, not {type(value).__name__}")
        size, mode, filename, db_value = super().store(value, False, key=key)
        if mode not in (_MODE_RAW, _MODE_TEXT):  # pragma: no cover - base class never does this
            if filename:
                self.remove(filename)
            raise TypeError("SafeJSONDisk refused to store a value in a non-text mode")
        return int(size), int(mode), filename, db_value

    def fetch(self, mode: Any, filename: Any, value: Any, read: Any) -> str:
        """Return the ``str`` value of a row; a pickled value is refused unread."""
        if mode == _MODE_PICKLE:
            raise UnsafeCacheRowError("refused a pickled cache row")
        if read:
            raise TypeError("SafeJSONDisk does not return file handles")
        if mode == _MODE_RAW:
            if type(value) is str:
                return value
            if isinstance(value, bytes | memoryview):
                return decode_text(bytes(value))
            raise CacheCorruptError(f"cache row value is a {type(value).__name__}, not text")
        if mode in (_MODE_TEXT, _MODE_BINARY):
            return decode_text(self._read_row_file(filename))
        raise CacheCorruptError(f"cache row has unknown mode {mode!r}")

    def remove(self, file_path: Any) -> None:
        """Remove a row's file, refusing any path that leads outside the cache directory."""
        self._row_path(file_path)
        super().remove(file_path)

    def _write(self, full_path: str, iterator: Any, mode: str, encoding: str | None = None) -> int:
        """Write a row file as the base class does, but private: directories 0700, files 0600."""
        directory = os.path.dirname(full_path)
        for attempt in range(1, 11):
            with contextlib.suppress(OSError):
                _make_row_directories(str(self._directory), directory)
            try:
                writer = open(full_path, mode, encoding=encoding, opener=_private_opener)  # noqa: SIM115
            except OSError:
                if attempt == 10:  # another cache may have removed the directory: retry
                    raise
                continue
            with writer:
                size = 0
                for chunk in iterator:
                    size += len(chunk)
                    writer.write(chunk)
                return size
        raise AssertionError("unreachable")  # pragma: no cover

    # helpers

    def _row_path(self, filename: object) -> str:
        if not isinstance(filename, str) or not filename or os.path.isabs(filename):
            raise CacheCorruptError("cache row names an invalid file")
        full = os.path.realpath(os.path.join(self._real_directory, filename))
        base = self._real_directory
        if full == base or os.path.commonpath([full, base]) != base:
            raise CacheCorruptError("cache row names a file outside the cache directory")
        return full

    def _read_row_file(self, filename: object) -> bytes:
        path = self._row_path(filename)
        extra = getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0)

        def opener(name: str, flags: int) -> int:
            return os.open(name, flags | extra)

        # A planted FIFO or device must not block or flood us: only small regular files.
        with open(path, "rb", opener=opener) as reader:
            info = os.fstat(reader.fileno())
            if not stat.S_ISREG(info.st_mode):
                raise CacheCorruptError("cache row file is not a regular file")
            data = reader.read(_MAX_ROW_FILE_BYTES + 1)
        if len(data) > _MAX_ROW_FILE_BYTES:
            raise CacheCorruptError("cache row file is too large")
        return data


def _private_opener(name: str, flags: int) -> int:
    return os.open(name, flags | getattr(os, "O_NOFOLLOW", 0), 0o600)


def _make_row_directories(base: str, directory: str) -> None:
    """Create ``directory`` and the missing ones between it and ``base``, each ``0700``."""
    relative = os.path.relpath(directory, base)
    current = base
    for part in pathlib.PurePath(relative).parts:
        current = os.path.join(current, part)
        with contextlib.suppress(FileExistsError):
            os.mkdir(current, 0o700)
