"""Breaker state and the response cache shared through Redis, for many processes and hosts.

Selected by the config (``breaker.storage = "redis"``, ``cache.backend = "redis"``; see
``_backends``). What a caller can rely on:

* :class:`RedisGateStore` is a ``GateStore`` and an ``AsyncGateStore`` (and a
  ``pybreaker.CircuitBreakerStorage``, so ``gate.breaker.current_state`` is true). Every step
  (acquire, success, failure, release, vouch) is **one Lua script** over one hash per
  breaker, ``{namespace}:breaker:{tier}`` (fields ``state``, ``failures``, ``opened_at``,
  ``trusted``, ``probe_until``/``probe_token`` and one ``t:<token>`` per trial in flight), so
  no increment is lost and no two processes disagree about a transition: across every
  process sharing a namespace, a breaker in doubt has at most ``fail_max`` attempts failed or
  in flight, so it opens after ``fail_max`` failures in total, and each half-open period lets
  one probe through. Stamps are on the Redis server's clock (the gate's monotonic reading
  plus an offset measured with ``TIME`` on first use and after each outage), so a host whose
  own clock is skewed or steps cannot hold a cluster's breaker open. The hashes are a few
  dozen bytes each and are never expired; a trial whose process died is forgotten
  when its lease ends.
* :class:`RedisResponseCache` offers the public interface of
  :class:`~fallbackchain._cache.ResponseCache` (plus ``aget``/``aput`` on ``redis.asyncio``).
  Keys are ``{namespace}:cache:{fc1-...}``; values are the same JSON rows the disk cache
  writes, stored with ``SET ... PX`` so Redis expires them after ``ttl``; only complete answers
  are stored; nothing read back is ever unpickled. A TTL memory layer sits in front.
* **Redis is never in the way.** Commands time out after :data:`REDIS_TIMEOUT` seconds and
  are not retried by the client. On any Redis failure the breakers carry on with in-process
  state (seeded with the last state seen in Redis) and the cache with its memory layer; one
  WARNING is logged on the ``fallbackchain.redis`` logger (then at most one per
  :data:`WARN_INTERVAL` seconds while it stays down), and Redis is tried again only after
  :data:`RECONNECT_BACKOFF` seconds, by one caller at a time: a down or hung Redis costs at
  most one stall of about :data:`REDIS_TIMEOUT` per back-off period, never one per call. When it
  answers again it is used again (one INFO line). No Redis error ever reaches a caller.
* Sync chains use the ``redis`` client; async chains use ``redis.asyncio`` (one client per
  event loop), and the sync client is never called from a thread running an event loop
  (reads such as ``gate.state`` there return the last state this process saw).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import threading
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Final, Generic, TypeVar, cast

import pybreaker
import redis
import redis.asyncio
import redis.asyncio.retry
import redis.exceptions
from openai.types.chat import ChatCompletion
from redis.backoff import NoBackoff
from redis.retry import Retry

from ._breaker import BreakerState, Grant, MemoryGateStore, Transition
from ._cache import (
    CacheBase,
    CachedAnswer,
    CacheFailure,
    CacheStats,
    ExportRow,
    HeldEntry,
    ImportOutcome,
    ResponseCache,
    StoredAges,
    StoredRow,
    decode_row,
)
from ._config import CacheConfig
from ._errors import CacheError, FallbackChainError
from ._redact import mask_url

__all__ = [
    "RECONNECT_BACKOFF",
    "REDIS_TIMEOUT",
    "WARN_INTERVAL",
    "RedisGateStore",
    "RedisResponseCache",
    "RedisUnavailableError",
    "shared_link",
]

_log = logging.getLogger("fallbackchain.redis")

REDIS_TIMEOUT: Final = 0.09
"""Seconds a Redis connect or reply may take before the link is treated as down."""
RECONNECT_BACKOFF: Final = 2.0
"""Seconds between two attempts to use a Redis that failed."""
WARN_INTERVAL: Final = 60.0
"""At most one "Redis unavailable" WARNING per link per this many seconds."""
_SCAN_COUNT: Final = 500

T = TypeVar("T")


class RedisUnavailableError(FallbackChainError):
    """Internal: Redis could not be used for one operation (down, hung, refused, in back-off).

    Never raised to a caller of a chain, a store or a cache; it names the failure in logs.
    """


class RedisCacheError(CacheError):
    """Internal: the Redis layer of the cache failed for one operation (logged, never raised)."""


# --------------------------------------------------------------------------------------------
# The link: clients, health, back-off and the single warning
# --------------------------------------------------------------------------------------------


def _describe(exc: BaseException) -> str:
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


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class _RedisLink:
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
        reason = _describe(exc)
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
        if _on_event_loop():
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


_links: dict[str, _RedisLink] = {}
_links_lock = threading.Lock()


def shared_link(url: str) -> _RedisLink:
    """The process-wide link for ``url`` (created on first use)."""
    with _links_lock:
        link = _links.get(url)
        if link is None:
            link = _links[url] = _RedisLink(url, backoff=RECONNECT_BACKOFF)
        return link


# --------------------------------------------------------------------------------------------
# Scripts
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Script:
    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> _Script:
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


# Every breaker script returns {grant, from, to, state, failures, opened_at, trusted}, all
# strings (Redis would truncate a Lua number to an integer). Times arrive as repr() strings.
# A trial's slot is the field 't:<token>' holding its lease end; the probe's is the pair
# probe_until/probe_token. Trials are at most fail_max, so counting them scans a small hash.
_PRELUDE = """
local key = KEYS[1]
local function state()
  local s = redis.call('HGET', key, 'state')
  if s == 'open' or s == 'half-open' then return s end
  return 'closed'
end
local function reply(grant, from, to)
  local h = redis.call('HMGET', key, 'failures', 'opened_at', 'trusted')
  return {grant, from, to, state(), h[1] or '0', h[2] or '', h[3] or '0'}
end
local function settle(probe, token)
  if token ~= '' then redis.call('HDEL', key, 't:' .. token) end
  if probe ~= '1' then return false end
  if token ~= '' and redis.call('HGET', key, 'probe_token') ~= token then return false end
  redis.call('HDEL', key, 'probe_until', 'probe_token')
  return true
end
"""

_ACQUIRE = _Script.of(
    _PRELUDE
    + """
local now = tonumber(ARGV[1])
local st = state()
if st == 'closed' then
  if redis.call('HGET', key, 'trusted') == '1' then return reply('normal', '', '') end
  local flat = redis.call('HGETALL', key)
  local live = 0
  for i = 1, #flat, 2 do
    if string.sub(flat[i], 1, 2) == 't:' then
      local lease = tonumber(flat[i + 1])
      if lease and now < lease then live = live + 1 else redis.call('HDEL', key, flat[i]) end
    end
  end
  local failures = tonumber(redis.call('HGET', key, 'failures') or '0') or 0
  if failures + live >= tonumber(ARGV[4]) then return reply('busy', '', '') end
  redis.call('HSET', key, 't:' .. ARGV[5], ARGV[6])
  return reply('trial', '', '')
end
local from, to = '', ''
if st == 'open' then
  local opened = tonumber(redis.call('HGET', key, 'opened_at') or '')
  if opened and now - opened < tonumber(ARGV[2]) then return reply('', '', '') end
  redis.call('HSET', key, 'state', 'half-open')
  redis.call('HDEL', key, 'probe_until', 'probe_token')
  from, to = 'open', 'half-open'
end
local lease = tonumber(redis.call('HGET', key, 'probe_until') or '')
if lease and now < lease then return reply('', from, to) end
redis.call('HSET', key, 'probe_until', ARGV[3], 'probe_token', ARGV[5])
return reply('probe', from, to)
"""
)

_SUCCESS = _Script.of(
    _PRELUDE
    + """
if redis.call('HGET', key, 'failures') ~= '0' then redis.call('HSET', key, 'failures', '0') end
if redis.call('HGET', key, 'trusted') ~= '1' then redis.call('HSET', key, 'trusted', '1') end
if not settle(ARGV[1], ARGV[2]) then return reply('', '', '') end
local st = state()
if st == 'closed' then return reply('', '', '') end
redis.call('HSET', key, 'state', 'closed')
return reply('', st, 'closed')
"""
)

_FAILURE = _Script.of(
    _PRELUDE
    + """
local n = redis.call('HINCRBY', key, 'failures', 1)
redis.call('HDEL', key, 'trusted')
local st = state()
if not settle(ARGV[3], ARGV[4]) and not (st == 'closed' and n >= tonumber(ARGV[2])) then
  return reply('', '', '')
end
if st == 'open' then return reply('', '', '') end
redis.call('HSET', key, 'state', 'open', 'opened_at', ARGV[1])
return reply('', st, 'open')
"""
)

_RELEASE = _Script.of(
    _PRELUDE
    + """
settle(ARGV[1], ARGV[2])
return reply('', '', '')
"""
)

_VOUCH = _Script.of(
    _PRELUDE
    + """
if ARGV[1] ~= '' then redis.call('HDEL', key, 't:' .. ARGV[1]) end
if state() == 'closed' then redis.call('HSET', key, 'trusted', '1') end
return reply('', '', '')
"""
)

_IMPORT = _Script.of(
    """
local cur = redis.call('GET', KEYS[1])
if cur then
  local ok, row = pcall(cjson.decode, cur)
  if ok and type(row) == 'table' and type(row['stored_at']) == 'number'
     and row['stored_at'] >= tonumber(ARGV[1]) then
    return 0
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
)

_DELETE_IF_SAME = _Script.of(
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
)


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _as_state(raw: str) -> BreakerState:
    if raw == "open":
        return "open"
    if raw == "half-open":
        return "half-open"
    return "closed"


def _float_or_none(raw: object) -> float | None:
    if raw is None:
        return None
    try:
        value = float(_text(raw))
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _int_or_zero(raw: object) -> int:
    if raw is None:
        return 0
    try:
        return int(_text(raw))
    except ValueError:
        return 0


@dataclass(frozen=True, slots=True)
class _Snapshot:
    """The breaker as the last Redis reply showed it."""

    state: BreakerState = "closed"
    failures: int = 0
    opened_at: float | None = None
    trusted: bool = False


@dataclass(frozen=True, slots=True)
class _Reply:
    grant: Grant
    changed: Transition | None
    snapshot: _Snapshot


def _parse_reply(raw: Any) -> _Reply:
    if not isinstance(raw, list | tuple) or len(raw) != 7:
        raise RedisUnavailableError("unexpected reply from a breaker script")
    grant_s, from_s, to_s, state_s, failures_s, opened_s, trusted_s = (_text(v) for v in raw)
    grant = _GRANTS.get(grant_s)
    changed: Transition | None = (_as_state(from_s), _as_state(to_s)) if from_s and to_s else None
    snapshot = _Snapshot(
        _as_state(state_s),
        _int_or_zero(failures_s),
        _float_or_none(opened_s),
        trusted_s == "1",
    )
    return _Reply(grant, changed, snapshot)


_GRANTS: Final[dict[str, Grant]] = {
    "normal": "normal",
    "trial": "trial",
    "probe": "probe",
    "busy": "busy",
}


def _num(value: float) -> str:
    return repr(float(value))


def _token(token: str | None) -> str:
    """A permit's token as the scripts take it ("" for none)."""
    return "" if token is None else token


# --------------------------------------------------------------------------------------------
# Breaker state
# --------------------------------------------------------------------------------------------


class RedisGateStore(pybreaker.CircuitBreakerStorage):
    """A breaker's state in one Redis hash, shared by every process using ``namespace``.

    Implements ``GateStore`` and ``AsyncGateStore`` (one Lua script per step) and pybreaker's
    storage interface. While Redis is unavailable every step runs on an embedded
    :class:`~fallbackchain._breaker.MemoryGateStore`, seeded with the last state seen in Redis.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        name: str,
        link: _RedisLink | None = None,
    ) -> None:
        super().__init__("redis")
        self._link = link if link is not None else shared_link(url)
        self.key = f"{namespace}:breaker:{name}"
        self._local = MemoryGateStore()
        self._mode_lock = threading.Lock()
        self._snapshot = _Snapshot()
        self._on_redis = True  # the last step used Redis (the local store is not in use)
        self._offset: float | None = None  # Redis server time minus the gate's clock

    def __repr__(self) -> str:
        where = "redis" if self.using_redis else "local"
        return f"<RedisGateStore {self.key!r} at {self._link.display} ({where})>"

    @property
    def using_redis(self) -> bool:
        """True when the last step was decided in Redis, False while on local state."""
        return self._on_redis

    @property
    def link(self) -> _RedisLink:
        return self._link

    # -- mode switching -------------------------------------------------------------------

    def _redis_ok(self, reply: _Reply | None = None) -> None:
        if reply is not None:
            self._snapshot = reply.snapshot
        self._on_redis = True

    def _fallback(self) -> MemoryGateStore:
        """The local store, seeded from the last Redis snapshot when we just switched to it."""
        with self._mode_lock:
            if self._on_redis:
                self._on_redis = False
                _seed(self._local, self._snapshot, self._offset or 0.0)
                self._offset = None  # the server may come back with another clock
        return self._local

    # -- shared time ----------------------------------------------------------------------
    # Stamps in the hash are on the Redis server's clock, so hosts whose own clocks disagree
    # (or jump) still agree on when a breaker opened: the gate's monotonic reading plus this
    # store's offset to the server clock, measured with TIME on first use and again after each
    # Redis outage. Not re-measured in between: a monotonic clock drifts by parts per million,
    # and a new offset could move this store's stamps backwards.

    def _synced(self, now: float, reply: Any) -> float:
        seconds, micros = reply
        self._offset = int(seconds) + int(micros) / 1e6 - now
        return now + self._offset

    def _shared_now(self, now: float) -> float:
        """``now`` (the gate's clock) on the server's clock; raises RedisUnavailableError."""
        if self._offset is None:
            return self._synced(now, self._link.call(lambda r: r.time()))
        return now + self._offset

    async def _ashared_now(self, now: float) -> float:
        if self._offset is None:
            return self._synced(now, await self._link.acall(lambda r: r.time()))
        return now + self._offset

    # -- GateStore --------------------------------------------------------------------------

    def current_state(self) -> BreakerState:
        return _as_state(self.state)

    def failures(self) -> int:
        return self.counter

    def try_acquire(
        self,
        now: float,
        reset_timeout: float,
        probe_lease: float,
        *,
        fail_max: int,
        token: str,
        trial_lease: float,
    ) -> tuple[Grant, Transition | None]:
        step = _acquire_step(
            now, reset_timeout, probe_lease, fail_max=fail_max, token=token, trial_lease=trial_lease
        )
        return self._run(step)

    def record_success(self, *, probe: bool, token: str | None = None) -> Transition | None:
        return self._run(_success_step(probe, token))

    def record_failure(
        self, now: float, fail_max: int, *, probe: bool, token: str | None = None
    ) -> Transition | None:
        return self._run(_failure_step(now, fail_max, probe, token))

    def record_release(self, *, probe: bool, token: str | None = None) -> None:
        if probe or token is not None:  # a normal permit holds no slot: nothing to free
            self._run(_release_step(probe, token))

    def record_vouch(self, *, token: str | None) -> None:
        self._run(_vouch_step(token))

    def _run(self, command: _Command[T]) -> T:
        """One step on the sync client; on the local store while Redis is unavailable."""
        try:
            shared = 0.0 if command.now is None else self._shared_now(command.now)
            keys, args = (self.key,), command.args(shared)
            reply = _parse_reply(self._link.call(lambda r: command.script.run(r, keys, args)))
        except RedisUnavailableError:
            return command.local(self._fallback())
        return self._answer(command, reply)

    # -- AsyncGateStore -----------------------------------------------------------------------

    async def atry_acquire(
        self,
        now: float,
        reset_timeout: float,
        probe_lease: float,
        *,
        fail_max: int,
        token: str,
        trial_lease: float,
    ) -> tuple[Grant, Transition | None]:
        step = _acquire_step(
            now, reset_timeout, probe_lease, fail_max=fail_max, token=token, trial_lease=trial_lease
        )
        return await self._arun(step)

    async def arecord_success(self, *, probe: bool, token: str | None = None) -> Transition | None:
        return await self._arun(_success_step(probe, token))

    async def arecord_failure(
        self, now: float, fail_max: int, *, probe: bool, token: str | None = None
    ) -> Transition | None:
        return await self._arun(_failure_step(now, fail_max, probe, token))

    async def arecord_release(self, *, probe: bool, token: str | None = None) -> None:
        if probe or token is not None:
            await self._arun(_release_step(probe, token))

    async def arecord_vouch(self, *, token: str | None) -> None:
        await self._arun(_vouch_step(token))

    async def _arun(self, command: _Command[T]) -> T:
        """:meth:`_run` on this event loop's ``redis.asyncio`` client."""
        try:
            shared = 0.0 if command.now is None else await self._ashared_now(command.now)
            keys, args = (self.key,), command.args(shared)
            reply = _parse_reply(
                await self._link.acall(lambda r: command.script.arun(r, keys, args))
            )
        except RedisUnavailableError:
            return command.local(self._fallback())
        return self._answer(command, reply)

    def _answer(self, command: _Command[T], reply: _Reply) -> T:
        """Redis decided the step: remember what it showed and read the step's result."""
        self._redis_ok(reply)
        return command.answer(reply)

    async def aclose(self) -> None:
        """Close this event loop's Redis client (shared with other users of the same URL)."""
        await self._link.aclose_loop_client()

    # -- pybreaker's storage interface ----------------------------------------------------------

    def _read(self) -> _Snapshot | None:
        """The hash now (sync threads), the last reply (event-loop threads), None if down."""
        if _on_event_loop():
            return self._snapshot if self._on_redis else None
        try:
            raw = self._link.call(
                lambda r: r.hmget(self.key, ["state", "failures", "opened_at", "trusted"])
            )
        except RedisUnavailableError:
            self._fallback()
            return None
        values = list(cast(Sequence[Any], raw))
        snapshot = _Snapshot(
            _as_state(_text(values[0]) if values[0] is not None else "closed"),
            _int_or_zero(values[1]),
            _float_or_none(values[2]),
            values[3] is not None and _text(values[3]) == "1",
        )
        self._redis_ok(_Reply(None, None, snapshot))
        return snapshot

    def _write(self, op: Callable[[redis.Redis], object], local: Callable[[], None]) -> None:
        if _on_event_loop():  # never block a loop: pybreaker's own writes are not used here
            local()
            return
        try:
            self._link.call(op)
        except RedisUnavailableError:
            self._fallback()
            local()
            return
        self._on_redis = True

    @property
    def state(self) -> str:
        snapshot = self._read()
        return snapshot.state if snapshot is not None else self._local.current_state()

    @state.setter
    def state(self, state: str) -> None:
        value = _as_state(str(state))

        def local() -> None:
            self._local.state = value

        self._write(lambda r: r.hset(self.key, "state", value), local)

    def increment_counter(self) -> None:
        self._write(lambda r: r.hincrby(self.key, "failures", 1), self._local.increment_counter)

    def reset_counter(self) -> None:
        self._write(lambda r: r.hset(self.key, "failures", "0"), self._local.reset_counter)

    def increment_success_counter(self) -> None:
        self._write(
            lambda r: r.hincrby(self.key, "successes", 1), self._local.increment_success_counter
        )

    def reset_success_counter(self) -> None:
        self._write(lambda r: r.hset(self.key, "successes", "0"), self._local.reset_success_counter)

    @property
    def counter(self) -> int:
        snapshot = self._read()
        return snapshot.failures if snapshot is not None else self._local.failures()

    @property
    def success_counter(self) -> int:
        if _on_event_loop() or not self._on_redis:
            return int(self._local.success_counter)
        try:
            raw = self._link.call(lambda r: r.hget(self.key, "successes"))
        except RedisUnavailableError:
            return int(self._local.success_counter)
        return _int_or_zero(raw)

    @property
    def opened_at(self) -> datetime | None:
        snapshot = self._read()
        if snapshot is None:
            value: datetime | None = self._local.opened_at
            return value
        if snapshot.opened_at is None:
            return None
        return datetime.fromtimestamp(snapshot.opened_at, tz=UTC)

    @opened_at.setter
    def opened_at(self, when: datetime) -> None:
        stamp = _num(when.timestamp())

        def local() -> None:
            self._local.opened_at = when

        self._write(lambda r: r.hset(self.key, "opened_at", stamp), local)


@dataclass(frozen=True, slots=True)
class _Command(Generic[T]):
    """One breaker step, apart from how it is sent (the sync and async clients share it).

    ``now`` is the gate's clock reading for a timed step (``None``: the step needs no time);
    ``args`` builds the script's arguments from it on the server's clock; ``answer`` reads the
    step's result from a reply; ``local`` takes the same step on the local store while Redis
    is unavailable.
    """

    script: _Script
    now: float | None
    args: Callable[[float], Sequence[str]]
    answer: Callable[[_Reply], T]
    local: Callable[[MemoryGateStore], T]


def _flag(value: bool) -> str:
    return "1" if value else "0"


def _acquire_step(
    now: float,
    reset_timeout: float,
    probe_lease: float,
    *,
    fail_max: int,
    token: str,
    trial_lease: float,
) -> _Command[tuple[Grant, Transition | None]]:
    def args(shared: float) -> tuple[str, ...]:
        return (
            _num(shared),
            _num(reset_timeout),
            _num(shared + probe_lease),
            str(int(fail_max)),
            token,
            _num(shared + trial_lease),
        )

    def local(store: MemoryGateStore) -> tuple[Grant, Transition | None]:
        return store.try_acquire(
            now,
            reset_timeout,
            probe_lease,
            fail_max=fail_max,
            token=token,
            trial_lease=trial_lease,
        )

    return _Command(_ACQUIRE, now, args, lambda reply: (reply.grant, reply.changed), local)


def _success_step(probe: bool, token: str | None) -> _Command[Transition | None]:
    return _Command(
        _SUCCESS,
        None,
        lambda _: (_flag(probe), _token(token)),
        lambda reply: reply.changed,
        lambda store: store.record_success(probe=probe, token=token),
    )


def _failure_step(
    now: float, fail_max: int, probe: bool, token: str | None
) -> _Command[Transition | None]:
    return _Command(
        _FAILURE,
        now,
        lambda shared: (_num(shared), str(int(fail_max)), _flag(probe), _token(token)),
        lambda reply: reply.changed,
        lambda store: store.record_failure(now, fail_max, probe=probe, token=token),
    )


def _release_step(probe: bool, token: str | None) -> _Command[None]:
    return _Command(
        _RELEASE,
        None,
        lambda _: (_flag(probe), _token(token)),
        lambda _: None,
        lambda store: store.record_release(probe=probe, token=token),
    )


def _vouch_step(token: str | None) -> _Command[None]:
    return _Command(
        _VOUCH,
        None,
        lambda _: (_token(token),),
        lambda _: None,
        lambda store: store.record_vouch(token=token),
    )


def _seed(local: MemoryGateStore, snapshot: _Snapshot, offset: float) -> None:
    """Make the local store continue from the last state seen in Redis.

    ``offset`` (server clock minus the gate's clock) brings the server's stamp back to the
    gate's clock, which the local store reads.
    """
    with local._lock:
        local.state = snapshot.state
        local.reset_counter()
        for _ in range(min(snapshot.failures, 10_000)):  # only "reached fail_max" matters
            local.increment_counter()
        if snapshot.opened_at is not None:
            local.opened_at = datetime.fromtimestamp(snapshot.opened_at - offset, tz=UTC)
        local._probe_until = local._probe_token = None
        local._trials.clear()
        local.trusted = snapshot.trusted


# --------------------------------------------------------------------------------------------
# The response cache
# --------------------------------------------------------------------------------------------


def _scan_op(cursor: int, pattern: str) -> Callable[[redis.Redis], Any]:
    return lambda r: r.scan(cursor, match=pattern, count=_SCAN_COUNT)


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _px(row: StoredRow) -> int:
    """A row's time to live in Redis (``SET ... PX``): whole milliseconds, at least 1."""
    return max(1, math.ceil(row.ttl_left * 1000))


class RedisResponseCache(ResponseCache):
    """The last good answer per request key, in Redis, with a TTL memory layer in front.

    Same public interface and guarantees as :class:`ResponseCache` (nothing raises from the
    cache operations; only complete answers; JSON only; never serves an answer ``ttl`` old),
    shared by every process and host using the same Redis and ``namespace``. ``aget`` and
    ``aput`` use ``redis.asyncio`` on the running event loop. Entries expire in Redis after
    ``ttl`` (``SET ... PX``). The memory layer is per process: an entry it holds is served
    until it expires there, even after another process clears or replaces it in Redis (set
    ``memory_items = 0`` to always read Redis).
    """

    def __init__(
        self,
        config: CacheConfig,
        *,
        namespace: str,
        clock: Callable[[], float] = time.time,
        link: _RedisLink | None = None,
    ) -> None:
        # A ResponseCache to its callers, but only the shared parts are set up (memory layer,
        # counters, row rules, failure log): none of the disk machinery. Redis is the storage.
        CacheBase.__init__(self, config, clock)
        self._link = link if link is not None else shared_link(config.redis_url)
        self.namespace = namespace
        self.prefix = f"{namespace}:cache:"
        self._loops: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

    # --- public API ------------------------------------------------------------------------

    @property
    def directory(self) -> str:
        """Where the entries live: the Redis URL (password masked) and the key pattern."""
        return f"{self._link.display} {self.prefix}*"

    @property
    def disk_available(self) -> bool:
        """True while Redis is usable (it plays the disk layer's part). Never raises.

        Outside an event loop this asks Redis (one PING, bounded by the link's timeout)
        unless it is already known to be down; on an event loop it reports what is known.
        """
        if not self._usable() or not self._link.available:
            return False
        if _on_event_loop():
            return True
        try:
            return bool(self._link.call(lambda r: r.ping()))
        except RedisUnavailableError:
            return False

    @property
    def read_only(self) -> bool:
        """Always False: Redis is either usable for reads and writes, or unavailable."""
        return False

    @property
    def link(self) -> _RedisLink:
        return self._link

    def get(self, key: str) -> CachedAnswer | None:
        """The stored answer for ``key``, or ``None``. Never raises; never serves expired."""
        if not self._usable():
            return None
        try:
            answer = self._memory.get(key, self._clock())
            if answer is None:
                raw = self._link.call(lambda r: r.get(self.prefix + key))
                answer = self._from_row(key, raw, self._clock())
        except Exception as exc:  # noqa: BLE001 - the cache must never break a request
            self._failure("get", exc, "treated as a miss")
            answer = None
        return self._count_lookup(answer)

    async def aget(self, key: str) -> CachedAnswer | None:
        """:meth:`get` on ``redis.asyncio``: never blocks the event loop. Never raises."""
        if not self._usable():
            return None
        try:
            answer = self._memory.get(key, self._clock())
            if answer is None:
                self._loops.add(asyncio.get_running_loop())
                raw = await self._link.acall(lambda r: r.get(self.prefix + key))
                answer = self._from_row(key, raw, self._clock())
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
        """Store a complete answer; True if it was written to Redis. Never raises.

        As :meth:`ResponseCache.put`: incomplete answers are refused, the memory layer is
        updated even when Redis is unavailable, and ``stored_at`` dates a restored answer.
        Every put is written (a SET), so ``rewrite`` changes nothing here.
        """
        if not self._usable():
            return False
        try:
            row = self._prepare_row(key, completion, stored_at)
            stored = row is not None and self._set(key, row)
        except Exception as exc:  # noqa: BLE001 - the cache must never break a request
            self._failure("put", exc, "answer not stored")
            return False
        return self._count_store(stored)

    def put_later(self, key: str, completion: ChatCompletion) -> bool:
        """:meth:`put`, synchronously: Redis has no write-behind queue (a write is one SET).

        Mirrors :meth:`ResponseCache.put_later` so a chain can use either cache.
        """
        return self.put(key, completion)

    def flush(self, timeout: float | None = None) -> bool:
        """Nothing is ever queued: True at once."""
        return True

    def _queued(self) -> int:
        return 0

    async def aput(
        self, key: str, completion: ChatCompletion, *, stored_at: float | None = None
    ) -> bool:
        """:meth:`put` on ``redis.asyncio``: never blocks the event loop. Never raises."""
        if not self._usable():
            return False
        try:
            row = self._prepare_row(key, completion, stored_at)
            stored = row is not None and await self._aset(key, row)
        except Exception as exc:  # noqa: BLE001 - the cache must never break a request
            self._failure("put", exc, "answer not stored")
            return False
        return self._count_store(stored)

    # put's write, apart from the client it goes through (a row that put refuses is not written)

    def _set(self, key: str, row: StoredRow) -> bool:
        name, px = self.prefix + key, _px(row)
        return bool(self._link.call(lambda r: r.set(name, row.text, px=px)))

    async def _aset(self, key: str, row: StoredRow) -> bool:
        name, px = self.prefix + key, _px(row)
        self._loops.add(asyncio.get_running_loop())
        return bool(await self._link.acall(lambda r: r.set(name, row.text, px=px)))

    def stats(self, *, scan: bool = False) -> CacheStats:
        """Counters and sizes (``entries``/``bytes``: this namespace in Redis). Never raises.

        ``entries`` and ``bytes`` walk the namespace's keys (SCAN); ``scan=True`` also reads
        every value to fill in ``oldest``, ``newest`` and ``expired``.
        """
        entries = size = 0
        ages = StoredAges(self._clock(), self._ttl) if scan else None
        if self._usable():
            try:
                if ages is None:
                    for batch in self._key_batches():
                        lengths = self._lengths(batch)
                        entries += sum(1 for n in lengths if n)
                        size += sum(lengths)
                else:
                    for _key, value, entry in self._values("stats"):
                        entries += 1
                        size += len(value)
                        if entry is not None:
                            ages.add(entry.stored_at)
            except Exception as exc:  # noqa: BLE001 - stats are best effort
                self._failure("stats", exc, "Redis sizes reported as 0")
                entries = size = 0
                if ages is not None:
                    ages = StoredAges(ages.now, self._ttl)
        return self._stats(entries, size, ages)

    def clear(self) -> int:
        """Remove every entry of this namespace; returns the number of Redis keys removed.

        When Redis is unavailable, the number of memory entries removed. Never raises.
        Other processes' memory layers keep what they hold until it expires there.
        """
        memory_removed = self._memory.clear()
        if not self._usable():
            return memory_removed
        removed = 0
        try:
            for batch in self._key_batches():
                removed += int(self._link.call(self._unlink_op(batch)))
        except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
            self._failure("clear", exc, "cache not (fully) cleared")
            return removed or memory_removed
        return removed

    def iter_keys(self) -> Iterator[str]:
        """Yield the key of every entry of this namespace in Redis (SCAN order). Never raises."""
        if not self._usable():
            return
        try:
            for batch in self._key_batches():
                yield from batch
        except Exception as exc:  # noqa: BLE001
            self._failure("iter_keys", exc, "key listing stopped")

    def prune(self) -> int:
        """Remove every entry at least ``ttl`` old by the cache's clock. Never raises.

        Redis already expires entries ``ttl`` after they were written; this also removes
        those dated older by the cache's clock. A value rewritten meanwhile is never removed.
        """
        now = self._clock()
        self._memory.prune(now)

        def delete_if_same(key: str, raw: bytes, _entry: HeldEntry) -> int:
            return int(self._link.call(self._delete_if_same_op(key, raw)))

        return self._prune_rows(now, delete_if_same)

    def export_rows(self) -> Iterator[ExportRow]:
        """Yield every servable entry (unexpired, readable, complete), in Redis SCAN order.

        Unreadable rows are logged and skipped; the memory layer is not listed. Does not count
        as hits or misses. Never raises.
        """
        return self._export_rows()

    def import_row(self, key: str, completion: ChatCompletion, stored_at: float) -> ImportOutcome:
        """Store an exported answer unless Redis holds one for ``key`` as new or newer.

        Validation and outcomes as :meth:`ResponseCache.import_row`; the comparison and the
        write are one Lua script.
        """

        def write(at: float) -> ImportOutcome:
            row = self._prepare_row(key, completion, at)
            if row is None:
                return "failed"
            name, args = self.prefix + key, (_num(at), row.text, str(_px(row)))
            written = self._link.call(lambda r: _IMPORT.run(r, (name,), args))
            return "imported" if int(written) else "kept"

        return self._import(key, completion, stored_at, write)

    def close(self) -> None:
        """Drop the memory layer; later calls miss. Idempotent.

        Redis connections are shared by the process (see :func:`shared_link`); the idle
        connections of the event loops this cache used are closed here, best effort.
        """
        if not self._mark_closed():
            self._link.close_loop_clients(list(self._loops))

    async def aclose(self) -> None:
        """:meth:`close`, closing this event loop's async client properly."""
        self._mark_closed()
        await self._link.aclose_loop_client()

    def __enter__(self) -> RedisResponseCache:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"RedisResponseCache({self.directory!r}, {self._state('redis', self._link.available)})"
        )

    # --- internals -------------------------------------------------------------------------

    def _key_batches(self) -> Iterator[list[str]]:
        """Yield the namespace's keys (prefix removed) in batches; raises on a Redis failure."""
        pattern = _glob_escape(self.prefix) + "*"
        cursor: int = 0
        seen: set[str] = set()
        start = len(self.prefix)
        while True:
            cursor, names = cast(
                tuple[int, list[bytes]], self._link.call(_scan_op(cursor, pattern))
            )
            batch: list[str] = []
            for name in names:
                try:
                    key = name.decode("utf-8")[start:]
                except UnicodeDecodeError:
                    continue
                if key not in seen:
                    seen.add(key)
                    batch.append(key)
            if batch:
                yield batch
            if int(cursor) == 0:
                return

    def _unlink_op(self, batch: Sequence[str]) -> Callable[[redis.Redis], Any]:
        names = [self.prefix + k for k in batch]
        return lambda r: r.unlink(*names)

    def _delete_if_same_op(self, key: str, raw: bytes) -> Callable[[redis.Redis], Any]:
        name = self.prefix + key
        return lambda r: _DELETE_IF_SAME.run(r, (name,), (raw,))

    def _fetch(self, batch: Sequence[str]) -> list[bytes | None]:
        names = [self.prefix + k for k in batch]
        return cast(list[bytes | None], self._link.call(lambda r: r.mget(names)))

    def _lengths(self, batch: Sequence[str]) -> list[int]:
        def op(r: redis.Redis) -> list[Any]:
            pipe = r.pipeline(transaction=False)
            for k in batch:
                pipe.strlen(self.prefix + k)
            return pipe.execute()

        return [int(n) for n in self._link.call(op)]

    def _values(self, operation: str) -> Iterator[tuple[str, bytes, HeldEntry | None]]:
        """Every value of the namespace with its key, decoded; raises on a Redis failure.

        The entry is None for an unreadable value (logged as a skipped row).
        """
        for batch in self._key_batches():
            for key, value in zip(batch, self._fetch(batch), strict=True):
                if value is None:
                    continue
                entry: HeldEntry | None
                try:
                    entry = decode_row(value)
                except CacheError as exc:
                    self._skip_row(operation, exc)
                    entry = None
                yield key, value, entry

    def _scan_entries(self, operation: str) -> Iterator[tuple[str, bytes, HeldEntry]]:
        """Every readable entry with its key and raw value; unreadable ones are logged."""
        if not self._usable():
            return
        try:
            for key, value, entry in self._values(operation):
                if entry is not None:
                    yield key, value, entry
        except Exception as exc:  # noqa: BLE001 - the cache must never break a caller
            self._failure(operation, exc, "scan stopped")

    def _describe_failure(self, exc: BaseException) -> CacheFailure | None:
        if isinstance(exc, RedisUnavailableError):
            return None  # the link logged it (once), and says when Redis is back
        mapped: CacheError
        if isinstance(exc, CacheError):
            mapped = exc
        else:
            mapped = RedisCacheError("unexpected error in the Redis cache")
            mapped.__cause__ = exc
        cause = mapped.__cause__ if mapped.__cause__ is not None else mapped
        return CacheFailure(mapped, type(cause).__name__, (type(mapped).__name__,))
