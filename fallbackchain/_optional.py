"""Keep optional dependencies out of ``import fallbackchain``.

pybreaker (a required dependency) tries ``from redis import Redis`` when it is imported, only
to offer its own ``CircuitRedisStorage``, which fallbackchain never uses (its Redis store is
its own). Importing the redis client costs about 160 ms, and redis >= 8 imports OpenTelemetry
too when that is installed: a memory-only app would pay for both on every start.

:func:`pybreaker_without_redis` wraps the ``import pybreaker`` statement. While it runs, the
redis client is invisible to imports made **by this thread only** (a ``sys.meta_path`` finder
that raises ``ModuleNotFoundError`` for ``redis``), so pybreaker takes its documented
"no redis support" path. Why this way and not another:

* ``sys.modules["redis"] = None`` would hide redis from every thread for that moment: another
  thread importing redis at the same time would fail. The finder asks which thread imports.
* Nothing is hidden when ``redis`` (or pybreaker) is already imported: the cost is paid then,
  and pybreaker sees the real module.
* So that an app using pybreaker's own ``CircuitRedisStorage`` in the same process loses
  nothing, its constructor is wrapped to import redis and fill in the names pybreaker would
  have bound at import (``Redis``, ``Pipeline``, ``RedisError``, ``HAS_REDIS_SUPPORT``): a
  store needs a redis client, so redis is loaded by then anyway.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import ModuleType
from typing import Any

__all__ = ["pybreaker_without_redis"]

_HIDDEN: tuple[str, ...] = ("redis",)


class _HideFromThread(importlib.abc.MetaPathFinder):
    """Makes the named top-level packages unimportable, for one thread only."""

    def __init__(self, names: Sequence[str], thread: int) -> None:
        self._names = frozenset(names)
        self._thread = thread

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if threading.get_ident() == self._thread and fullname.partition(".")[0] in self._names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden)", name=fullname)
        return None  # not ours to decide: the next finder looks


@contextlib.contextmanager
def pybreaker_without_redis() -> Iterator[None]:
    """Run an ``import pybreaker`` inside this block without pybreaker importing redis.

    A no-op when pybreaker or redis is already imported. Afterwards pybreaker behaves as if
    redis had been there, except that ``redis`` is only imported when a
    ``pybreaker.CircuitRedisStorage`` is first built.
    """
    if "pybreaker" in sys.modules or "redis" in sys.modules:
        yield
        return
    finder = _HideFromThread(_HIDDEN, threading.get_ident())
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.meta_path.remove(finder)
    module = sys.modules.get("pybreaker")
    if module is not None and not getattr(module, "HAS_REDIS_SUPPORT", True):
        _load_redis_on_first_store(module)


def _load_redis_on_first_store(pybreaker: ModuleType) -> None:
    """Wrap ``CircuitRedisStorage.__init__`` to bind pybreaker's redis names first."""
    storage = getattr(pybreaker, "CircuitRedisStorage", None)
    original: Callable[..., None] | None = getattr(storage, "__init__", None)
    if storage is None or original is None:
        return  # a pybreaker without it: nothing to restore

    @functools.wraps(original)
    def __init__(self: object, *args: Any, **kwargs: Any) -> None:  # noqa: N807
        _bind_redis_names(pybreaker)
        original(self, *args, **kwargs)

    storage.__init__ = __init__


def _bind_redis_names(pybreaker: ModuleType) -> None:
    """What pybreaker's own import would have done with redis installed (no-op without it)."""
    if getattr(pybreaker, "HAS_REDIS_SUPPORT", True):
        return
    try:
        from redis import Redis  # noqa: PLC0415 - the point: only when a store is built
        from redis.client import Pipeline  # noqa: PLC0415
        from redis.exceptions import RedisError  # noqa: PLC0415
    except ImportError:
        return  # pybreaker raises its own ImportError, as without fallbackchain
    # HAS_REDIS_SUPPORT last: the flag says the names before it are bound.
    names = {"Redis": Redis, "Pipeline": Pipeline, "RedisError": RedisError}
    for name, value in [*names.items(), ("HAS_REDIS_SUPPORT", True)]:
        setattr(pybreaker, name, value)
