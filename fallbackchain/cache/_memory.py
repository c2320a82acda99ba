"""The memory layer: a per-process TTL map in front of a cache's storage (disk or Redis).

It holds what was read from storage (:class:`HeldEntry`) and what this process stored
(:class:`LocalAnswer`, validated on its first hit). Ages are by the cache's clock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import cachetools

from ._rows import CachedAnswer, HeldEntry, LocalAnswer, is_expired

__all__ = ["MemoryLayer"]


class MemoryLayer:
    """The per-process TTL layer in front of a cache's storage; thread-safe.

    Ages are by the cache's clock, with the cache's ttl. ``maxsize`` 0 holds nothing.
    """

    def __init__(self, maxsize: int, ttl: float, clock: Callable[[], float]) -> None:
        self._ttl = ttl
        self._lock = threading.Lock()
        self._items: cachetools.TTLCache[str, HeldEntry | LocalAnswer, float] | None = None
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

    def peek(self, key: str) -> HeldEntry | LocalAnswer | None:
        """What is held for ``key`` (perhaps expired), not counted as a lookup."""
        items = self._items
        if items is None:
            return None
        with self._lock:
            try:  # TTLCache.get is this lookup wrapped in two more timer-checked ones
                return items[key]
            except KeyError:  # not held, or expired
                return None

    def put(self, key: str, entry: HeldEntry | LocalAnswer) -> None:
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
                if is_expired(entry.stored_at, now, self._ttl):
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
        """How many entries are held (expired ones not yet dropped included)."""
        if self._items is None:
            return 0
        with self._lock:
            return len(self._items)
