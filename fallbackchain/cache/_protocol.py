"""The ``Cache`` protocol: what the chain, ``warm`` and the CLI ask of a response cache.

:class:`ResponseCache` (on disk) and ``RedisResponseCache`` (in Redis) both satisfy it; the
config chooses one (``cache.backend``). Every method keeps the promises documented on
:class:`ResponseCache`: none raises (``import_row``, ``export_jsonl`` and ``import_jsonl``
only for their arguments), only complete answers are stored, nothing is ever unpickled and
an answer ``ttl`` old is never served.

Both caches name it as their base, so mypy checks each against it where it is defined, and
they share its four methods written on the others: ``export_jsonl`` and ``import_jsonl``
(on ``export_rows`` and ``import_row``), and the ``with`` block (on ``close``). A cache of
another kind only has to match the protocol's shape.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import IO, TYPE_CHECKING, Protocol, Self, TypedDict, Unpack, runtime_checkable

from openai.types.chat import ChatCompletion

from ._rows import CachedAnswer

if TYPE_CHECKING:
    # Export, import and stats load on first use: no request needs them (#14: import time).
    from ._jsonl import ExportRow, ImportOutcome, ImportReport
    from ._stats import CacheStats

__all__ = ["Cache"]


class PutOptions(TypedDict, total=False):
    """How :meth:`Cache.put` stores an answer; both are optional keywords."""

    stored_at: float | None
    """When the answer was made (default: now), to restore an entry with its original age."""
    rewrite: bool
    """Write and restamp even an answer the key already holds (a refresh); default False."""


@runtime_checkable
class Cache(Protocol):
    """A response cache: the last good answer per request key, with a memory layer in front."""

    @property
    def directory(self) -> str:
        """Where the entries live (named in log lines and in :class:`CacheStats`)."""
        ...

    @property
    def disk_available(self) -> bool:
        """True while the storage is usable (perhaps only for reading)."""
        ...

    @property
    def read_only(self) -> bool:
        """True when the storage could only be opened for reading."""
        ...

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer for ``key``, or ``None``; never expired."""
        ...

    def get_held(self, key: str) -> CachedAnswer | None:
        """The answer the memory layer holds for ``key``, without I/O; None is not a miss."""
        ...

    def put(self, key: str, completion: ChatCompletion, **options: Unpack[PutOptions]) -> bool:
        """Store a complete answer now; True if the storage holds it."""
        ...

    def put_later(self, key: str, completion: ChatCompletion) -> bool:
        """Store a complete answer, perhaps in the background; True if it was accepted."""
        ...

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until what :meth:`put_later` accepted is stored; False if ``timeout`` passed."""
        ...

    def stats(self, *, scan: bool = False) -> CacheStats:
        """Counters and sizes; ``scan`` reads every row for the ages."""
        ...

    def clear(self) -> int:
        """Remove every entry; the number removed."""
        ...

    def iter_keys(self) -> Iterator[str]:
        """The key of every stored entry."""
        ...

    def prune(self) -> int:
        """Remove every entry at least ``ttl`` old; the number removed."""
        ...

    def export_rows(self) -> Iterator[ExportRow]:
        """Every servable stored entry."""
        ...

    def import_row(self, key: str, completion: ChatCompletion, stored_at: float) -> ImportOutcome:
        """Store an exported answer unless the cache holds one for ``key`` as new or newer."""
        ...

    def export_jsonl(self, target: str | os.PathLike[str] | IO[str]) -> int:
        """Write :meth:`export_rows` as JSON Lines; returns the number of entries written.

        Each line is ``{"key": ..., "stored_at": ..., "completion": {...}}`` (plain JSON,
        never pickle). A path is written atomically (a private temporary file, then renamed),
        so an interrupted export never leaves a half-written file. Raises :class:`OSError`
        when ``target`` cannot be written; cache failures are logged and skipped.
        """
        from ._jsonl import export_jsonl  # noqa: PLC0415 - loaded on first use

        return export_jsonl(self.export_rows(), target)

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
        from ._jsonl import import_jsonl  # noqa: PLC0415 - loaded on first use

        return import_jsonl(source, self.import_row, name=name)

    def close(self) -> None:
        """Store what is queued, then refuse later calls. Idempotent."""
        ...

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
