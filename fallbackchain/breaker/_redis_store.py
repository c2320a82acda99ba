"""Breaker state shared through Redis by many processes and hosts (``breaker.storage = "redis"``).

:class:`RedisGateStore` is a ``GateStore`` whose every step (ask, success, failure, release,
first content) is **one Lua script** over one hash per breaker, ``{namespace}:breaker:{tier}``
(fields ``state``, ``failures``, ``opened_at``, ``trusted`` (proven), ``probe_until``/
``probe_token`` and one ``t:<token>`` per limited attempt in flight), so no increment is lost
and no two processes disagree about a transition: across every process sharing a namespace,
an unproven breaker has at most ``fail_max`` attempts failed or in flight, so it opens after
``fail_max`` failures in total, and each half-open period lets one probe through. Stamps are
on the Redis server's clock (the gate's monotonic reading plus an offset measured with
``TIME`` on first use and after each outage), so a host whose own clock is skewed or steps
cannot hold a cluster's breaker open. The hashes are a few dozen bytes each and are never
expired; a slot whose process died is forgotten when its lease ends. On any Redis failure the
breakers carry on with in-process state (a ``MemoryGateStore``), seeded with the last state
seen in Redis (see ``_redis_link``).

Why the steps are not pybreaker's here: pybreaker's transitions are several separate storage
writes (state, count, stamp), and two processes taking them at once would both open the
breaker, lose increments, or both probe; a script is one atomic step. The local store that
carries on during an outage is pybreaker's.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import redis
import redis.asyncio

from .._redis_link import (
    RedisLink,
    RedisScript,
    RedisUnavailableError,
    on_event_loop,
    redis_number,
    shared_link,
)
from ._stores import Admission, BreakerState, Decision, MemoryGateStore, Step, StepKind

__all__ = ["RedisGateStore"]

# Every script takes the same arguments, ARGV = {now, reset_timeout, probe lease end, fail_max,
# token ('' for none), limited lease end, probe ('1' or '0')}, times on the server's clock, and
# returns {admission, from, to, state, failures, opened_at, trusted}, all strings (Redis would
# truncate a Lua number to an integer). Times arrive as repr() strings. A limited attempt's slot
# is the field 't:<token>' holding its lease end; the probe's is the pair probe_until/
# probe_token. The stored names ('trusted', 't:') stay as released: processes of two versions
# may share a namespace during a rolling upgrade. Slots are at most fail_max, so counting them
# scans a small hash.
_PRELUDE = """
local key, now, token = KEYS[1], tonumber(ARGV[1]), ARGV[5]
local function state()
  local s = redis.call('HGET', key, 'state')
  if s == 'open' or s == 'half-open' then return s end
  return 'closed'
end
local function reply(admission, from, to)
  local h = redis.call('HMGET', key, 'failures', 'opened_at', 'trusted')
  return {admission, from, to, state(), h[1] or '0', h[2] or '', h[3] or '0'}
end
local function free_slot()
  if token ~= '' then redis.call('HDEL', key, 't:' .. token) end
  if ARGV[7] ~= '1' then return false end
  if token ~= '' and redis.call('HGET', key, 'probe_token') ~= token then return false end
  redis.call('HDEL', key, 'probe_until', 'probe_token')
  return true
end
"""

_ASK = """
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
  redis.call('HSET', key, 't:' .. token, ARGV[6])
  return reply('limited', '', '')
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
redis.call('HSET', key, 'probe_until', ARGV[3], 'probe_token', token)
return reply('probe', from, to)
"""

_SUCCESS = """
if redis.call('HGET', key, 'failures') ~= '0' then redis.call('HSET', key, 'failures', '0') end
if redis.call('HGET', key, 'trusted') ~= '1' then redis.call('HSET', key, 'trusted', '1') end
if not free_slot() then return reply('', '', '') end
local st = state()
if st == 'closed' then return reply('', '', '') end
redis.call('HSET', key, 'state', 'closed')
return reply('', st, 'closed')
"""

_FAILURE = """
local n = redis.call('HINCRBY', key, 'failures', 1)
redis.call('HDEL', key, 'trusted')
local st = state()
if not free_slot() and not (st == 'closed' and n >= tonumber(ARGV[4])) then
  return reply('', '', '')
end
if st == 'open' then return reply('', '', '') end
redis.call('HSET', key, 'state', 'open', 'opened_at', ARGV[1])
return reply('', st, 'open')
"""

_RELEASE = """
free_slot()
return reply('', '', '')
"""

_FIRST_CONTENT = """
if token ~= '' then redis.call('HDEL', key, 't:' .. token) end
if state() == 'closed' then redis.call('HSET', key, 'trusted', '1') end
return reply('', '', '')
"""

_SCRIPTS: Final[dict[StepKind, RedisScript]] = {
    "ask": RedisScript.of(_PRELUDE + _ASK),
    "success": RedisScript.of(_PRELUDE + _SUCCESS),
    "failure": RedisScript.of(_PRELUDE + _FAILURE),
    "release": RedisScript.of(_PRELUDE + _RELEASE),
    "first_content": RedisScript.of(_PRELUDE + _FIRST_CONTENT),
}
_FIELDS: Final = ("state", "failures", "opened_at", "trusted")


def _text(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _state_of(raw: object) -> BreakerState:
    """A stored state; anything unexpected (a hand-edited hash) reads as closed."""
    text = "" if raw is None else _text(raw)
    return text if text in ("open", "half-open") else "closed"  # type: ignore[return-value]


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
    """The breaker as Redis last showed it (``opened_at`` on the server's clock)."""

    state: BreakerState = "closed"
    failures: int = 0
    opened_at: float | None = None
    proven: bool = False

    @classmethod
    def of(cls, fields: Sequence[object]) -> _Snapshot:
        """From the hash's ``state``, ``failures``, ``opened_at`` and ``trusted``."""
        state, failures, opened_at, trusted = fields
        proven = trusted is not None and _text(trusted) == "1"
        return cls(_state_of(state), _int_or_zero(failures), _float_or_none(opened_at), proven)


_ADMISSIONS: Final[dict[str, Admission]] = {
    "normal": "normal",
    "limited": "limited",
    "probe": "probe",
    "busy": "busy",
}


def _parse_reply(raw: Any) -> tuple[Decision, _Snapshot]:
    if not isinstance(raw, list | tuple) or len(raw) != 7:
        raise RedisUnavailableError("unexpected reply from a breaker script")
    admission, from_s, to_s = (_text(v) for v in raw[:3])
    changed = (_state_of(from_s), _state_of(to_s)) if from_s and to_s else None
    return Decision(_ADMISSIONS.get(admission), changed), _Snapshot.of(raw[3:])


def _skips_redis(step: Step) -> bool:
    """A normal permit's release: it holds no slot, so there is nothing to free."""
    return step.kind == "release" and not step.probe and step.token is None


# --------------------------------------------------------------------------------------------
# Breaker state
# --------------------------------------------------------------------------------------------


class RedisGateStore:
    """A breaker's state in one Redis hash, shared by every process using ``namespace``.

    A ``GateStore``: one Lua script per step, on the sync client (:meth:`apply`) or on this
    event loop's ``redis.asyncio`` client (:meth:`aapply`). While Redis is unavailable every
    step runs on an embedded ``MemoryGateStore``, seeded with the last state seen in Redis.
    """

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        name: str,
        link: RedisLink | None = None,
    ) -> None:
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

    def current_state(self) -> BreakerState:
        return self._read().state

    def failures(self) -> int:
        return self._read().failures

    def apply(self, step: Step) -> Decision:
        """``step`` as one script on Redis; on the local store while Redis is unavailable."""
        if _skips_redis(step):
            return Decision(None)
        try:
            return self._decided(self._link.call(lambda r: self._run(r, step)))
        except RedisUnavailableError:
            return self._fallback().apply(step)

    async def aapply(self, step: Step) -> Decision:
        """:meth:`apply` on this event loop's ``redis.asyncio`` client."""
        if _skips_redis(step):
            return Decision(None)
        try:
            return self._decided(await self._link.acall(lambda r: self._arun(r, step)))
        except RedisUnavailableError:
            return self._fallback().apply(step)

    # -- one step on a client -----------------------------------------------------------------
    # Stamps in the hash are on the Redis server's clock, so hosts whose own clocks disagree
    # (or jump) still agree on when a breaker opened: the gate's monotonic reading plus this
    # store's offset to the server clock, measured with TIME on first use and again after each
    # Redis outage. Not re-measured in between: a monotonic clock drifts by parts per million,
    # and a new offset could move this store's stamps backwards.

    def _run(self, client: redis.Redis, step: Step) -> Any:
        if step.now is not None and self._offset is None:
            self._offset = _offset(step.now, client.time())
        return _SCRIPTS[step.kind].run(client, (self.key,), self._args(step))

    async def _arun(self, client: redis.asyncio.Redis, step: Step) -> Any:
        if step.now is not None and self._offset is None:
            self._offset = _offset(step.now, await client.time())
        return await _SCRIPTS[step.kind].arun(client, (self.key,), self._args(step))

    def _args(self, step: Step) -> tuple[str, ...]:
        settings = step.settings
        now = 0.0 if step.now is None else step.now + (self._offset or 0.0)
        return (
            redis_number(now),
            redis_number(settings.reset_timeout),
            redis_number(now + settings.probe_lease),
            str(int(settings.fail_max)),
            step.token or "",
            redis_number(now + settings.limited_lease),
            "1" if step.probe else "0",
        )

    def _decided(self, reply: Any) -> Decision:
        """Redis decided the step: remember what its reply showed."""
        decision, self._snapshot = _parse_reply(reply)
        self._on_redis = True
        return decision

    # -- reads, and the local store -------------------------------------------------------------

    def _read(self) -> _Snapshot:
        """The hash now (sync threads), the last reply (event-loop threads), local if down."""
        if on_event_loop():  # never block a loop: the last state seen is recent enough
            return self._snapshot if self._on_redis else self._local_snapshot()
        try:
            raw = self._link.call(lambda r: r.hmget(self.key, _FIELDS))
        except RedisUnavailableError:
            self._fallback()
            return self._local_snapshot()
        self._snapshot = _Snapshot.of(list(raw))
        self._on_redis = True
        return self._snapshot

    def _local_snapshot(self) -> _Snapshot:
        return _Snapshot(self._local.current_state(), self._local.failures())

    def _fallback(self) -> MemoryGateStore:
        """The local store, seeded from the last Redis snapshot when we just switched to it."""
        with self._mode_lock:
            if self._on_redis:
                self._on_redis = False
                seen, offset = self._snapshot, self._offset or 0.0
                # The server's stamp back on the gate's clock, which the local store reads.
                opened_at = None if seen.opened_at is None else seen.opened_at - offset
                self._local.restore(seen.state, seen.failures, opened_at, proven=seen.proven)
                self._offset = None  # the server may come back with another clock
        return self._local


def _offset(now: float, server_time: Any) -> float:
    """The server's clock minus the gate's, from a ``TIME`` reply read at ``now``."""
    seconds, micros = server_time
    return int(seconds) + int(micros) / 1e6 - now
