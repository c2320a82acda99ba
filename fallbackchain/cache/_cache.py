"""The fallback response cache: the last good answer for a prompt, in memory and on disk.

What a caller can rely on:

* :func:`cache_key` is a pure function. The same logical request (same model, same messages,
  same answer-shaping parameters, whatever the dict key order) always gives the same key;
  transport-only options (``stream``, ``timeout``, ``extra_headers``, ``user``, ...) never
  change it; any other parameter, known or not, does. Numbers are compared by value: ``1`` and
  ``1.0`` give the same key, ``True`` does not. The key format (``"fc1-"`` + SHA-256 hex) is
  part of the on-disk format.
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
  thread per cache writes the queue to disk, up to 32 answers per SQLite transaction. The queue
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

import atexit
import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import pathlib
import re
import sqlite3
import stat
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import IO, Any, Final, Literal, NamedTuple

import cachetools
import diskcache
import diskcache.core
import openai
import pydantic
from openai.types.chat import ChatCompletion

from .._config import CacheConfig
from .._errors import (
    CacheCorruptError,
    CacheError,
    ConfigError,
    FallbackChainError,
    UnsafeCacheRowError,
)

# CacheBase, CacheFailure, HeldEntry, StoredAges, StoredRow and decode_row are shared with
# the Redis cache (``_redis_cache``), which keeps the same rows and memory layer.
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

_log = logging.getLogger("fallbackchain.cache")

KEY_PREFIX: Final = "fc1-"
KEY_PATTERN: Final = re.compile(r"fc1-[0-9a-f]{64}")
"""What every key :func:`cache_key` makes looks like (``fullmatch``)."""
ROW_FORMAT: Final = 1
EXPORT_KEYS: Final = frozenset({"key", "stored_at", "completion"})
"""The keys of one line of an export file (see :meth:`ResponseCache.export_jsonl`)."""

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

UNCHANGED_FOR: Final = 0.5
"""An answer identical to the one a key holds is not rewritten while the held one is younger
than this fraction of ``ttl``; after that it is rewritten, so an answer that keeps coming back
never expires."""
_WRITE_BATCH: Final = 32  # answers the writer writes in one disk transaction
WRITE_QUEUE_SIZE: Final = 1024
"""Default bound of :meth:`ResponseCache.put_later`'s queue (distinct keys waiting)."""

_LOG_INTERVAL: Final = 60.0  # seconds of the cache clock between two logs of one failure kind
_REOPEN_INTERVAL: Final = 60.0  # seconds of the cache clock between attempts to open the disk
_SQLITE_TIMEOUT: Final = 1.0  # the cache must not hold a request for long on a locked database
_MAX_ROW_FILE_BYTES: Final = 64 << 20
_ITER_BATCH: Final = 100
_CLEAR_ATTEMPTS: Final = 10  # a failed clear that made progress is retried, this many times in all

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
    """Turn ``value`` into plain JSON data: dicts, lists, str, numbers, bools and None.

    A whole finite float becomes an int (``1.0`` is ``1``: JSON does not tell them apart, so
    a prompts file and application code must agree); a bool stays a bool (``true``, not ``1``).
    """
    if isinstance(value, float) and value.is_integer():  # False for inf and nan
        return int(value)
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
    and non-ASCII kept as is; a whole float is written as an int (``temperature=1.0`` and
    ``temperature=1`` are one key; ``True`` stays distinct from ``1``). ``params`` loses the
    transport-only options (:data:`TRANSPORT_ONLY_PARAMS`); every other parameter, including
    unknown ones, counts as answer-shaping. Pydantic models are dumped as the SDK sends them
    (JSON mode, set fields only); ``openai.NOT_GIVEN`` / ``openai.omit`` values are dropped.

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
    size of the memory layer. ``oldest``, ``newest`` (``stored_at`` of the oldest and newest
    servable disk entries, ``None`` when there is none) and ``expired`` (disk rows at least
    ``ttl`` old, waiting for :meth:`ResponseCache.prune`) are only filled in by
    ``stats(scan=True)``, which reads every row; otherwise they are ``None``. ``skipped``
    counts the stored rows this instance's scans (export, ``stats(scan=True)``, prune) could
    not read and left out: an export with ``skipped > 0`` is incomplete.
    """

    directory: str
    entries: int
    bytes: int
    hits: int
    misses: int
    stores: int
    errors: int
    memory_entries: int
    oldest: float | None = None
    newest: float | None = None
    expired: int | None = None
    skipped: int = 0
    unchanged: int = 0
    """Puts not written because the key already held the same answer (see
    :data:`UNCHANGED_FOR`)."""
    queued: int = 0
    """Writes waiting in :meth:`ResponseCache.put_later`'s queue at the time of the snapshot."""
    dropped: int = 0
    """Queued writes dropped, oldest first, because the queue was full (logged)."""


@dataclass(frozen=True, slots=True)
class LineError:
    """One bad line of a JSON Lines input file; ``str()`` is ``"FILE:LINE: message"``."""

    file: str
    line: int
    """1-based line number."""
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class InputFileError(FallbackChainError, ValueError):
    """A JSON Lines input file (prompts, or a cache export) cannot be used.

    Raised for a missing or unreadable file, and in strict mode for a file with bad lines
    (then ``errors`` lists every one of them). The message is one line naming the file.
    """

    def __init__(self, message: str, *, file: str, errors: Sequence[LineError] = ()) -> None:
        super().__init__(message)
        self.file = file
        self.errors = tuple(errors)


class ExportRow(NamedTuple):
    """One servable cache entry, as :meth:`ResponseCache.export_rows` yields it."""

    key: str
    stored_at: float
    completion: ChatCompletion


ImportOutcome = Literal["imported", "kept", "expired", "failed"]
"""What :meth:`ResponseCache.import_row` did with one row.

``imported``: stored. ``kept``: the cache already holds an answer for the key stored at the
same time or later, which is never replaced by an older one. ``expired``: at least ``ttl`` old,
so not stored. ``failed``: the cache is disabled, closed, read-only or its disk is unavailable,
or the write failed (logged).
"""


@dataclass(frozen=True, slots=True)
class ImportReport:
    """The result of :meth:`ResponseCache.import_jsonl`: counts per outcome, and bad lines."""

    imported: int
    kept: int
    expired: int
    failed: int
    invalid: int
    errors: tuple[LineError, ...]

    @property
    def ok(self) -> bool:
        """True when every line was valid and nothing failed."""
        return self.invalid == 0 and self.failed == 0


# --------------------------------------------------------------------------------------------
# Rows and the memory layer: the rules every storage (disk, Redis) shares
# --------------------------------------------------------------------------------------------


def _expired(stored_at: float, now: float, ttl: float) -> bool:
    """The ttl rule: an entry at least ``ttl`` old at ``now`` (the cache's clock) is not served."""
    return now - stored_at >= ttl


def _clamp_stored_at(now: float, stored_at: float | None, ttl: float) -> float | None:
    """When an entry written at ``now`` is dated, or None when that is at least ``ttl`` ago.

    ``stored_at`` defaults to ``now``; a later time counts as ``now``.
    """
    at = now if stored_at is None else min(float(stored_at), now)
    return None if _expired(at, now, ttl) else at


class HeldEntry(NamedTuple):
    completion: ChatCompletion
    stored_at: float

    def answer(self, now: float, ttl: float) -> CachedAnswer | None:
        """The hit this entry gives at ``now``, or None when it is expired."""
        if _expired(self.stored_at, now, ttl):
            return None
        return CachedAnswer(self.completion, self.stored_at, max(now - self.stored_at, 0.0))


class _Held:
    """An answer put in this process, held as its JSON-mode dump (a private copy).

    Validated into a ``ChatCompletion`` only on its first hit, so storing an answer costs one
    dump and no second validation. ``on_disk`` turns True once the disk holds this very row.
    """

    __slots__ = ("_completion", "body", "on_disk", "stored_at")

    def __init__(self, body: dict[str, Any], stored_at: float) -> None:
        self.body = body
        self.stored_at = stored_at
        self.on_disk = False
        self._completion: ChatCompletion | None = None

    def answer(self, now: float, ttl: float) -> CachedAnswer | None:
        """The hit this answer gives at ``now``, or None when it is expired."""
        if _expired(self.stored_at, now, ttl):
            return None
        completion = self._completion
        if completion is None:  # two threads may both validate: same result, no harm
            completion = self._completion = ChatCompletion.model_validate(self.body)
        return CachedAnswer(completion, self.stored_at, max(now - self.stored_at, 0.0))


def _answer_part(body: Mapping[str, Any]) -> tuple[object, object]:
    """What makes two answers "the same": the model and the choices.

    The per-call metadata (``id``, ``created``, ``usage``, ``system_fingerprint``, ...) is
    left out: a repeated identical answer differs there and nowhere else.
    """
    return body.get("model"), body.get("choices")


def _same_answer(held: HeldEntry | _Held, body: Mapping[str, Any]) -> bool:
    if isinstance(held, _Held):
        return _answer_part(held.body) == _answer_part(body)
    return _answer_part(held.completion.model_dump(mode="json")) == _answer_part(body)


def _fresh(stored_at: float, now: float, ttl: float) -> bool:
    """Young enough that an identical answer is not rewritten (see :data:`UNCHANGED_FOR`)."""
    return 0.0 <= now - stored_at < ttl * UNCHANGED_FOR


class _Pending(NamedTuple):
    """An answer on its way to the disk."""

    held: _Held
    check_disk: bool
    """The memory layer held nothing for the key: compare with the disk row before writing."""


class StoredRow(NamedTuple):
    """A row ready to be written: its JSON text and the seconds it has left to live."""

    text: str
    ttl_left: float


def _seconds(value: object) -> float | None:
    """``value`` as finite seconds, or None: not a number (a bool is not), or out of range.

    JSON integers are unbounded: one too large for a float is refused here, not by an
    ``OverflowError`` later.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        seconds = float(value)
    except OverflowError:
        return None
    return seconds if math.isfinite(seconds) else None


def _is_complete(completion: ChatCompletion) -> bool:
    choices = completion.choices
    return bool(choices) and all(c.finish_reason in COMPLETE_FINISH_REASONS for c in choices)


def _encode_row(body: Mapping[str, Any], stored_at: float) -> str:
    """The stored form of an answer (``body``: its JSON-mode dump), read by :func:`decode_row`."""
    return json.dumps(
        {"format": ROW_FORMAT, "stored_at": stored_at, "completion": body},
        ensure_ascii=False,
        separators=(",", ":"),
    )


def decode_row(raw: object) -> HeldEntry:
    """Parse one stored row: text, or UTF-8 bytes as Redis returns them. JSON only.

    Raises :class:`UnsafeCacheRowError` for a pickle (refused unread) and
    :class:`CacheCorruptError` for anything else unexpected.
    """
    if isinstance(raw, memoryview | bytearray):
        raw = bytes(raw)
    if isinstance(raw, bytes):
        if raw[:1] == b"\x80":  # the pickle protocol 2+ opcode: never handed to pickle
            raise UnsafeCacheRowError("refused a pickled cache row")
        text = _decode_text(raw)
    elif isinstance(raw, str):
        text = raw
    else:
        raise CacheCorruptError(f"cache row is a {type(raw).__name__}, not text")
    try:
        row = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CacheCorruptError("cache row is not valid JSON") from exc
    if not isinstance(row, dict):
        raise CacheCorruptError("cache row is not a JSON object")
    row_format = row.get("format")
    if type(row_format) is not int or row_format != ROW_FORMAT:
        raise CacheCorruptError("cache row has an unknown format")
    stored_at = _seconds(row.get("stored_at"))
    if stored_at is None:
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
    return HeldEntry(completion, stored_at)


class _MemoryLayer:
    """The per-process TTL layer in front of a cache's storage; thread-safe.

    Ages are by the cache's clock, with the cache's ttl. ``maxsize`` 0 holds nothing.
    """

    def __init__(self, maxsize: int, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._items: cachetools.TTLCache[str, HeldEntry | _Held, float] | None = None
        if maxsize > 0:
            self._items = cachetools.TTLCache(maxsize=maxsize, ttl=ttl, timer=clock)

    def get(self, key: str, now: float) -> CachedAnswer | None:
        """The held answer for ``key`` unless expired at ``now`` (an expired one is dropped)."""
        items = self._items
        if items is None:
            return None
        with self._lock:
            entry = items.get(key)
        if entry is None:
            return None
        answer = entry.answer(now, self._ttl)
        if answer is None:
            with self._lock:
                items.pop(key, None)
        return answer

    def peek(self, key: str) -> HeldEntry | _Held | None:
        """What is held for ``key`` (perhaps expired), not counted as a lookup."""
        items = self._items
        if items is None:
            return None
        with self._lock:
            return items.get(key)

    def put(self, key: str, entry: HeldEntry | _Held) -> None:
        """Hold ``entry`` (an answer read from storage, or one being stored)."""
        if self._items is not None:
            with self._lock:
                self._items[key] = entry

    def prune(self, now: float) -> None:
        """Drop every entry expired at ``now``."""
        items = self._items
        if items is None:
            return
        with self._lock:
            for key, entry in list(items.items()):
                if _expired(entry.stored_at, now, self._ttl):
                    items.pop(key, None)

    def clear(self) -> int:
        """Drop everything; returns how many entries were held."""
        items = self._items
        if items is None:
            return 0
        with self._lock:
            count = len(items)
            items.clear()
        return count

    def size(self) -> int:
        if self._items is None:
            return 0
        with self._lock:
            return len(self._items)


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


@dataclass(slots=True)
class StoredAges:
    """``stats(scan=True)``: oldest and newest ``stored_at`` of servable entries, and expired."""

    now: float
    ttl: float
    oldest: float | None = None
    newest: float | None = None
    expired: int = 0

    def add(self, stored_at: float) -> None:
        if _expired(stored_at, self.now, self.ttl):
            self.expired += 1
            return
        self.oldest = stored_at if self.oldest is None else min(self.oldest, stored_at)
        self.newest = stored_at if self.newest is None else max(self.newest, stored_at)


class CacheFailure(NamedTuple):
    """How a cache names one failure in its WARNING (see :meth:`CacheBase._failure`)."""

    error: CacheError
    """The fallbackchain error class the log line names."""
    detail: str
    """A short, content-free description of the cause."""
    kind: tuple[str, ...]
    """With the operation, what one log line a minute is allowed for."""


class CacheBase:
    """What every response cache shares (this disk cache, and the Redis one).

    The config, the clock and ttl, the memory layer, the counters, the rate-limited failure
    log, and the steps of get/put/import/export/prune/stats that do not touch storage. A
    subclass does the storage I/O and supplies :attr:`directory` (named in log lines),
    :meth:`_scan_entries` and :meth:`_describe_failure`.
    """

    def __init__(self, config: CacheConfig, clock: Callable[[], float]) -> None:
        self._config = config
        self._clock = clock
        self._ttl = float(config.ttl)
        self._lock = threading.Lock()  # counters, log state, closed (and the disk handle)
        self._memory = _MemoryLayer(config.memory_items if config.enabled else 0, self._ttl, clock)
        self._closed = False
        self._logged: dict[tuple[str, ...], float] = {}
        self._hits = 0
        self._misses = 0
        self._stores = 0
        self._errors = 0
        self._skipped = 0
        self._unchanged = 0  # identical answers not rewritten
        self._dropped = 0  # queued writes dropped for a full queue
        self._read_only = False  # storage opened read-only: answers served, none stored

    @property
    def directory(self) -> str:
        """Where the entries live."""
        raise NotImplementedError

    # --- for the subclass ------------------------------------------------------------------

    def _scan_entries(self, operation: str) -> Iterator[tuple[str, Any, HeldEntry]]:
        """Every readable stored row as ``(key, raw value, entry)``; unreadable ones are logged."""
        raise NotImplementedError

    def _describe_failure(self, exc: BaseException) -> CacheFailure | None:
        """How to name ``exc`` in the WARNING; None: counted but not logged here."""
        raise NotImplementedError

    # --- shared steps ----------------------------------------------------------------------

    def get_held(self, key: str) -> CachedAnswer | None:
        """The answer for ``key`` if the memory layer holds it, else ``None`` (not a miss).

        No disk or network I/O and no wait beyond an in-process lock: safe to call on an
        event loop before falling back to :meth:`get` in a thread. A hit counts as one.
        """
        if not self._usable():
            return None
        answer = self._memory.get(key, self._clock())
        if answer is not None:
            with self._lock:
                self._hits += 1
        return answer

    def _usable(self) -> bool:
        return self._config.enabled and not self._closed

    def _mark_closed(self) -> bool:
        """Refuse later calls and drop the memory layer; True if it was already closed."""
        with self._lock:
            already, self._closed = self._closed, True
        self._memory.clear()
        return already

    def _state(self, storage: str, available: bool) -> str:
        """The state ``__repr__`` shows: disabled, closed, ``storage`` or memory-only."""
        if not self._config.enabled:
            return "disabled"
        if self._closed:
            return "closed"
        return storage if available else "memory-only"

    def _from_row(self, key: str, raw: object, now: float) -> CachedAnswer | None:
        """The hit a stored row gives at ``now`` (None: no row, or expired); promoted to memory."""
        if raw is None:
            return None
        entry = decode_row(raw)
        answer = entry.answer(now, self._ttl)
        if answer is not None:
            self._memory.put(key, entry)
        return answer

    def _snapshot(
        self, key: str, completion: ChatCompletion, stored_at: float | None
    ) -> tuple[dict[str, Any], float, float] | None:
        """``(body, stored_at, now)`` of an answer being stored, or None (incomplete, too old).

        ``body`` is a private copy: later changes to ``completion`` cannot leak into the cache.
        """
        if type(key) is not str:
            raise TypeError(f"cache keys must be str, not {type(key).__name__}")
        if not _is_complete(completion):
            _log.debug("not caching an incomplete answer in %s", self.directory)
            return None
        now = self._clock()
        at = _clamp_stored_at(now, stored_at, self._ttl)
        if at is None:
            return None
        return completion.model_dump(mode="json"), at, now

    def _prepare_row(
        self, key: str, completion: ChatCompletion, stored_at: float | None
    ) -> StoredRow | None:
        """The row ``put`` writes, or None (incomplete, or too old); the memory layer is updated."""
        snapshot = self._snapshot(key, completion, stored_at)
        if snapshot is None:
            return None
        body, at, now = snapshot
        text = _encode_row(body, at)
        self._memory.put(key, _Held(body, at))
        return StoredRow(text, self._ttl - (now - at))

    def _take(
        self,
        key: str,
        completion: ChatCompletion,
        stored_at: float | None,
        pending: bool,
        *,
        rewrite: bool = False,
    ) -> _Pending | Literal["unchanged"] | None:
        """Snapshot an answer being stored and hold it in memory; what the disk write needs.

        None: refused (incomplete, or too old). ``"unchanged"`` (counted): the key already
        holds the same answer, on disk or on its way there (``pending``), younger than
        :data:`UNCHANGED_FOR` of the ttl, and neither ``stored_at`` nor ``rewrite`` was given.
        """
        snapshot = self._snapshot(key, completion, stored_at)
        if snapshot is None:
            return None
        body, at, now = snapshot
        held = self._memory.peek(key)
        check = stored_at is None and not rewrite
        if check and held is not None and _fresh(held.stored_at, now, self._ttl):
            known = isinstance(held, HeldEntry) or held.on_disk or pending
            if known and _same_answer(held, body):
                with self._lock:
                    self._unchanged += 1
                return "unchanged"
        new = _Held(body, at)
        self._memory.put(key, new)
        return _Pending(new, check_disk=held is None and check)

    def _count_lookup(self, answer: CachedAnswer | None) -> CachedAnswer | None:
        with self._lock:
            if answer is None:
                self._misses += 1
            else:
                self._hits += 1
        return answer

    def _count_stores(self, count: int) -> None:
        if count:
            with self._lock:
                self._stores += count

    def _count_store(self, stored: bool) -> bool:
        if stored:
            with self._lock:
                self._stores += 1
        return stored

    def _import(
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
        _check_import(key, completion, stored_at)
        if not self._usable():
            return "failed"
        at = _clamp_stored_at(self._clock(), stored_at, self._ttl)
        if at is None:
            return "expired"
        try:
            outcome = write(at)
        except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
            self._failure("import", exc, "row not imported")
            return "failed"
        self._count_store(outcome == "imported")
        return outcome

    def _export_rows(self) -> Iterator[ExportRow]:
        now = self._clock()
        for key, _raw, entry in self._scan_entries("export"):
            if not _expired(entry.stored_at, now, self._ttl):
                yield ExportRow(key, entry.stored_at, entry.completion)

    def _prune_rows(self, now: float, delete: Callable[[str, Any, HeldEntry], int]) -> int:
        """Remove the stored rows expired at ``now`` with ``delete(key, raw, entry)``.

        ``delete`` returns how many rows it removed; the first failure stops pruning (logged).
        """
        removed = 0
        for key, raw, entry in self._scan_entries("prune"):
            if not _expired(entry.stored_at, now, self._ttl):
                continue
            try:
                removed += delete(key, raw, entry)
            except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
                self._failure("prune", exc, "pruning stopped")
                break
        return removed

    def _stats(self, entries: int, size: int, ages: StoredAges | None) -> CacheStats:
        memory_entries = self._memory.size()
        with self._lock:
            return CacheStats(
                directory=self.directory,
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
                queued=self._queued(),
                dropped=self._dropped,
            )

    def _queued(self) -> int:
        """How many writes wait in the write-behind queue (none by default)."""
        return 0

    def _skip_row(self, operation: str, exc: BaseException) -> None:
        """A scan left out one unreadable row: counted in ``stats().skipped``, and logged."""
        with self._lock:
            self._skipped += 1
        self._failure(operation, exc, "row skipped")

    def _failure(self, operation: str, exc: BaseException, consequence: str) -> None:
        """Count a failure; log it (see :meth:`_warn_once`) unless the subclass says not to."""
        with self._lock:
            self._errors += 1
        failure = self._describe_failure(exc)
        if failure is None:
            return
        self._warn_once(
            (operation, *failure.kind),
            "fallbackchain response cache at %s: %s during %s: %s (%s); %s",
            self.directory,
            type(failure.error).__name__,
            operation,
            failure.error,
            failure.detail,
            consequence,
        )

    def _warn_once(self, kind: tuple[str, ...], message: str, *args: object) -> None:
        """A WARNING, at most one per ``kind`` per :data:`_LOG_INTERVAL` of the cache's clock."""
        now = self._clock()
        with self._lock:
            last = self._logged.get(kind)
            if last is not None and 0.0 <= now - last < _LOG_INTERVAL:
                return
            self._logged[kind] = now
        _log.warning(message, *args)


class ResponseCache(CacheBase):
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
        if write_queue < 1:
            raise ValueError(f"write_queue must be at least 1, not {write_queue}")
        super().__init__(config, clock)
        # put_later's queue: key -> answer, oldest first (a dict keeps insertion order; a newer
        # answer for a queued key replaces it in place). One writer thread drains it.
        self._pending: dict[str, _Pending] = {}
        self._inflight: dict[str, _Pending] = {}  # taken by the writer, not yet on disk
        self._queue_size = write_queue
        self._queue = threading.Condition(threading.Lock())
        self._writer: threading.Thread | None = None
        self._stopping = False
        self._generation = 0  # bumped by clear(): a write taken before it is not done
        _ALL_CACHES.add(self)
        self._directory = os.path.abspath(os.path.expandvars(os.path.expanduser(config.directory)))
        self._open_lock = threading.Lock()
        # SQLite takes one writer at a time. Queue this process's writers here rather than in
        # SQLite's sleeping busy handler, where under load one thread can starve past the
        # busy timeout and its write-through is silently dropped. Reentrant: import_row
        # writes through _put inside its own transaction.
        self._write_lock = threading.RLock()
        self._disk: Any = None  # diskcache.Cache (untyped) or None
        self._last_open_attempt: float | None = None
        if not config.enabled:
            return
        with self._open_lock:
            self._open_disk(first=True)

    # --- public API ------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        """The absolute cache directory."""
        return self._directory

    @property
    def disk_available(self) -> bool:
        """True while the disk layer is open and usable (perhaps only for reading)."""
        return self._disk is not None

    @property
    def read_only(self) -> bool:
        """True when the storage could only be opened for reading.

        That is a read-only filesystem, a full disk or no write permission: stored answers
        are served, new ones are kept in the memory layer only, and ``clear``, ``prune`` and
        ``import_row`` change nothing on disk. Opening it writable is tried again every 60
        seconds of the cache's clock; this turns False once that works.
        """
        return self._read_only

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer for ``key``, or ``None``. Never raises; never serves expired."""
        if not self._usable():
            return None
        try:
            answer = self._get(key)
        except Exception as exc:  # noqa: BLE001 - the cache must never break a request
            self._failure("get", exc, "treated as a miss")
            answer = None
        return self._count_lookup(answer)

    def put(
        self,
        key: str,
        completion: ChatCompletion,
        *,
        stored_at: float | None = None,
        rewrite: bool = False,
    ) -> bool:
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
        if not self._usable():
            return False
        try:
            outcome = self._put(key, completion, stored_at, rewrite=rewrite)
        except Exception as exc:  # noqa: BLE001 - the cache must never break a request
            self._failure("put", exc, "answer not stored")
            return False
        return outcome == "unchanged" or self._count_store(outcome == "stored")

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
        if not self._usable():
            return False
        try:
            taken = self._take(key, completion, None, self._is_pending(key))
            if taken is None:
                return False
            if taken != "unchanged":
                self._enqueue(key, taken)
        except Exception as exc:  # noqa: BLE001 - the cache must never break a request
            self._failure("put", exc, "answer not stored")
            return False
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every answer queued by :meth:`put_later` is written (or failed, logged).

        True when the queue is empty, False if ``timeout`` seconds passed first. Never raises.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue:
            while self._pending or self._inflight:
                writer = self._writer
                if writer is None or not writer.is_alive():
                    break  # no writer (e.g. after a fork): drained below, in this thread
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._queue.wait(left)
        self._drain_inline()
        return True

    def stats(self, *, scan: bool = False) -> CacheStats:
        """Counters and sizes. Never raises.

        With ``scan=True`` every disk row is read to fill in ``oldest``, ``newest`` and
        ``expired`` (slower on a large cache; the hit and miss counters are not touched).
        """
        entries = size = 0
        if scan:
            self.flush()  # a scan lists what put_later queued too
        disk = self._current_disk()
        if disk is not None:
            try:
                entries = len(disk)
                size = int(disk.volume())
            except Exception as exc:  # noqa: BLE001 - stats are best effort
                self._failure("stats", exc, "disk sizes reported as 0")
                entries = size = 0
        ages = None
        if scan:
            ages = StoredAges(self._clock(), self._ttl)
            for _key, _text, entry in self._scan_entries("stats"):
                ages.add(entry.stored_at)
        return self._stats(entries, size, ages)

    def clear(self) -> int:
        """Remove every entry; returns the number of disk rows removed. Never raises.

        When the disk layer is unavailable, the number of memory entries removed; when it is
        :attr:`read_only`, 0 (nothing on disk is removed). A failure part way (logged once, with
        the rows removed and left; e.g. a planted row naming a file outside the directory, whose
        row is deleted but whose file is left alone) does not stop clearing while it makes
        progress, and the count is what was really removed: rows before minus rows left (other
        writers in the meantime can make it an estimate).
        """
        memory_removed = self._memory.clear()
        with self._queue:
            self._pending.clear()  # queued answers are removed too: never written after this
        with self._write_lock:
            self._generation += 1  # nor one the writer has taken already
        disk = self._current_disk()
        if disk is None:
            return memory_removed
        if self._read_only:
            return 0
        removed = 0
        failure: Exception | None = None
        left: int | None = 0
        for _attempt in range(_CLEAR_ATTEMPTS):
            before = _row_count(disk)
            try:
                with self._write_lock:
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
            self._failure("clear", failure, f"{removed} rows removed, {shown} left")
        return removed

    def iter_keys(self) -> Iterator[str]:
        """Yield the key of every unexpired disk row (memory-only entries are not listed).

        Pickled or non-text keys are refused, logged and skipped; a database error ends the
        iteration (logged). Never raises.
        """
        self.flush()  # what put_later queued is listed too
        disk = self._current_disk()
        if disk is None:
            return
        safe_disk: SafeJSONDisk = disk.disk
        try:
            con = _connect_read_only(self._directory)
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

    def prune(self) -> int:
        """Remove every entry at least ``ttl`` old (by the cache's clock). Never raises.

        Returns the number of disk rows removed (0 when :attr:`read_only`). Rows that cannot be
        read are left alone (:meth:`get` treats them as misses). A row rewritten while pruning
        is never removed.
        """
        self.flush()  # a queued answer is a row like any other
        now = self._clock()
        self._memory.prune(now)
        disk = self._current_disk()
        if disk is None or self._read_only:
            return 0
        removed = 0
        try:
            with self._write_lock:
                removed += int(disk.expire())  # rows past diskcache's own (wall-clock) expiry
        except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
            self._failure("prune", exc, "expired rows kept")

        def delete_if_same(key: str, _text: object, entry: HeldEntry) -> int:
            with self._write_lock, disk.transact(retry=True):
                current = self._peek(disk, key)
                if current is not None and current.stored_at == entry.stored_at:
                    return int(bool(disk.delete(key)))
            return 0

        return removed + self._prune_rows(now, delete_if_same)

    def export_rows(self) -> Iterator[ExportRow]:
        """Yield every servable disk entry (unexpired, readable, complete), oldest row first.

        Unreadable rows are logged and skipped; the memory layer is not listed, but what
        :meth:`put_later` queued is written first. Does not count as hits or misses. Never
        raises.
        """
        self.flush()
        return self._export_rows()

    def import_row(self, key: str, completion: ChatCompletion, stored_at: float) -> ImportOutcome:
        """Store an exported answer unless the cache holds one for ``key`` as new or newer.

        Raises :class:`ValueError` when ``key`` is not a :func:`cache_key` key, ``completion``
        is not a complete answer, or ``stored_at`` is not a finite number >= 0 (a time in the
        future counts as now). Otherwise never raises; see :data:`ImportOutcome` for the result.
        The comparison and the write are one disk transaction.
        """

        def write(at: float) -> ImportOutcome:
            disk = self._current_disk()
            if disk is None or self._read_only:
                return "failed"
            with self._write_lock, disk.transact(retry=True):
                current = self._peek(disk, key)
                if current is not None and current.stored_at >= at:
                    return "kept"
                return "imported" if self._put(key, completion, at) == "stored" else "failed"

        return self._import(key, completion, stored_at, write)

    def export_jsonl(self, target: str | os.PathLike[str] | IO[str]) -> int:
        """Write :meth:`export_rows` as JSON Lines; returns the number of entries written.

        Each line is ``{"key": ..., "stored_at": ..., "completion": {...}}`` (plain JSON,
        never pickle). A path is written atomically (a private temporary file, then renamed),
        so an interrupted export never leaves a half-written file. Raises :class:`OSError`
        when ``target`` cannot be written; cache failures are logged and skipped.
        """
        if not isinstance(target, str | os.PathLike):
            return self._write_export(target)
        path = os.fspath(target)
        fd, temporary = tempfile.mkstemp(
            prefix=".fallbackchain-export-", suffix=".tmp", dir=os.path.dirname(path) or "."
        )
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
                count = self._write_export(out)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return count

    def import_jsonl(
        self, source: str | os.PathLike[str] | Iterable[str], *, name: str | None = None
    ) -> ImportReport:
        """Import an :meth:`export_jsonl` file line by line with :meth:`import_row`.

        Every line is validated (JSON only, exactly the keys ``key``, ``stored_at`` and
        ``completion``, a well-formed key, a valid and complete chat completion); a bad line is
        reported in ``errors`` by line number and the others are still imported. Blank lines
        and lines starting with ``#`` are skipped. Raises :class:`InputFileError` when the file
        is missing or unreadable. ``name`` is what errors call the file (see :func:`read_jsonl`).
        """
        name = name if name is not None else _source_name(source)
        counts: dict[str, int] = {"imported": 0, "kept": 0, "expired": 0, "failed": 0}
        errors: list[LineError] = []
        for item in read_jsonl(source, name=name):
            if isinstance(item, LineError):
                errors.append(item)
                continue
            line, value = item
            try:
                key, completion, stored_at = _parse_export_line(value)
                outcome = self.import_row(key, completion, stored_at)
            except ValueError as exc:
                errors.append(LineError(name, line, str(exc)))
                continue
            counts[outcome] += 1
        return ImportReport(
            imported=counts["imported"],
            kept=counts["kept"],
            expired=counts["expired"],
            failed=counts["failed"],
            invalid=len(errors),
            errors=tuple(errors),
        )

    def close(self) -> None:
        """Write what :meth:`put_later` queued, close the disk layer, drop the memory layer.

        Idempotent; later calls miss, and later puts are refused.
        """
        self._stop_writer()
        self._mark_closed()
        with self._lock:
            disk, self._disk = self._disk, None
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
        return f"ResponseCache({self._directory!r}, {self._state('disk', self.disk_available)})"

    # --- internals -------------------------------------------------------------------------

    def _get(self, key: str) -> CachedAnswer | None:
        now = self._clock()
        answer = self._memory.get(key, now)
        if answer is not None:
            return answer
        pending = self._pending.get(key) or self._inflight.get(key)  # on its way to the disk
        if pending is not None:
            return pending.held.answer(now, self._ttl)
        disk = self._current_disk()
        if disk is None:
            return None
        try:
            text = disk.get(key)
        except Exception as exc:
            self._drop_disk_if_corrupt(disk, exc)
            raise
        return self._from_row(key, text, now)

    def _put(
        self,
        key: str,
        completion: ChatCompletion,
        stored_at: float | None = None,
        *,
        rewrite: bool = False,
    ) -> Literal["stored", "unchanged", "skipped"]:
        """put(): write now, superseding a queued answer for the key; the caller counts."""
        with self._write_lock:
            taken = self._take(
                key, completion, stored_at, self._is_pending(key), rewrite=rewrite
            )
            if taken is None:
                return "skipped"
            if taken == "unchanged":
                return taken
            with self._queue:  # older than this one: never written now
                self._pending.pop(key, None)
                self._inflight.pop(key, None)  # the writer checks before it writes
            return self._write(key, taken)

    def _is_pending(self, key: str) -> bool:
        return key in self._pending or key in self._inflight

    def _queued(self) -> int:
        with self._queue:
            return len(self._pending) + len(self._inflight)

    def _enqueue(self, key: str, item: _Pending) -> None:
        """Queue ``item`` for the writer; a full queue drops its oldest write (counted)."""
        dropped = False
        with self._queue:
            if self._stopping:  # closing: the writer is gone or going; write it here
                inline = True
            else:
                inline = False
                if key not in self._pending and len(self._pending) >= self._queue_size:
                    del self._pending[next(iter(self._pending))]
                    dropped = True
                self._pending[key] = item
                self._start_writer()
                self._queue.notify()
        if inline:
            with self._write_lock:
                self._write_counted(key, item)
        if dropped:
            with self._lock:
                self._dropped += 1
            self._warn_once(
                ("put", "queue full"),
                "fallbackchain response cache at %s: the write queue is full (%d answers); "
                "dropped the oldest queued answer (the disk is slower than the answers coming in)",
                self._directory,
                self._queue_size,
            )

    def _start_writer(self) -> None:
        """Start the writer thread unless it runs (caller holds ``_queue``)."""
        if self._writer is not None and self._writer.is_alive():
            return
        self._writer = threading.Thread(
            target=self._write_loop, name="fallbackchain-cache-writer", daemon=True
        )
        self._writer.start()
        _LIVE_WRITERS.add(self)

    def _write_loop(self) -> None:
        """The writer thread: write queued answers, oldest first, until stopped and drained."""
        while True:
            with self._queue:
                while not self._pending and not self._stopping:
                    self._queue.wait()
                if not self._pending:
                    break
                batch: list[tuple[str, _Pending]] = []
                while self._pending and len(batch) < _WRITE_BATCH:
                    key = next(iter(self._pending))
                    item = self._inflight[key] = self._pending.pop(key)
                    batch.append((key, item))
                generation = self._generation
            try:
                with self._write_lock:  # not if clear() or put() came meanwhile
                    if generation == self._generation:
                        self._write_batch(
                            [(k, i) for k, i in batch if self._inflight.get(k) is i]
                        )
            finally:
                with self._queue:
                    for key, item in batch:
                        if self._inflight.get(key) is item:
                            del self._inflight[key]
                    self._queue.notify_all()
        # diskcache keeps one SQLite connection per thread: close this thread's, so the
        # database is checkpointed and released when the cache closes.
        disk = self._disk
        if isinstance(disk, diskcache.Cache):
            with contextlib.suppress(Exception):
                disk.close()

    def _write_batch(self, batch: list[tuple[str, _Pending]]) -> None:
        """Write ``batch`` in one disk transaction (one commit); one by one if that fails.

        The caller holds ``_write_lock``. A ``kill -9`` during the transaction loses the
        batch, never a row: SQLite rolls it back.
        """
        disk = self._current_disk()
        if len(batch) > 1 and isinstance(disk, diskcache.Cache) and not self._read_only:
            outcomes: list[str] = []
            committed = False
            with contextlib.suppress(Exception):  # rolled back: each is tried (and logged) alone
                with disk.transact(retry=True):
                    outcomes = [self._write(key, item) for key, item in batch]
                committed = True
            if committed:
                self._count_stores(outcomes.count("stored"))
                return
        for key, item in batch:
            self._write_counted(key, item)

    def _forget_parent_writer(self) -> None:
        """After a fork, in the child: no writer, nothing queued, unlocked locks."""
        self._queue = threading.Condition(threading.Lock())
        self._write_lock = threading.RLock()
        self._pending = {}
        self._inflight = {}
        self._writer = None

    def _drain_inline(self) -> None:
        """Write whatever is queued in this thread (no live writer: after a fork, at exit)."""
        while True:
            with self._queue:
                if not self._pending:
                    return
                key = next(iter(self._pending))
                item = self._pending.pop(key)
            with self._write_lock:
                self._write_counted(key, item)

    def _stop_writer(self) -> None:
        """Let the writer drain the queue and end; then drain anything left here."""
        with self._queue:
            self._stopping = True
            self._queue.notify_all()
            writer = self._writer
        if writer is not None and writer is not threading.current_thread():
            writer.join()
        self._drain_inline()
        _LIVE_WRITERS.discard(self)

    def _write_counted(self, key: str, item: _Pending) -> None:
        """:meth:`_write`, never raising: failures are logged (caller holds ``_write_lock``)."""
        try:
            self._count_store(self._write(key, item) == "stored")
        except Exception as exc:  # noqa: BLE001 - the writer thread must never die
            self._failure("put", exc, "answer not stored")

    def _write(self, key: str, item: _Pending) -> Literal["stored", "unchanged", "skipped"]:
        """Write one answer to disk (caller holds ``_write_lock``); the caller counts a store.

        ``skipped``: no writable disk, or the answer expired while it waited. ``unchanged``
        (counted here): the disk row already holds it.
        """
        disk = self._current_disk()
        if disk is None or self._read_only:
            return "skipped"
        held = item.held
        now = self._clock()
        ttl_left = self._ttl - (now - held.stored_at)
        if ttl_left <= 0:
            return "skipped"
        try:
            if item.check_disk and self._unchanged_on_disk(disk, key, held.body, now):
                with self._lock:
                    self._unchanged += 1
                held.on_disk = True
                return "unchanged"
            stored = bool(disk.set(key, _encode_row(held.body, held.stored_at), expire=ttl_left))
        except Exception as exc:
            self._drop_disk_if_corrupt(disk, exc)
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
        at = _seconds(row.get("stored_at"))
        if at is None or not _fresh(at, now, self._ttl):
            return False
        return _answer_part(row["completion"]) == _answer_part(body)

    def _peek(self, disk: Any, key: str) -> HeldEntry | None:
        """The disk row for ``key`` (expired or not) without counting it; unreadable is None."""
        try:
            text = disk.get(key)
            return None if text is None else decode_row(text)
        except CacheError:
            return None

    def _scan_entries(self, operation: str) -> Iterator[tuple[str, Any, HeldEntry]]:
        """Every readable disk row with its key and text; unreadable rows are logged, skipped."""
        disk = self._current_disk()
        if disk is None:
            return
        for key in self.iter_keys():
            try:
                text = disk.get(key)
                if text is None:
                    continue
                entry = decode_row(text)
            except CacheError as exc:
                self._skip_row(operation, exc)
                continue
            except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
                self._drop_disk_if_corrupt(disk, exc)
                self._failure(operation, exc, "scan stopped")
                return
            yield key, text, entry

    def _write_export(self, out: IO[str]) -> int:
        count = 0
        for row in self.export_rows():
            line = json.dumps(
                {
                    "key": row.key,
                    "stored_at": row.stored_at,
                    "completion": row.completion.model_dump(mode="json", exclude_unset=True),
                },
                ensure_ascii=False,
                separators=(",", ":"),
            )
            out.write(line + "\n")
            count += 1
        out.flush()
        return count

    def _current_disk(self) -> Any:
        """The open disk layer, (re)opening it if due; ``None`` when unavailable.

        A read-only one is tried writable again every :data:`_REOPEN_INTERVAL` (the disk may
        have been freed, or remounted).
        """
        disk = self._disk
        if self._closed or not self._config.enabled or (disk is not None and not self._read_only):
            return disk
        last = self._last_open_attempt
        if last is not None and 0.0 <= self._clock() - last < _REOPEN_INTERVAL:
            return disk
        if not self._open_lock.acquire(blocking=False):
            return disk  # another thread is opening it; do not wait
        try:
            if not self._closed:
                if self._disk is None:
                    self._open_disk()
                elif self._read_only:
                    self._reopen_writable()
            return self._disk
        finally:
            self._open_lock.release()

    def _reopen_writable(self) -> None:
        """Swap the read-only disk layer for a writable one if writing works now.

        The caller holds ``_open_lock``. Otherwise stay read-only, quietly (the first warning
        said so).
        """
        self._last_open_attempt = self._clock()
        try:
            disk = self._open_writable()
        except Exception:  # noqa: BLE001 - still cannot write
            return
        with self._lock:
            old, closed = self._disk, self._closed
            if not closed:
                self._disk, self._read_only = disk, False
        with contextlib.suppress(Exception):  # a read-only connection has nothing to lose
            (disk if closed else old).close()
        _log.warning(
            "fallbackchain response cache at %s: writable again; new answers are stored",
            self._directory,
        )

    def _open_disk(self, *, first: bool = False) -> None:
        """Open the disk layer (caller holds ``_open_lock``); log and stay memory-only on error.

        An unsafe directory raises :class:`ConfigError` on the ``first`` open (the
        constructor) and is logged on a later one. When the database exists but cannot be
        written (read-only filesystem, full disk, no write permission), it is opened read-only.
        """
        self._last_open_attempt = self._clock()
        try:
            _prepare_directory(self._directory)
        except ConfigError as exc:
            if first:
                raise
            self._warn_once(
                ("open", "unsafe directory"),
                "fallbackchain response cache: %s; continuing memory-only",
                exc,
            )
            return
        except Exception as exc:  # noqa: BLE001 - carry on memory-only
            self._failure("open", exc, "continuing memory-only")
            return
        read_only = False
        try:
            disk = self._open_writable()
        except Exception as exc:  # noqa: BLE001 - carry on read-only, or memory-only
            disk = self._open_read_only(exc)
            if disk is None:
                return
            read_only = True
        with self._lock:
            closed = self._closed
            if not closed:
                self._disk = disk
                self._read_only = read_only
        if closed:
            disk.close()

    def _open_writable(self) -> Any:
        settings: dict[str, Any] = dict(diskcache.DEFAULT_SETTINGS)
        # Pin every setting, so values planted in the Settings table are overwritten.
        settings.update(
            eviction_policy="least-recently-stored",
            size_limit=self._config.size_limit,
            statistics=0,
            tag_index=0,
        )
        database = os.path.join(self._directory, _DB_NAME)
        _create_private(database)  # SQLite gives its -wal and -shm files the database's mode
        _make_private(database)  # one made by an older version or another tool
        return diskcache.Cache(
            self._directory, timeout=_SQLITE_TIMEOUT, disk=SafeJSONDisk, **settings
        )

    def _open_read_only(self, exc: Exception) -> _ReadOnlyStore | None:
        """After the writable open failed with ``exc``: the database read-only, or None (logged)."""
        if not _cannot_write(exc):
            self._failure("open", exc, "continuing memory-only")
            return None
        try:
            store = _ReadOnlyStore(self._directory)
        except Exception:  # noqa: BLE001 - nothing to serve: the first failure is the story
            self._failure("open", exc, "continuing memory-only")
            return None
        self._warn_once(
            ("open", "read-only"),
            "fallbackchain response cache at %s: cannot write (%s); opened read-only: stored "
            "answers are served, new answers are not stored",
            self._directory,
            _cause_detail(_root_cause(exc)),
        )
        return store

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

    def _describe_failure(self, exc: BaseException) -> CacheFailure | None:
        mapped = _as_cache_error(exc)
        cause = mapped.__cause__ if mapped.__cause__ is not None else mapped
        kinds = (type(mapped).__name__, type(cause).__name__)
        return CacheFailure(mapped, _cause_detail(cause), kinds)


_LIVE_WRITERS: weakref.WeakSet[ResponseCache] = weakref.WeakSet()
"""Caches whose writer thread runs: their queues are written at interpreter exit."""


_ALL_CACHES: weakref.WeakSet[ResponseCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child starts with empty queues and fresh locks of its own.

    The parent's writer thread does not exist in the child, and may have held these locks at
    the fork; what the parent had queued is the parent's to write.
    """
    for cache in list(_ALL_CACHES):
        cache._forget_parent_writer()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _flush_at_exit() -> None:
    """Write every queued answer before the interpreter ends its daemon writer threads."""
    for cache in list(_LIVE_WRITERS):
        cache.flush()


# --------------------------------------------------------------------------------------------
# The cache directory: private, and opened read-only when it cannot be written
# --------------------------------------------------------------------------------------------

_UNWRITABLE_ERRNOS: Final = frozenset(
    {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
)
_UNWRITABLE_SQLITE: Final = ("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_FULL", "SQLITE_PERM")


def _prepare_directory(path: str) -> None:
    """Create ``path`` (each new directory ``0700``) or check the existing one.

    Raises :class:`ConfigError` naming the path and the reason when the directory is not safe
    to hold answers (see :func:`_unsafe_reason`), and :class:`OSError` when it cannot be made.
    """
    missing: list[str] = []
    current = path
    while not os.path.lexists(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    for directory in reversed(missing):
        with contextlib.suppress(FileExistsError):  # another process made it meanwhile
            os.mkdir(directory, 0o700)
            os.chmod(directory, 0o700)  # mkdir's mode is filtered by the umask
    if not os.path.isdir(path):
        raise NotADirectoryError(errno.ENOTDIR, "cache directory is not a directory")
    reason = _unsafe_reason(path)
    if reason is not None:
        raise ConfigError(
            f"refusing the cache directory {path}: {reason}; other users could plant or read "
            "answers (make it yours and private: chmod 700, or choose another directory)",
            key="cache.directory",
        )


def _unsafe_reason(path: str) -> str | None:
    """Why the existing directory ``path`` must not hold a cache, or None when it is safe.

    Safe means: it is owned by this user and writable by no one else; no symlink on the way
    to it belongs to another user (root excepted); and no directory above it is writable by
    others unless it is sticky (like ``/tmp``), so it cannot be swapped for another.
    """
    if os.name != "posix":  # pragma: no cover - POSIX permissions only
        return None
    uid = os.geteuid()
    current = os.sep
    for part in pathlib.PurePath(path).parts[1:]:
        current = os.path.join(current, part)
        info = os.lstat(current)
        if stat.S_ISLNK(info.st_mode) and info.st_uid not in (0, uid):
            return f"{current} is a symlink owned by another user (uid {info.st_uid})"
    real = os.path.realpath(path)
    via = "" if real == path else f" (the symlink leads to {real})"
    info = os.stat(real)
    if info.st_uid != uid:
        return f"it is owned by another user (uid {info.st_uid}, not {uid}){via}"
    if info.st_mode & 0o022:
        return f"it is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}){via}"
    for parent in pathlib.PurePath(real).parents:
        mode = os.stat(parent).st_mode
        if mode & 0o002 and not mode & stat.S_ISVTX:
            return (
                f"{parent}, above it, is writable by every user "
                f"(mode {stat.S_IMODE(mode):04o}){via}"
            )
    return None


def _make_private(path: str) -> None:
    """Make an existing file of ours ``0600``; best effort (a read-only filesystem cannot)."""
    with contextlib.suppress(OSError):
        if stat.S_IMODE(os.lstat(path).st_mode) & 0o077:
            os.chmod(path, 0o600, follow_symlinks=False)


def _create_private(path: str) -> None:
    """Create ``path`` empty with mode ``0600`` unless it exists (SQLite then keeps the mode)."""
    with contextlib.suppress(FileExistsError):
        os.close(
            os.open(
                path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600
            )
        )


def _root_cause(exc: BaseException) -> BaseException:
    """The innermost ``__cause__`` of ``exc`` (``exc`` itself when it has none)."""
    seen: set[int] = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    return exc


def _cannot_write(exc: BaseException) -> bool:
    """True when ``exc`` says the cache directory cannot be written (but may be readable)."""
    cause = _root_cause(exc)
    if isinstance(cause, sqlite3.OperationalError):
        name = getattr(cause, "sqlite_errorname", "") or ""
        return name.startswith(_UNWRITABLE_SQLITE) or name.startswith("SQLITE_IOERR")
    return isinstance(cause, OSError) and cause.errno in _UNWRITABLE_ERRNOS


def _connect_read_only(directory: str) -> sqlite3.Connection:
    """A read-only connection to the cache database of ``directory``.

    ``mode=ro`` first; only when SQLite cannot even set up its shared-memory file next to the
    database (a read-only directory or filesystem, a full disk), ``immutable=1``: no locks,
    and anything left in a WAL file is not seen. Raises :class:`sqlite3.Error` when the
    database cannot be read.
    """
    uri = pathlib.Path(directory, _DB_NAME).as_uri()
    try:
        return _probed_connection(uri + "?mode=ro")
    except sqlite3.OperationalError as exc:
        if not _cannot_write(exc):  # e.g. locked: a live database must not be read immutable
            raise
    return _probed_connection(uri + "?mode=ro&immutable=1")


def _probed_connection(uri: str) -> sqlite3.Connection:
    """A connection to ``uri`` that has read the database once (SQLite opens lazily)."""
    con = sqlite3.connect(uri, uri=True, timeout=_SQLITE_TIMEOUT, check_same_thread=False)
    try:
        con.execute("SELECT COUNT(*) FROM Settings").fetchone()
    except BaseException:
        con.close()
        raise
    return con


class _ReadOnlyStore:
    """The disk layer opened for reading only: what of ``diskcache.Cache`` the cache reads with.

    ``get``, ``len()``, ``volume()``, ``close()`` and the ``disk`` (a :class:`SafeJSONDisk`)
    work as diskcache's do; every write raises :class:`CacheError`. Thread-safe.
    """

    def __init__(self, directory: str) -> None:
        self.disk = SafeJSONDisk(directory)
        self._con = _connect_read_only(directory)
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


# --------------------------------------------------------------------------------------------
# JSON Lines input, and export rows
# --------------------------------------------------------------------------------------------


def _source_name(source: object) -> str:
    if isinstance(source, str):
        return source
    if isinstance(source, os.PathLike):
        return str(os.fspath(source))
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<stream>"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_line(text: str, *, name: str, line: int) -> tuple[int, Any] | LineError | None:
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    try:
        return line, json.loads(stripped, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        return LineError(name, line, f"not valid JSON ({exc.msg} at column {exc.colno})")
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        return LineError(name, line, f"not valid JSON ({detail})")


def read_jsonl(
    source: str | os.PathLike[str] | Iterable[str], *, name: str | None = None
) -> Iterator[tuple[int, Any] | LineError]:
    """Parse JSON Lines lazily: ``(line_number, value)`` per line, or a :class:`LineError`.

    ``source`` is a path (a ``str`` is always a path) or an iterable of lines (an open text
    file, a list of strings); ``name`` is what errors call it (default: the path, or the
    file's ``name``). Blank lines and lines whose first non-blank character is ``#`` are
    skipped. A line that is not UTF-8 or not JSON (``NaN`` and ``Infinity`` are not JSON)
    gives a :class:`LineError` and the next line is still read. A byte-order mark at the start
    is ignored. Raises :class:`InputFileError` when a path cannot be opened or read.
    """
    name = name if name is not None else _source_name(source)
    if not isinstance(source, str | os.PathLike):
        for number, line_text in enumerate(source, start=1):
            text = line_text.removeprefix("\ufeff") if number == 1 else line_text
            parsed = _parse_line(text, name=name, line=number)
            if parsed is not None:
                yield parsed
        return
    try:
        reader = open(source, "rb")  # noqa: SIM115 - closed below, errors mapped
    except FileNotFoundError:
        raise InputFileError(f"{name}: file not found", file=name) from None
    except IsADirectoryError:
        raise InputFileError(f"{name}: is a directory, not a file", file=name) from None
    except OSError as exc:
        raise InputFileError(f"{name}: cannot read file: {exc.strerror}", file=name) from exc
    with reader:
        number = 0
        while True:
            try:
                raw = reader.readline()
            except OSError as exc:
                raise InputFileError(
                    f"{name}: cannot read file: {exc.strerror}", file=name
                ) from exc
            if not raw:
                return
            number += 1
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield LineError(name, number, "not UTF-8 text")
                continue
            parsed = _parse_line(text, name=name, line=number)
            if parsed is not None:
                yield parsed


def _check_import(key: object, completion: ChatCompletion, stored_at: object) -> None:
    if type(key) is not str or not KEY_PATTERN.fullmatch(key):
        raise ValueError("'key' must be a cache key ('fc1-' and 64 lower-case hex digits)")
    seconds = _seconds(stored_at)
    if seconds is None or seconds < 0:
        raise ValueError("'stored_at' must be a finite number of seconds >= 0")
    if not _is_complete(completion):
        reasons = sorted({str(c.finish_reason) for c in completion.choices}) or ["no choices"]
        raise ValueError(f"'completion' is not a complete answer (finish_reason {reasons})")


class _BadLineError(ValueError):
    """One line of an input file is wrong; the message is the one-line reason."""


def _parse_export_line(value: Any) -> tuple[str, ChatCompletion, float]:
    """Validate one export line's JSON value; ValueError with a one-line reason."""
    if not isinstance(value, dict):
        raise _BadLineError(f"expected a JSON object, got {_json_type(value)}")
    unknown = sorted(set(value) - EXPORT_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}")
    missing = sorted(EXPORT_KEYS - set(value))
    if missing:
        raise ValueError(f"missing key(s) {', '.join(map(repr, missing))}")
    body = value["completion"]
    if not isinstance(body, dict):
        raise _BadLineError(f"'completion' must be an object, got {_json_type(body)}")
    try:
        completion = ChatCompletion.model_validate(body)
    except (pydantic.ValidationError, TypeError, RecursionError) as exc:
        count = exc.error_count() if isinstance(exc, pydantic.ValidationError) else 1
        raise ValueError(
            f"'completion' is not a valid chat completion ({count} validation error(s))"
        ) from None
    key, stored_at = value["key"], value["stored_at"]
    _check_import(key, completion, stored_at)
    return key, completion, float(stored_at)  # _check_import made sure this cannot overflow


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")
