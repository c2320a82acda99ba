"""Breaker state shared through Redis by many processes and hosts (``breaker.storage = "redis"``).

:class:`RedisGateStore` is a ``GateStore`` and an ``AsyncGateStore``. Every step (acquire,
success, failure, release, vouch) is **one Lua script** over one hash per breaker,
``{namespace}:breaker:{tier}`` (fields ``state``, ``failures``, ``opened_at``, ``trusted``,
``probe_until``/``probe_token`` and one ``t:<token>`` per trial in flight), so no increment is
lost and no two processes disagree about a transition: across every process sharing a
namespace, a breaker in doubt has at most ``fail_max`` attempts failed or in flight, so it opens
after ``fail_max`` failures in total, and each half-open period lets one probe through. Stamps
are on the Redis server's clock (the gate's monotonic reading plus an offset measured with
``TIME`` on first use and after each outage), so a host whose own clock is skewed or steps
cannot hold a cluster's breaker open. The hashes are a few dozen bytes each and are never
expired; a trial whose process died is forgotten when its lease ends. On any Redis failure the
breakers carry on with in-process state, seeded with the last state seen in Redis
(see ``_redis_link``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Generic, TypeVar, cast

import pybreaker
import redis
import redis.asyncio
import redis.asyncio.retry
import redis.exceptions

from .._redis_link import (
    RedisLink,
    RedisScript,
    RedisUnavailableError,
    on_event_loop,
    redis_number,
    shared_link,
)
from ._gate import BreakerState, Grant, MemoryGateStore, Transition

__all__ = ["RedisGateStore"]

T = TypeVar("T")

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

_ACQUIRE = RedisScript.of(
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

_SUCCESS = RedisScript.of(
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

_FAILURE = RedisScript.of(
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

_RELEASE = RedisScript.of(
    _PRELUDE
    + """
settle(ARGV[1], ARGV[2])
return reply('', '', '')
"""
)

_VOUCH = RedisScript.of(
    _PRELUDE
    + """
if ARGV[1] ~= '' then redis.call('HDEL', key, 't:' .. ARGV[1]) end
if state() == 'closed' then redis.call('HSET', key, 'trusted', '1') end
return reply('', '', '')
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
        link: RedisLink | None = None,
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
    def link(self) -> RedisLink:
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
        if on_event_loop():
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
        if on_event_loop():  # never block a loop: pybreaker's own writes are not used here
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
        if on_event_loop() or not self._on_redis:
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
        stamp = redis_number(when.timestamp())

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

    script: RedisScript
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
            redis_number(shared),
            redis_number(reset_timeout),
            redis_number(shared + probe_lease),
            str(int(fail_max)),
            token,
            redis_number(shared + trial_lease),
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
        lambda shared: (redis_number(shared), str(int(fail_max)), _flag(probe), _token(token)),
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
