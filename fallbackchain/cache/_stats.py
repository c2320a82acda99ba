"""What ``stats()`` reports: :class:`CacheStats`, and the ages a scan collects."""

from __future__ import annotations

from dataclasses import dataclass

from ._rows import is_expired

__all__ = ["CacheStats", "StoredAges"]


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


@dataclass(slots=True)
class StoredAges:
    """``stats(scan=True)``: oldest and newest ``stored_at`` of servable entries, and expired."""

    now: float
    ttl: float
    oldest: float | None = None
    newest: float | None = None
    expired: int = 0

    def add(self, stored_at: float) -> None:
        """Count one stored row dated ``stored_at``."""
        if is_expired(stored_at, self.now, self.ttl):
            self.expired += 1
            return
        self.oldest = stored_at if self.oldest is None else min(self.oldest, stored_at)
        self.newest = stored_at if self.newest is None else max(self.newest, stored_at)
