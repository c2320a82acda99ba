"""One Redis URL's clients and health, shared by the breaker store and the cache of a process.

What a caller can rely on: **Redis is never in the way.** Commands time out after
:data:`REDIS_TIMEOUT` seconds and are not retried by the client. On any Redis failure the
caller carries on without Redis (the breakers with in-process state, the cache with its memory
layer); one WARNING is logged on the ``fallbackchain.redis`` logger (then at most one per
:data:`WARN_INTERVAL` seconds while it stays down), and Redis is tried again only after
:data:`RECONNECT_BACKOFF` seconds, by one caller at a time: a down or hung Redis costs at most
one stall of about :data:`REDIS_TIMEOUT` per back-off period, never one per call. When it answers
again it is used again (one INFO line). No Redis error ever reaches a caller of a chain.

Sync callers use the ``redis`` client; async callers use ``redis.asyncio`` (one client per event
loop), and the sync client is never called from a thread running an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.exceptions
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._errors import FallbackChainError
from ._redact import mask_url

__all__ = [
    "RECONNECT_BACKOFF",
    "REDIS_TIMEOUT",
    "WARN_INTERVAL",
    "RedisLink",
    "RedisScript",
    "RedisUnavailableError",
    "on_event_loop",
    "redis_number",
    "shared_link",
]

_log = logging.getLogger("fallbackchain.redis")

REDIS_TIMEOUT: Final = 0.09
"""Seconds a Redis connect or reply may take before the link is treated as down."""
RECONNECT_BACKOFF: Final = 2.0
"""Seconds between two attempts to use a Redis that failed."""
WARN_INTERVAL: Final = 60.0
"""At most one "Redis unavailable" WARNING per link per this many seconds."""

T = TypeVar("T")


class RedisUnavailableError(FallbackChainError):
    """Internal: Redis could not be used for one operation (down, hung, refused, in back-off).

    Never raised to a caller of a chain, a store or a cache; it names the failure in logs.
    """



# --------------------------------------------------------------------------------------------
# The link: clients, health, back-off and the single warning
# --------------------------------------------------------------------------------------------


def describe_failure(exc: BaseException) -> str:
    """A short, content-free reason for a Redis failure (never the server's message text)."""
    if isinstance(exc, redis.exceptions.AuthenticationError | redis.exceptions.AuthorizationError):
        return "authentication failed"
    if isinstance(exc, redis.exceptions.TimeoutError | TimeoutError):
        return "timed out"
    if isinstance(exc, redis.exceptions.ConnectionError | OSError):
        return "unreachable"
    if isinstance(exc, redis.exceptions.ReadOnlyError):
        return "read-only replica"
    if isinstance(exc, redis.exceptions.ResponseError):
        return "refused the command"
    return "failed"


def on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class RedisLink:
    """Clients for one Redis URL, and whether to use it right now.

    Shared (see :func:`shared_link`) by every store and cache of a process using that URL, so
    one outage is one warning and one stall per back-off period, whoever notices it.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = REDIS_TIMEOUT,
        backoff: float = RECONNECT_BACKOFF,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self.display = mask_url(url)
        self._timeout = timeout
        self._backoff = backoff
        self._monotonic = monotonic
        self._lock = threading.Lock()  # client creation and health fields only
        self._sync: redis.Redis | None = None
        self._async: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, redis.asyncio.Redis] = (
            weakref.WeakKeyDictionary()
        )
        self._closing: set[asyncio.Task[None]] = set()
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._warned_at: float | None = None
        self.sync_calls = 0
        """Commands sent with the sync client (for tests and diagnostics)."""
        self.async_calls = 0
        """Commands sent with a ``redis.asyncio`` client."""
        self.sync_calls_on_loop = 0
        """Sync commands sent from a thread running an event loop (should stay 0)."""

    # -- health -------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False while Redis is considered down (until it answers again)."""
        return self._down_since is None

    def _may_try(self) -> bool:
        """Whether this caller may use Redis now; while down, one caller per back-off period."""
        with self._lock:
            if self._down_since is None:
                return True
            now = self._monotonic()
            if now < self._retry_at:
                return False
            self._retry_at = now + self._backoff  # this caller retries; the others stay local
            return True

    def _failed(self, exc: BaseException) -> RedisUnavailableError:
        reason = describe_failure(exc)
        error = RedisUnavailableError(f"Redis {reason}")
        error.__cause__ = exc
        with self._lock:
            now = self._monotonic()
            if self._down_since is None:
                self._down_since = now
            self._retry_at = now + self._backoff
            warn = self._warned_at is None or not 0.0 <= now - self._warned_at < WARN_INTERVAL
            if warn:
                self._warned_at = now
        if warn:
            _log.warning(
                "Redis at %s is unavailable (%s: %s; %s); breakers use "
                "in-process state and the Redis cache is skipped; retrying every %gs",
                self.display,
                type(error).__name__,
                reason,
                type(exc).__name__,
                self._backoff,
            )
        return error

    def _succeeded(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            _log.info(
                "Redis at %s reconnected after %.1fs; using shared state again",
                self.display,
                self._monotonic() - since,
            )

    def _unavailable(self) -> RedisUnavailableError:
        return RedisUnavailableError("Redis is down; waiting for the back-off to pass")

    # -- clients ------------------------------------------------------------------------------

    def _sync_client(self) -> redis.Redis:
        with self._lock:
            if self._sync is None:
                self._sync = redis.Redis.from_url(
                    self.url,
                    socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    retry=Retry(NoBackoff(), 0),
                    health_check_interval=0,
                )
            return self._sync

    def _async_client(self) -> redis.asyncio.Redis:
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.get(loop)
            if client is None:
                client = redis.asyncio.Redis.from_url(
                    self.url,
                    socket_timeout=self._timeout,
                    socket_connect_timeout=self._timeout,
                    retry=redis.asyncio.retry.Retry(NoBackoff(), 0),
                    health_check_interval=0,
                )
                self._async[loop] = client
            return client

    # -- calls --------------------------------------------------------------------------------

    def call(self, op: Callable[[redis.Redis], T]) -> T:
        """Run ``op`` with the sync client; :class:`RedisUnavailableError` if Redis can't."""
        if not self._may_try():
            raise self._unavailable()
        self.sync_calls += 1
        if on_event_loop():
            self.sync_calls_on_loop += 1
        try:
            result = op(self._sync_client())
        except Exception as exc:  # any client failure means "not now"
            raise self._failed(exc) from exc
        self._succeeded()
        return result

    async def acall(self, op: Callable[[redis.asyncio.Redis], Awaitable[T]]) -> T:
        """Run ``op`` with this event loop's ``redis.asyncio`` client."""
        if not self._may_try():
            raise self._unavailable()
        self.async_calls += 1
        try:
            result = await op(self._async_client())
        except Exception as exc:  # any client failure means "not now"
            raise self._failed(exc) from exc
        self._succeeded()
        return result

    # -- closing ------------------------------------------------------------------------------
    #
    # The async clients are shared by every user of the link on a loop, so "closing" one only
    # disconnects its idle connections: a command another task has in flight is never cut off,
    # and the next command simply reconnects. A loop's client is dropped with the loop.

    async def aclose_loop_client(self) -> None:
        """Disconnect the running loop's idle Redis connections (before the loop closes)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            client = self._async.get(loop)
        if client is not None:
            await _release(client)

    def close_loop_clients(
        self, loops: Iterable[asyncio.AbstractEventLoop] | None = None, timeout: float = 1.0
    ) -> None:
        """:meth:`aclose_loop_client` for ``loops`` (default: all), from any thread; best effort."""
        with self._lock:
            if loops is None:
                items = list(self._async.items())
            else:
                items = [(lp, self._async[lp]) for lp in loops if lp in self._async]
            for loop, _ in items:
                if loop.is_closed():
                    self._async.pop(loop, None)
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for loop, client in items:
            if loop.is_closed():
                continue
            if loop is current:
                task = loop.create_task(_release(client))
                self._closing.add(task)
                task.add_done_callback(self._closing.discard)
            elif loop.is_running():
                future = asyncio.run_coroutine_threadsafe(_release(client), loop)
                with contextlib.suppress(Exception):
                    future.result(timeout)
            # a loop that is neither running nor closed is left to its owner

    def close(self) -> None:
        """Close the sync client and release every loop's connections (tests, shutdown).

        Only for a link nobody else is using: commands in flight on the sync client fail.
        """
        with self._lock:
            client, self._sync = self._sync, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
        self.close_loop_clients()


async def _release(client: redis.asyncio.Redis) -> None:
    with contextlib.suppress(Exception):
        await client.connection_pool.disconnect(inuse_connections=False)


_links: dict[str, RedisLink] = {}
_links_lock = threading.Lock()


def shared_link(url: str) -> RedisLink:
    """The process-wide link for ``url`` (created on first use)."""
    with _links_lock:
        link = _links.get(url)
        if link is None:
            link = _links[url] = RedisLink(url, backoff=RECONNECT_BACKOFF)
        return link



# --------------------------------------------------------------------------------------------
# Scripts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisScript:
    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> RedisScript:
        return cls(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())

    def run(self, client: redis.Redis, keys: Sequence[str], args: Sequence[str | bytes]) -> Any:
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:  # first use, or Redis restarted
            return client.eval(self.source, len(keys), *keys, *args)

    async def arun(
        self, client: redis.asyncio.Redis, keys: Sequence[str], args: Sequence[str]
    ) -> Any:
        try:
            return await client.evalsha(self.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            return await client.eval(self.source, len(keys), *keys, *args)



def redis_number(value: float) -> str:
    """A float as the scripts take it (Redis would truncate a Lua number to an integer)."""
    return repr(float(value))
