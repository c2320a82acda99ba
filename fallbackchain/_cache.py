"""The fallback response cache: the last good answer for a prompt, in memory and on disk.

What a caller can rely on:

* :func:`cache_key` is a pure function. The same logical request (same model, same messages,
  same answer-shaping parameters, whatever the dict key order) always gives the same key;
  transport-only options (``stream``, ``timeout``, ``extra_headers``, ``user``, ...) never
  change it; any other parameter, known or not, does. The key format (``"fc1-"`` + SHA-256 hex)
  is part of the on-disk format.
* :class:`ResponseCache` never raises from :meth:`~ResponseCache.get`,
  :meth:`~ResponseCache.put`, :meth:`~ResponseCache.stats`, :meth:`~ResponseCache.clear`,
  :meth:`~ResponseCache.iter_keys` or :meth:`~ResponseCache.close`. Any failure (corrupt or
  unreadable database, bad row, full disk, permissions, ...) is logged as a WARNING on the
  ``fallbackchain.cache`` logger, at most once per failure kind per 60 seconds of the cache's
  clock, and treated as a miss or a skipped write. Log lines name the cache directory and the
  fallbackchain error class, never a prompt or an answer.
* Only complete answers are stored (every choice finished with ``stop``, ``length``,
  ``tool_calls`` or ``function_call``), and an entry at least ``ttl`` seconds old (by the
  cache's clock) is never served.
* Nothing read from the cache directory is ever unpickled: :class:`SafeJSONDisk` refuses
  pickled keys and values (diskcache would otherwise run code from a planted row), and refuses
  rows that name files outside the cache directory.
* A :class:`CachedAnswer` may share its ``completion`` with the memory layer: treat it as
  read-only.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import pathlib
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Final, NamedTuple

import cachetools
import diskcache
import diskcache.core
import openai
import pydantic
from openai.types.chat import ChatCompletion

from ._config import CacheConfig
from ._errors import CacheCorruptError, CacheError, UnsafeCacheRowError

__all__ = ["CacheStats", "CachedAnswer", "ResponseCache", "SafeJSONDisk", "cache_key"]

_log = logging.getLogger("fallbackchain.cache")

KEY_PREFIX: Final = "fc1-"
ROW_FORMAT: Final = 1

TRANSPORT_ONLY_PARAMS: Final = frozenset(
    {
        "stream",
        "stream_options",
        "timeout",
        "extra_headers",
        "extra_query",
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)
"""Request options that cannot change the answer; :func:`cache_key` leaves them out."""

COMPLETE_FINISH_REASONS: Final = frozenset({"stop", "length", "tool_calls", "function_call"})
"""A choice with any other finish_reason (``None``, ``content_filter``) is not cached."""

_LOG_INTERVAL: Final = 60.0  # seconds of the cache clock between two logs of one failure kind
_REOPEN_INTERVAL: Final = 60.0  # seconds of the cache clock between attempts to open the disk
_SQLITE_TIMEOUT: Final = 1.0  # the cache must not hold a request for long on a locked database
_MAX_ROW_FILE_BYTES: Final = 64 << 20
_ITER_BATCH: Final = 100

_MODE_RAW: Final[int] = diskcache.core.MODE_RAW
_MODE_BINARY: Final[int] = diskcache.core.MODE_BINARY
_MODE_TEXT: Final[int] = diskcache.core.MODE_TEXT
_MODE_PICKLE: Final[int] = diskcache.core.MODE_PICKLE
_DB_NAME: Final[str] = diskcache.core.DBNAME


# --------------------------------------------------------------------------------------------
# Keys
# --------------------------------------------------------------------------------------------


def _omitted(value: object) -> bool:
    return isinstance(value, openai.NotGiven | openai.Omit)


def _canonical(value: Any) -> Any:
    """Turn ``value`` into plain JSON data: dicts, lists, str, numbers, bools and None."""
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, pydantic.BaseModel):
        # What the SDK puts on the wire for a model: only the fields that were set.
        return _canonical(value.model_dump(mode="json", exclude_unset=True))
    if callable(getattr(value, "model_dump", None)):
        return _canonical(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if _omitted(v):
                continue
            if isinstance(k, str):
                name = k
            elif isinstance(k, int) and not isinstance(k, bool):
                name = str(k)
            else:
                raise TypeError(f"cache_key: unsupported mapping key type {type(k).__name__}")
            out[name] = _canonical(v)
        return out
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray | memoryview):
        return [_canonical(v) for v in value if not _omitted(v)]
    raise TypeError(f"cache_key: cannot represent a {type(value).__name__} value as JSON")


def cache_key(
    model: str, messages: Sequence[Mapping[str, Any] | Any], params: Mapping[str, Any]
) -> str:
    """The cache key of one chat request: ``"fc1-"`` + SHA-256 hex of its canonical JSON.

    The canonical JSON is ``{"model", "messages", "params"}`` with sorted keys, no whitespace
    and non-ASCII kept as is. ``params`` loses the transport-only options
    (:data:`TRANSPORT_ONLY_PARAMS`); every other parameter, including unknown ones, counts as
    answer-shaping. Pydantic models are dumped as the SDK sends them (JSON mode, set fields
    only); ``openai.NOT_GIVEN`` / ``openai.omit`` values are dropped.

    Raises :class:`TypeError` for a value that has no JSON form (bytes, sets, arbitrary
    objects): such a request cannot be cached.
    """
    shaping = {
        name: value
        for name, value in params.items()
        if name not in TRANSPORT_ONLY_PARAMS and not _omitted(value)
    }
    document = {
        "model": _canonical(model),
        "messages": _canonical(list(messages)),
        "params": _canonical(shaping),
    }
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return KEY_PREFIX + digest


# --------------------------------------------------------------------------------------------
# The Disk: text only, never pickle
# --------------------------------------------------------------------------------------------


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
                return _decode_text(bytes(value))
            raise CacheCorruptError(f"cache row value is a {type(value).__name__}, not text")
        if mode in (_MODE_TEXT, _MODE_BINARY):
            return _decode_text(self._read_row_file(filename))
        raise CacheCorruptError(f"cache row has unknown mode {mode!r}")

    def remove(self, file_path: Any) -> None:
        """Remove a row's file, refusing any path that leads outside the cache directory."""
        self._row_path(file_path)
        super().remove(file_path)

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


def _decode_text(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CacheCorruptError("cache row is not UTF-8 text") from exc


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A cache hit. ``completion`` may be shared with the memory layer: do not mutate it."""

    completion: ChatCompletion
    stored_at: float
    """Wall-clock seconds (the cache's clock) when the answer was written."""
    age: float
    """``clock() - stored_at`` when it was read (never negative)."""


@dataclass(frozen=True, slots=True)
class CacheStats:
    """A snapshot of one :class:`ResponseCache`.

    ``entries`` and ``bytes`` describe the disk layer (0 when it is unavailable); ``hits``,
    ``misses``, ``stores`` and ``errors`` count this instance's calls; ``memory_entries`` is the
    size of the memory layer.
    """

    directory: str
    entries: int
    bytes: int
    hits: int
    misses: int
    stores: int
    errors: int
    memory_entries: int


class _Entry(NamedTuple):
    completion: ChatCompletion
    stored_at: float


def _is_complete(completion: ChatCompletion) -> bool:
    choices = completion.choices
    return bool(choices) and all(c.finish_reason in COMPLETE_FINISH_REASONS for c in choices)


def _decode_row(text: str) -> _Entry:
    """Parse one disk row. Raises :class:`CacheCorruptError` for anything unexpected."""
    try:
        row = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CacheCorruptError("cache row is not valid JSON") from exc
    if not isinstance(row, dict):
        raise CacheCorruptError("cache row is not a JSON object")
    row_format = row.get("format")
    if type(row_format) is not int or row_format != ROW_FORMAT:
        raise CacheCorruptError("cache row has an unknown format")
    stored_at = row.get("stored_at")
    if (
        not isinstance(stored_at, int | float)
        or isinstance(stored_at, bool)
        or not math.isfinite(stored_at)
    ):
        raise CacheCorruptError("cache row has no valid stored_at")
    body = row.get("completion")
    if not isinstance(body, dict):
        raise CacheCorruptError("cache row has no completion object")
    try:
        completion = ChatCompletion.model_validate(body)
    except (pydantic.ValidationError, ValueError, TypeError, RecursionError) as exc:
        raise CacheCorruptError("cache row is not a valid chat completion") from exc
    if not _is_complete(completion):
        raise CacheCorruptError("cache row holds an incomplete answer")
    return _Entry(completion, float(stored_at))


def _as_cache_error(exc: BaseException) -> CacheError:
    """Map a foreign error to the fallbackchain class that names it, chained from it."""
    if isinstance(exc, CacheError):
        return exc
    mapped: CacheError
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        mapped = CacheCorruptError("the cache database is corrupt or not a database")
    elif isinstance(exc, sqlite3.Error):
        mapped = CacheError("a cache database operation failed")
    elif isinstance(exc, diskcache.Timeout):
        mapped = CacheError("the cache database stayed locked")
    elif isinstance(exc, OSError):
        mapped = CacheError("a cache file operation failed")
    else:
        mapped = CacheError("unexpected error in the cache")
    mapped.__cause__ = exc
    return mapped


def _cause_detail(exc: BaseException) -> str:
    """A short, content-free description of an error: its class and code, never its text."""
    detail = type(exc).__name__
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", None)
        if name:
            detail += f" {name}"
    elif isinstance(exc, OSError) and exc.errno is not None:
        detail += f" {errno.errorcode.get(exc.errno, exc.errno)}"
    return detail


def _is_corruption(exc: BaseException) -> bool:
    """True when the open database itself is damaged (so it should be dropped and reopened)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, sqlite3.DatabaseError) and not isinstance(
            current, sqlite3.OperationalError
        ):
            return True
        current = current.__cause__
    return False


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------


class ResponseCache:
    """The last good answer per request key: a TTL memory layer in front of a diskcache.

    See the module docstring for the guarantees. Thread-safe; open one per process and
    directory. ``clock`` is the wall clock used for ``stored_at``, ``ttl`` and the log and
    reopen intervals (injectable for tests).
    """

    def __init__(self, config: CacheConfig, *, clock: Callable[[], float] = time.time) -> None:
        self._config = config
        self._clock = clock
        self._ttl = float(config.ttl)
        self._directory = os.path.abspath(os.path.expandvars(os.path.expanduser(config.directory)))
        self._lock = threading.Lock()  # memory layer, counters, log state: dict operations only
        self._open_lock = threading.Lock()
        self._memory: cachetools.TTLCache[str, _Entry, float] | None = None
        self._disk: Any = None  # diskcache.Cache (untyped) or None
        self._last_open_attempt: float | None = None
        self._closed = False
        self._logged: dict[tuple[str, str, str], float] = {}
        self._hits = 0
        self._misses = 0
        self._stores = 0
        self._errors = 0
        if not config.enabled:
            return
        if config.memory_items > 0:
            self._memory = cachetools.TTLCache(
                maxsize=config.memory_items, ttl=self._ttl, timer=clock
            )
        with self._open_lock:
            self._open_disk()

    # --- public API ------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        """The absolute cache directory."""
        return self._directory

    @property
    def disk_available(self) -> bool:
        """True while the disk layer is open and usable."""
        return self._disk is not None

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer for ``key``, or ``None``. Never raises; never serves expired."""
        if not self._config.enabled or self._closed:
            return None
        try:
            answer = self._get(key)
        except Exception as exc:  # noqa: BLE001 - the cache must never break a request
            self._failure("get", exc, "treated as a miss")
            answer = None
        with self._lock:
            if answer is None:
                self._misses += 1
            else:
                self._hits += 1
        return answer

    def put(self, key: str, completion: ChatCompletion) -> bool:
        """Store a complete answer; True if it was written to disk. Never raises.

        Incomplete answers (a choice without an accepted finish_reason, or no choice) are
        refused. The memory layer is updated even when the disk layer is unavailable.
        """
        if not self._config.enabled or self._closed:
            return False
        try:
            stored = self._put(key, completion)
        except Exception as exc:  # noqa: BLE001 - the cache must never break a request
            self._failure("put", exc, "answer not stored")
            return False
        if stored:
            with self._lock:
                self._stores += 1
        return stored

    def stats(self) -> CacheStats:
        """Counters and sizes. Never raises."""
        entries = size = 0
        disk = self._current_disk()
        if disk is not None:
            try:
                entries = len(disk)
                size = int(disk.volume())
            except Exception as exc:  # noqa: BLE001 - stats are best effort
                self._failure("stats", exc, "disk sizes reported as 0")
                entries = size = 0
        with self._lock:
            memory_entries = len(self._memory) if self._memory is not None else 0
            return CacheStats(
                directory=self._directory,
                entries=entries,
                bytes=size,
                hits=self._hits,
                misses=self._misses,
                stores=self._stores,
                errors=self._errors,
                memory_entries=memory_entries,
            )

    def clear(self) -> int:
        """Remove every entry; returns the number of disk rows removed.

        When the disk layer is unavailable, the number of memory entries removed. Never raises.
        """
        with self._lock:
            memory_removed = 0
            if self._memory is not None:
                memory_removed = len(self._memory)
                self._memory.clear()
        disk = self._current_disk()
        if disk is None:
            return memory_removed
        try:
            return int(disk.clear())
        except diskcache.Timeout as exc:
            self._failure("clear", exc, "cache partly cleared")
            return int(exc.args[0]) if exc.args and isinstance(exc.args[0], int) else 0
        except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
            self._failure("clear", exc, "cache not cleared")
            return 0

    def iter_keys(self) -> Iterator[str]:
        """Yield the key of every unexpired disk row (memory-only entries are not listed).

        Pickled or non-text keys are refused, logged and skipped; a database error ends the
        iteration (logged). Never raises.
        """
        disk = self._current_disk()
        if disk is None:
            return
        safe_disk: SafeJSONDisk = disk.disk
        try:
            uri = pathlib.Path(self._directory, _DB_NAME).as_uri() + "?mode=ro"
            con = sqlite3.connect(uri, uri=True, timeout=_SQLITE_TIMEOUT)
        except Exception as exc:  # noqa: BLE001
            self._failure("iter_keys", exc, "no keys listed")
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
                    self._failure("iter_keys", exc, "key listing stopped")
                    return
                if not rows:
                    return
                for rowid, db_key, raw in rows:
                    last_rowid = rowid
                    try:
                        key = safe_disk.get(db_key, raw)
                    except CacheError as exc:
                        self._failure("iter_keys", exc, "key skipped")
                        continue
                    yield key
        finally:
            con.close()

    def close(self) -> None:
        """Close the disk layer and drop the memory layer. Idempotent; later calls miss."""
        with self._lock:
            self._closed = True
            disk, self._disk = self._disk, None
            if self._memory is not None:
                self._memory.clear()
        if disk is not None:
            try:
                disk.close()
            except Exception as exc:  # noqa: BLE001
                self._failure("close", exc, "ignored")

    def __enter__(self) -> ResponseCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "disk" if self.disk_available else "memory-only"
        if not self._config.enabled:
            state = "disabled"
        elif self._closed:
            state = "closed"
        return f"ResponseCache({self._directory!r}, {state})"

    # --- internals -------------------------------------------------------------------------

    def _get(self, key: str) -> CachedAnswer | None:
        now = self._clock()
        memory = self._memory
        if memory is not None:
            with self._lock:
                entry = memory.get(key)
            if entry is not None:
                age = now - entry.stored_at
                if age < self._ttl:
                    return CachedAnswer(entry.completion, entry.stored_at, max(age, 0.0))
                with self._lock:
                    memory.pop(key, None)
        disk = self._current_disk()
        if disk is None:
            return None
        try:
            text = disk.get(key)
        except Exception as exc:
            self._drop_disk_if_corrupt(disk, exc)
            raise
        if text is None:
            return None
        entry = _decode_row(text)
        age = now - entry.stored_at
        if age >= self._ttl:
            return None
        if memory is not None:
            with self._lock:
                memory[key] = entry
        return CachedAnswer(entry.completion, entry.stored_at, max(age, 0.0))

    def _put(self, key: str, completion: ChatCompletion) -> bool:
        if type(key) is not str:
            raise TypeError(f"cache keys must be str, not {type(key).__name__}")
        if not _is_complete(completion):
            _log.debug("not caching an incomplete answer in %s", self._directory)
            return False
        now = self._clock()
        body = completion.model_dump(mode="json")
        text = json.dumps(
            {"format": ROW_FORMAT, "stored_at": now, "completion": body},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        memory = self._memory
        if memory is not None:
            # A private copy, exactly what a disk hit would give: later changes the caller
            # makes to ``completion`` cannot leak into answers served from memory.
            entry = _Entry(ChatCompletion.model_validate(body), now)
            with self._lock:
                memory[key] = entry
        disk = self._current_disk()
        if disk is None:
            return False
        try:
            return bool(disk.set(key, text, expire=self._ttl))
        except Exception as exc:
            self._drop_disk_if_corrupt(disk, exc)
            raise

    def _current_disk(self) -> Any:
        """The open diskcache, reopening it if it is due; ``None`` when unavailable."""
        disk = self._disk
        if disk is not None or self._closed or not self._config.enabled:
            return disk
        last = self._last_open_attempt
        if last is not None and 0.0 <= self._clock() - last < _REOPEN_INTERVAL:
            return None
        if not self._open_lock.acquire(blocking=False):
            return None  # another thread is opening it; do not wait
        try:
            if self._disk is None and not self._closed:
                self._open_disk()
            return self._disk
        finally:
            self._open_lock.release()

    def _open_disk(self) -> None:
        """Open the disk layer (caller holds ``_open_lock``); log and stay memory-only on error."""
        self._last_open_attempt = self._clock()
        try:
            self._prepare_directory()
            settings: dict[str, Any] = dict(diskcache.DEFAULT_SETTINGS)
            # Pin every setting, so values planted in the Settings table are overwritten.
            settings.update(
                eviction_policy="least-recently-stored",
                size_limit=self._config.size_limit,
                statistics=0,
                tag_index=0,
            )
            disk = diskcache.Cache(
                self._directory, timeout=_SQLITE_TIMEOUT, disk=SafeJSONDisk, **settings
            )
        except Exception as exc:  # noqa: BLE001 - carry on memory-only
            self._failure("open", exc, "continuing memory-only")
            return
        with self._lock:
            closed = self._closed
            if not closed:
                self._disk = disk
        if closed:
            disk.close()

    def _prepare_directory(self) -> None:
        path = self._directory
        try:
            os.makedirs(path, mode=0o700)
        except FileExistsError:
            if not os.path.isdir(path):
                raise NotADirectoryError(
                    errno.ENOTDIR, "cache directory is not a directory"
                ) from None
            self._check_existing_directory(path)
        else:
            os.chmod(path, 0o700)  # makedirs' mode is filtered by the umask

    def _check_existing_directory(self, path: str) -> None:
        if os.name != "posix":  # pragma: no cover
            return
        info = os.stat(path)
        if info.st_mode & 0o022 or info.st_uid != os.geteuid():
            self._warn_once(
                ("open", "permissions", ""),
                "fallbackchain response cache at %s: the directory is writable by other users "
                "or owned by another user; they could plant answers (rows are never unpickled)",
                path,
            )

    def _drop_disk_if_corrupt(self, disk: Any, exc: BaseException) -> None:
        if not _is_corruption(exc):
            return
        now = self._clock()
        with self._lock:
            if self._disk is disk:
                self._disk = None
                self._last_open_attempt = now
        with contextlib.suppress(Exception):  # already failing; the failure is logged
            disk.close()

    def _failure(self, operation: str, exc: BaseException, consequence: str) -> None:
        mapped = _as_cache_error(exc)
        cause = mapped.__cause__ if mapped.__cause__ is not None else mapped
        with self._lock:
            self._errors += 1
        kind = (operation, type(mapped).__name__, type(cause).__name__)
        self._warn_once(
            kind,
            "fallbackchain response cache at %s: %s during %s: %s (%s); %s",
            self._directory,
            type(mapped).__name__,
            operation,
            mapped,
            _cause_detail(cause),
            consequence,
        )

    def _warn_once(self, kind: tuple[str, str, str], message: str, *args: object) -> None:
        now = self._clock()
        with self._lock:
            last = self._logged.get(kind)
            if last is not None and 0.0 <= now - last < _LOG_INTERVAL:
                return
            self._logged[kind] = now
        _log.warning(message, *args)
