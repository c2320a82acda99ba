"""The write-behind writer: ``put_later``'s bounded queue and the one thread that drains it.

What a caller can rely on: :meth:`WriteBehind.enqueue` never waits for the disk (a full queue
drops its oldest write and says so); a newer answer for a queued key replaces it in place.
Everything queued is written by :meth:`WriteBehind.flush`, :meth:`WriteBehind.stop` and at
interpreter exit; a ``kill -9`` loses the queue, never a row already written. A forked child
starts with an empty queue and fresh locks (the parent's queue is the parent's to write).
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Final, NamedTuple

from ._rows import LocalAnswer

__all__ = ["WRITE_QUEUE_SIZE", "QueuedWrite", "WriteBehind"]

_WRITE_BATCH: Final = 32  # answers the writer writes in one disk transaction
_LINGER: Final = 0.05
"""Seconds the writer waits for more answers before it writes (unless the batch is full, or
a flush or close asks): one transaction then carries several answers, and the writer wakes
once for them rather than once an answer. Nothing waits for it but the disk (#14)."""
WRITE_QUEUE_SIZE: Final = 1024
"""Default bound of :meth:`ResponseCache.put_later`'s queue (distinct keys waiting)."""


class QueuedWrite(NamedTuple):
    """An answer on its way to the disk."""

    held: LocalAnswer
    check_disk: bool
    """The memory layer held nothing for the key: compare with the disk row before writing."""


Batch = list[tuple[str, QueuedWrite]]


class WriteBehind:
    """One cache's write queue (key -> answer, oldest first) and its writer thread.

    The cache supplies the writes: ``write_batch`` (a batch, in one transaction if it can) and
    ``write_one`` (one answer, never raising), both called while :attr:`lock` is held.
    ``on_drop`` is called when a full queue dropped its oldest write, and ``on_thread_end``
    in the writer thread as it ends. Thread-safe.
    """

    def __init__(
        self,
        size: int,
        *,
        write_batch: Callable[[Batch], None],
        write_one: Callable[[str, QueuedWrite], None],
        on_drop: Callable[[], None],
        on_thread_end: Callable[[], None],
    ) -> None:
        if size < 1:
            raise ValueError(f"write_queue must be at least 1, not {size}")
        self.size = size
        self._write_batch = write_batch
        self._write_one = write_one
        self._on_drop = on_drop
        self._on_thread_end = on_thread_end
        self._stopping = False
        self._hurry = False  # a flush waits: write without lingering until the queue is empty
        self._generation = 0  # bumped by cancel(): a write taken before it is not done
        self._forget_parent()
        _ALL_WRITERS.add(self)

    def _forget_parent(self) -> None:
        """A fresh queue and fresh locks: at first, and in a forked child."""
        # A dict keeps insertion order; a newer answer for a queued key replaces it in place.
        self._pending: dict[str, QueuedWrite] = {}
        self._inflight: dict[str, QueuedWrite] = {}  # taken by the writer, not yet on disk
        self._queue = threading.Condition(threading.Lock())
        # SQLite takes one writer at a time. Queue this process's writers here rather than in
        # SQLite's sleeping busy handler, where under load one thread can starve past the
        # busy timeout and its write-through is silently dropped. Reentrant: import_row
        # writes through put inside its own transaction.
        self.lock = threading.RLock()
        """Held by every write to the disk (the writer's, and the cache's own)."""
        self._thread: threading.Thread | None = None

    def waiting(self, key: str) -> QueuedWrite | None:
        """The answer queued or being written for ``key``, if any."""
        return self._pending.get(key) or self._inflight.get(key)

    def is_pending(self, key: str) -> bool:
        """True when an answer for ``key`` is queued or being written."""
        return key in self._pending or key in self._inflight

    def count(self) -> int:
        """How many answers are queued or being written."""
        with self._queue:
            return len(self._pending) + len(self._inflight)

    def enqueue(self, key: str, item: QueuedWrite) -> None:
        """Queue ``item`` for the writer; a full queue drops its oldest write (``on_drop``)."""
        dropped = False
        with self._queue:
            if self._stopping:  # closing: the writer is gone or going; write it here
                inline = True
            else:
                inline = False
                if key not in self._pending and len(self._pending) >= self.size:
                    del self._pending[next(iter(self._pending))]
                    dropped = True
                self._pending[key] = item
                self._start()
                if len(self._pending) in (1, _WRITE_BATCH):  # wake it: work, or a full batch
                    self._queue.notify_all()
        if inline:
            with self.lock:
                self._write_one(key, item)
        if dropped:
            self._on_drop()

    def supersede(self, key: str) -> None:
        """Forget what is queued for ``key``: a newer answer is being written now."""
        with self._queue:
            self._pending.pop(key, None)
            self._inflight.pop(key, None)  # the writer checks before it writes

    def cancel(self) -> None:
        """Drop everything queued: never written after this, nor what the writer took."""
        with self._queue:
            self._pending.clear()
        with self.lock:
            self._generation += 1

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until everything queued is written (or failed); False if ``timeout`` passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._queue:
            if self._pending:
                self._hurry = True
                self._queue.notify_all()
            while self._pending or self._inflight:
                thread = self._thread
                if thread is None or not thread.is_alive():
                    break  # no writer (e.g. after a fork): drained below, in this thread
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._queue.wait(left)
        self._drain_inline()
        return True

    def stop(self) -> None:
        """Let the writer drain the queue and end; then drain anything left here."""
        with self._queue:
            self._stopping = True
            self._queue.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        self._drain_inline()
        _LIVE_WRITERS.discard(self)

    def _start(self) -> None:
        """Start the writer thread unless it runs (caller holds ``_queue``)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._thread = threading.Thread(
            target=self._write_loop, name="fallbackchain-cache-writer", daemon=True
        )
        self._thread.start()
        _LIVE_WRITERS.add(self)

    def _write_loop(self) -> None:
        """The writer thread: write queued answers, oldest first, until stopped and drained."""
        while True:
            with self._queue:
                while not self._pending and not self._stopping:
                    self._hurry = False
                    self._queue.wait()
                if not self._pending:
                    break
                self._linger()
                batch: Batch = []
                while self._pending and len(batch) < _WRITE_BATCH:
                    key = next(iter(self._pending))
                    item = self._inflight[key] = self._pending.pop(key)
                    batch.append((key, item))
                generation = self._generation
            try:
                with self.lock:  # not if cancel() or a put came meanwhile
                    if generation == self._generation:
                        self._write_batch([(k, i) for k, i in batch if self._inflight.get(k) is i])
            finally:
                with self._queue:
                    for key, item in batch:
                        if self._inflight.get(key) is item:
                            del self._inflight[key]
                    self._queue.notify_all()
        self._on_thread_end()

    def _linger(self) -> None:
        """Wait (caller holds ``_queue``) up to :data:`_LINGER` for a batch to fill."""
        deadline = time.monotonic() + _LINGER
        while len(self._pending) < _WRITE_BATCH and not (self._stopping or self._hurry):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._queue.wait(left)

    def _drain_inline(self) -> None:
        """Write whatever is queued in this thread (no live writer: after a fork, at exit)."""
        while True:
            with self._queue:
                if not self._pending:
                    return
                key = next(iter(self._pending))
                item = self._pending.pop(key)
            with self.lock:
                self._write_one(key, item)


_LIVE_WRITERS: weakref.WeakSet[WriteBehind] = weakref.WeakSet()
"""Writers whose thread runs: their queues are written at interpreter exit."""

_ALL_WRITERS: weakref.WeakSet[WriteBehind] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    """A forked child starts with empty queues and fresh locks of its own.

    The parent's writer thread does not exist in the child, and may have held these locks at
    the fork; what the parent had queued is the parent's to write.
    """
    for writer in list(_ALL_WRITERS):
        writer._forget_parent()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


@atexit.register
def _flush_at_exit() -> None:
    """Write every queued answer before the interpreter ends its daemon writer threads."""
    for writer in list(_LIVE_WRITERS):
        writer.flush()
