"""Shared breakers and cache in Redis, against a real redis-server started by this module.

* The breaker behaviour suite runs on both stores (``MemoryGateStore`` and
  ``RedisGateStore``), through the sync and the async permit API.
* Atomicity: concurrent failures are all counted; concurrent half-open callers get one probe.
* Resilience: a hung, stopped or restarted Redis never breaks or stalls a call for long, logs
  one warning, and is used again when it is back.
* The Redis cache: shared, expiring in Redis, JSON only, complete answers only, the whole
  ``ResponseCache`` interface, and chains answering from it during an outage.

Without ``redis-server`` on PATH these tests are skipped, or fail under ``CI=true``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import pathlib
import pickle
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from openai.types.chat import ChatCompletion

from .redis_server import RedisServer, require_redis_package

require_redis_package()

from fallbackchain import AllTiersFailedError, ConfigError  # noqa: E402
from fallbackchain import _redis_link as fc_redis  # noqa: E402
from fallbackchain._backends import gate_store, response_cache  # noqa: E402
from fallbackchain._config import CacheConfig  # noqa: E402
from fallbackchain._redis_link import RedisLink  # noqa: E402
from fallbackchain.breaker import BUSY, BreakerGate, GateStore, MemoryGateStore  # noqa: E402
from fallbackchain.breaker._redis_store import RedisGateStore  # noqa: E402
from fallbackchain.breaker._stores import GateSettings, Step  # noqa: E402
from fallbackchain.cache import Cache, ResponseCache, cache_key  # noqa: E402
from fallbackchain.cache._redis_cache import RedisResponseCache  # noqa: E402
from fallbackchain.testing import Fault  # noqa: E402

from .conftest import FakeClock, make_config, user  # noqa: E402
from .test_breaker import SCRIPTS, _run_script_async, _run_script_sync  # noqa: E402

TTL = 100.0
REDIS_LOGGER = "fallbackchain.redis"


# --------------------------------------------------------------------------------------------
# Fixtures: one redis-server for the module, flushed per test; fresh links per test
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def rs(redis_server: RedisServer) -> Iterator[RedisServer]:
    redis_server.start()  # a test may have stopped it
    redis_server.flushall()
    yield redis_server
    redis_server.start()


@pytest.fixture
def namespace() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


@pytest.fixture(autouse=True)
def _fresh_shared_links(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Chains built from a config share links per URL: give every test its own registry."""
    links: dict[str, RedisLink] = {}
    monkeypatch.setattr(fc_redis, "_links", links)
    yield
    for link in links.values():
        link.close()


@pytest.fixture
def link(rs: RedisServer) -> Iterator[RedisLink]:
    lk = RedisLink(rs.url)
    yield lk
    lk.close()


@pytest.fixture
def raw(rs: RedisServer) -> Iterator[Any]:
    client = rs.client()
    yield client
    client.close()


# --------------------------------------------------------------------------------------------
# The same behavioural suite for both stores, sync and async
# --------------------------------------------------------------------------------------------


class Stores:
    """Makes stores of one kind. ``shared()`` gives another handle on the same breaker."""

    def __init__(self, kind: str, url: str | None, namespace: str, link: RedisLink | None):
        self.kind = kind
        self._url = url
        self._namespace = namespace
        self._link = link
        self._memory: MemoryGateStore | None = None

    def new(self, name: str = "stream") -> GateStore:
        if self.kind == "memory":
            self._memory = MemoryGateStore()
            return self._memory
        assert self._url is not None
        return RedisGateStore(self._url, namespace=self._namespace, name=name, link=self._link)

    def shared(self, name: str = "stream") -> GateStore:
        """Another process's view of the same breaker (memory: the very same object)."""
        if self.kind == "memory":
            assert self._memory is not None
            return self._memory
        assert self._url is not None
        return RedisGateStore(self._url, namespace=self._namespace, name=name, link=self._link)


@pytest.fixture(params=["memory", "redis"])
def stores(request: pytest.FixtureRequest, namespace: str) -> Stores:
    if request.param == "memory":
        return Stores("memory", None, namespace, None)
    rs: RedisServer = request.getfixturevalue("rs")
    lk: RedisLink = request.getfixturevalue("link")
    return Stores("redis", rs.url, namespace, lk)


class Driver:
    """Acquire and settle permits through the sync or the async API."""

    def __init__(self, api: str) -> None:
        self.api = api
        self.loop = asyncio.new_event_loop() if api == "async" else None

    def run(self, coro: Any) -> Any:
        assert self.loop is not None
        return self.loop.run_until_complete(coro)

    def acquire(self, g: BreakerGate) -> Any:
        return g.acquire() if self.loop is None else self.run(g.aacquire())

    def success(self, p: Any) -> None:
        p.success() if self.loop is None else self.run(p.asuccess())

    def failure(self, p: Any) -> None:
        p.failure() if self.loop is None else self.run(p.afailure())

    def release(self, p: Any) -> None:
        p.release() if self.loop is None else self.run(p.arelease())

    def first_content(self, p: Any) -> None:
        p.first_content() if self.loop is None else self.run(p.afirst_content())

    def fail(self, g: BreakerGate, times: int) -> None:
        for _ in range(times):
            self.failure(self.acquire(g))

    def close(self, links: list[RedisLink]) -> None:
        if self.loop is not None:
            for lk in links:
                self.run(lk.aclose_loop_client())
            self.loop.close()


@pytest.fixture(params=["sync", "async"])
def drive(request: pytest.FixtureRequest, stores: Stores) -> Iterator[Driver]:
    d = Driver(str(request.param))
    yield d
    d.close([stores._link] if stores._link is not None else [])


def step(kind: str, now: float | None = None, token: str | None = None, fail_max: int = 3) -> Step:
    """One store step with the suite's settings (reset_timeout 30 s, leases 60 s)."""
    settings = GateSettings(fail_max=fail_max, reset_timeout=30.0, probe_lease=60.0, limited_lease=60.0)
    return Step(kind, settings, now, token)  # type: ignore[arg-type]


def gate(clock: FakeClock, store: GateStore, fail_max: int = 3, **kw: Any) -> BreakerGate:
    return BreakerGate(
        "stream", fail_max=fail_max, reset_timeout=30.0, clock=clock, store=store, **kw
    )


def test_only_the_memory_store_takes_steps_in_place(stores, clock):
    """The async chain ends a permit in place only when no step waits on Redis."""
    g = gate(clock, stores.new())
    assert g.in_place == (stores.kind == "memory")
    assert g.acquire().in_place == (stores.kind == "memory")


def test_closed_breaker_grants_normal_permits(stores, drive, clock):
    g = gate(clock, stores.new())
    p = drive.acquire(g)
    assert p is not None and not p.probe
    drive.success(p)
    assert g.state == "closed"


def test_opens_at_fail_max_and_refuses_while_open(stores, drive, clock):
    g = gate(clock, stores.new())
    drive.fail(g, 2)
    assert (g.state, g.fail_counter) == ("closed", 2)
    drive.fail(g, 1)
    assert g.state == "open"
    clock.advance(29.9)
    assert drive.acquire(g) is None


def test_a_success_resets_the_consecutive_count(stores, drive, clock):
    g = gate(clock, stores.new())
    drive.fail(g, 2)
    drive.success(drive.acquire(g))
    drive.fail(g, 2)
    assert (g.state, g.fail_counter) == ("closed", 2)


def test_one_probe_after_reset_timeout(stores, drive, clock):
    g = gate(clock, stores.new())
    drive.fail(g, 3)
    clock.advance(30.1)
    probe = drive.acquire(g)
    assert probe is not None and probe.probe
    assert g.state == "half-open"
    assert [drive.acquire(g) for _ in range(5)] == [None] * 5


def test_probe_success_closes(stores, drive, clock):
    g = gate(clock, stores.new())
    drive.fail(g, 3)
    clock.advance(31)
    drive.success(drive.acquire(g))
    assert (g.state, g.fail_counter) == ("closed", 0)
    assert drive.acquire(g) is not None


def test_probe_failure_reopens_for_a_full_timeout(stores, drive, clock):
    g = gate(clock, stores.new())
    drive.fail(g, 3)
    clock.advance(31)
    drive.failure(drive.acquire(g))
    assert g.state == "open"
    clock.advance(29)
    assert drive.acquire(g) is None
    clock.advance(2)
    assert drive.acquire(g).probe


def test_release_is_neutral(stores, drive, clock):
    g = gate(clock, stores.new())
    drive.fail(g, 2)
    for _ in range(3):
        drive.release(drive.acquire(g))
    assert (g.state, g.fail_counter) == ("closed", 2)
    drive.fail(g, 1)
    clock.advance(31)
    drive.release(drive.acquire(g))  # a released probe frees the slot
    assert g.state == "half-open"
    assert drive.acquire(g).probe


def test_a_probe_whose_holder_vanished_expires_after_its_lease(stores, drive, clock):
    g = gate(clock, stores.new(), probe_lease=10.0)
    drive.fail(g, 3)
    clock.advance(31)
    assert drive.acquire(g) is not None  # never settled
    clock.advance(9)
    assert drive.acquire(g) is None
    clock.advance(2)
    assert drive.acquire(g).probe


def test_a_stale_probe_failing_late_does_not_reopen_a_closed_breaker(stores, drive, clock):
    g = gate(clock, stores.new(), probe_lease=10.0)
    drive.fail(g, 3)
    clock.advance(31)
    stale = drive.acquire(g)  # probe A: its lease runs out while it is still in flight
    clock.advance(11)
    current = drive.acquire(g)  # probe B takes the slot
    assert stale.probe and current.probe
    drive.success(current)  # B closes the breaker
    drive.failure(stale)  # A's late failure counts as one normal failure, nothing more
    assert g.state == "closed"
    assert g.fail_counter == 1


def test_a_stale_probe_releasing_late_does_not_free_the_current_probes_slot(stores, drive, clock):
    g = gate(clock, stores.new(), probe_lease=10.0)
    drive.fail(g, 3)
    clock.advance(31)
    stale = drive.acquire(g)
    clock.advance(11)
    current = drive.acquire(g)
    drive.release(stale)
    assert drive.acquire(g) is None  # the current probe still holds the slot
    drive.success(current)
    assert g.state == "closed"


def test_straggler_success_does_not_close_an_open_breaker(stores, drive, clock):
    g = gate(clock, stores.new())
    drive.success(drive.acquire(g))  # proven: any number of attempts may be in flight
    early = drive.acquire(g)
    drive.fail(g, 3)
    drive.success(early)
    assert g.state == "open"


def test_transitions_are_reported_once(stores, drive, clock):
    seen: list[tuple[str, str, str]] = []
    g = gate(clock, stores.new(), on_state_change=lambda *a: seen.append(a))
    drive.success(drive.acquire(g))  # proven: no transition, and no limit on attempts
    straggler = drive.acquire(g)
    drive.fail(g, 3)
    drive.failure(straggler)  # counted, but the breaker is already open: no second report
    clock.advance(31)
    drive.success(drive.acquire(g))
    assert seen == [
        ("stream", "closed", "open"),
        ("stream", "open", "half-open"),
        ("stream", "half-open", "closed"),
    ]


# -- unproven: a breaker that has not seen the upstream answer limits attempts in flight ------


def test_a_new_breaker_is_unproven_and_admits_fail_max_limited_attempts_at_once(stores, drive, clock):
    g = gate(clock, stores.new())
    limited = [drive.acquire(g) for _ in range(3)]
    assert all(p.limited and not p.probe for p in limited)
    assert drive.acquire(g) is BUSY
    drive.release(limited[0])  # an ended attempt frees its slot
    assert drive.acquire(g).limited


def test_failures_of_an_unproven_breaker_take_slots(stores, drive, clock):
    g = gate(clock, stores.new())
    drive.fail(g, 1)
    held = [drive.acquire(g) for _ in range(2)]
    assert all(p.limited for p in held)
    assert drive.acquire(g) is BUSY  # 1 failure + 2 in flight = fail_max
    assert g.state == "closed"


def test_a_success_proves_the_breaker_and_lifts_the_limit(stores, drive, clock):
    g = gate(clock, stores.new())
    drive.success(drive.acquire(g))
    permits = [drive.acquire(g) for _ in range(10)]
    assert all(p is not BUSY and not p.limited and p.token is None for p in permits)


def test_first_content_proves_the_breaker_while_the_attempt_is_still_running(stores, drive, clock):
    g = gate(clock, stores.new())
    attempts = [drive.acquire(g) for _ in range(3)]
    assert drive.acquire(g) is BUSY
    drive.first_content(attempts[0])  # its first content arrived
    assert all(not drive.acquire(g).limited for _ in range(5))
    drive.success(attempts[0])


def test_one_failure_makes_the_breaker_unproven_again(stores, drive, clock):
    g = gate(clock, stores.new())
    drive.success(drive.acquire(g))
    normal = [drive.acquire(g) for _ in range(4)]
    drive.failure(normal[0])
    assert [drive.acquire(g).limited for _ in range(2)] == [True, True]
    assert drive.acquire(g) is BUSY  # 1 failure + 2 slots (the 3 older ones never counted)


def test_a_limited_attempt_gives_its_slot_back_at_its_first_content(stores, drive, clock):
    g = gate(clock, stores.new(), fail_max=2)
    streaming = drive.acquire(g)
    drive.first_content(streaming)  # healthy: it may stream for minutes yet
    drive.failure(drive.acquire(g))  # one unrelated failure: unproven again
    assert drive.acquire(g).limited  # 1 failure + 0 slots held: one more may try
    assert drive.acquire(g) is BUSY
    drive.failure(streaming)  # an attempt that showed content and then fails still counts
    assert g.state == "open"


def test_a_slot_whose_holder_vanished_is_freed_after_its_lease(stores, drive, clock):
    g = gate(clock, stores.new(), probe_lease=100.0, limited_lease=10.0)
    for _ in range(3):
        assert drive.acquire(g).limited  # never settled: the process died
    clock.advance(9)
    assert drive.acquire(g) is BUSY
    clock.advance(2)
    assert drive.acquire(g).limited


def test_a_probe_closes_only_by_succeeding_and_leaves_the_breaker_proven(stores, drive, clock):
    g = gate(clock, stores.new())
    late = drive.acquire(g)
    drive.fail(g, 2)
    drive.failure(late)  # the third failure while unproven: open
    assert g.state == "open"
    clock.advance(31)
    probe = drive.acquire(g)
    assert probe.probe and not probe.limited
    drive.first_content(probe)  # content from a probe is not enough to close the breaker
    assert drive.acquire(g) is None
    drive.success(probe)
    assert g.state == "closed"
    assert not any(drive.acquire(g).limited for _ in range(5))


def test_every_handle_sees_the_same_slots(stores, drive, clock):
    a = gate(clock, stores.new())
    b = gate(clock, stores.shared())
    held = [drive.acquire(a), drive.acquire(b), drive.acquire(a)]
    assert all(p.limited for p in held)
    assert drive.acquire(b) is BUSY  # three processes' attempts fill one shared breaker
    drive.first_content(held[1])
    assert not drive.acquire(a).limited


def test_two_handles_on_one_namespace_share_one_breaker(stores, drive, clock):
    a = gate(clock, stores.new())
    b = gate(clock, stores.shared())
    drive.fail(a, 2)
    drive.fail(b, 1)
    assert a.state == b.state == "open"
    clock.advance(31)
    assert drive.acquire(a).probe
    assert drive.acquire(b) is None  # one probe for everyone sharing the breaker


@pytest.mark.parametrize("skew", [-3600.0, 3600.0])
def test_a_host_with_a_skewed_clock_cannot_hold_a_shared_breaker_open(rs, link, drive, skew):
    """Two hosts an hour apart share one breaker: each sees it half-open after reset_timeout.

    Hosts' clocks never agree (monotonic clocks start anywhere); the shared stamps are on the
    Redis server's clock, so the gap does not matter.
    """
    namespace = f"skew-{uuid.uuid4().hex[:8]}"
    here, there = FakeClock(), FakeClock(start=1_000_000.0 + skew)
    a = gate(here, RedisGateStore(rs.url, namespace=namespace, name="stream", link=link))
    b = gate(there, RedisGateStore(rs.url, namespace=namespace, name="stream", link=link))
    drive.fail(a, 3)
    assert a.state == b.state == "open"
    assert drive.acquire(b) is None
    here.advance(31)
    there.advance(31)
    probe = drive.acquire(b)
    assert probe is not None and probe.probe  # not held open by a's clock being an hour off
    drive.success(probe)
    assert a.state == b.state == "closed"


def test_the_store_is_the_one_source_of_state_and_counts(stores, clock):
    g = gate(clock, stores.new())
    g.acquire().failure()
    g.acquire().failure()
    assert (g.state, g.fail_counter) == ("closed", 2)
    g.acquire().failure()
    other = gate(clock, stores.shared())  # another handle (process) on the same breaker
    assert (g.state, other.state, other.fail_counter) == ("open", "open", 3)
    if stores.kind == "memory":  # pybreaker's breaker is the state (more in test_breaker)
        assert (g.store.breaker.current_state, g.store.breaker.fail_counter) == ("open", 3)


def test_stores_implement_the_protocol(stores):
    assert isinstance(stores.new(), GateStore)


# --------------------------------------------------------------------------------------------
# Redis specifics: layout, atomicity, scripts
# --------------------------------------------------------------------------------------------


def test_state_lives_in_one_hash_without_expiry(rs, link, raw, namespace, clock):
    g = gate(clock, RedisGateStore(rs.url, namespace=namespace, name="completion", link=link))
    for _ in range(3):
        g.acquire().failure()
    key = f"{namespace}:breaker:completion"
    fields = {k.decode(): v.decode() for k, v in raw.hgetall(key).items()}
    assert fields["state"] == "open"
    assert fields["failures"] == "3"
    server_now = raw.time()  # stamps are on the Redis server's clock
    assert abs(float(fields["opened_at"]) - (server_now[0] + server_now[1] / 1e6)) < 5.0
    assert raw.ttl(key) == -1  # tiny, never expired (documented)
    clock.advance(31)
    g.acquire()
    assert float(raw.hget(key, "probe_until")) > clock()


@pytest.mark.slow
def test_concurrent_failures_are_never_lost(rs, link, namespace, clock):
    """8 threads x 200 failures, each thread with its own store (as separate processes would)."""
    barrier = threading.Barrier(8, timeout=10)
    transitions: list[Any] = []

    def worker() -> None:
        store = RedisGateStore(rs.url, namespace=namespace, name="stream", link=link)
        barrier.wait()
        for _ in range(200):
            changed = store.apply(step("failure", clock(), fail_max=1000)).changed
            if changed:
                transitions.append(changed)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    store = RedisGateStore(rs.url, namespace=namespace, name="stream", link=link)
    assert store.failures() == 1600
    assert store.current_state() == "open"
    assert transitions == [("closed", "open")]  # exactly one process saw it open


def race_for_permits(rs: RedisServer, namespace: str, clock: FakeClock) -> list[Any]:
    """16 threads, each with its own store (as separate processes would), acquire at once."""
    link = RedisLink(rs.url, timeout=2.0)  # atomicity while Redis answers, not outages
    barrier = threading.Barrier(16, timeout=10)
    grants: list[Any] = []

    def worker() -> None:
        store = RedisGateStore(rs.url, namespace=namespace, name="stream", link=link)
        barrier.wait()
        grants.append(
            store.apply(step("ask", clock(), uuid.uuid4().hex))
        )

    threads = [threading.Thread(target=worker) for _ in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    link.close()
    return grants


def test_concurrent_half_open_callers_get_exactly_one_probe(rs, link, raw, namespace, clock):
    seed = RedisGateStore(rs.url, namespace=namespace, name="stream", link=link)
    for _ in range(3):
        seed.apply(step("failure", clock()))
    # 31 s pass on the server's clock, which every process's stamps are on; the racing stores
    # below are new processes, whose own clocks started anywhere
    key = f"{namespace}:breaker:stream"
    raw.hset(key, "opened_at", repr(float(raw.hget(key, "opened_at")) - 31.0))
    grants = race_for_permits(rs, namespace, clock)
    assert [g for g, _ in grants].count("probe") == 1
    assert [c for _, c in grants if c] == [("open", "half-open")]


def test_concurrent_callers_of_an_unproven_breaker_get_exactly_fail_max_slots(rs, namespace, clock):
    grants = race_for_permits(rs, namespace, clock)
    assert sorted(g for g, _ in grants) == ["busy"] * 13 + ["limited"] * 3


def test_the_local_store_carries_on_from_the_proof_seen_in_redis(rs, namespace, clock):
    lk = RedisLink(rs.url, backoff=60.0)
    proven = RedisGateStore(rs.url, namespace=namespace, name="a", link=lk)
    unproven = RedisGateStore(rs.url, namespace=namespace, name="b", link=lk)
    try:
        proven.apply(step("success"))
        unproven.apply(step("failure", clock()))
        assert (proven.current_state(), unproven.failures()) == ("closed", 1)  # plain reads
        rs.pause()
        assert proven.apply(step("ask", clock(), "x")) == ("normal", None)
        grants = [
            unproven.apply(step("ask", clock(), f"t{i}"))[0]
            for i in range(3)
        ]
        assert not proven.using_redis and not unproven.using_redis
        assert grants == ["limited", "limited", "busy"]  # 1 failure + 2 slots, counted locally
        assert (unproven.current_state(), unproven.failures()) == ("closed", 1)  # seeded at once
    finally:
        rs.resume()
        lk.close()


def test_concurrent_async_callers_get_exactly_one_probe(rs, namespace, clock):
    # Atomicity while Redis answers: a generous timeout, so that 20 concurrent scripts on a
    # loaded 2-core machine are not mistaken for an outage (the degraded mode, where each
    # process decides locally, has its own tests).
    link = RedisLink(rs.url, timeout=2.0)
    stores = [RedisGateStore(rs.url, namespace=namespace, name="s", link=link) for _ in range(20)]
    for _ in range(3):
        stores[0].apply(step("failure", clock()))
    clock.advance(31)

    async def go() -> list[Any]:
        try:
            return await asyncio.gather(
                *(
                    s.aapply(step("ask", clock(), f"t{i}"))
                    for i, s in enumerate(stores)
                )
            )
        finally:
            await link.aclose_loop_client()

    grants = asyncio.run(go())
    link.close()
    assert [g for g, _ in grants].count("probe") == 1


def test_scripts_survive_a_script_flush(rs, link, raw, namespace, clock):
    g = gate(clock, RedisGateStore(rs.url, namespace=namespace, name="stream", link=link))
    g.acquire().failure()
    raw.script_flush()  # what a restarted or failed-over Redis looks like to EVALSHA
    g.acquire().failure()
    assert g.fail_counter == 2
    assert link.available


def test_garbage_state_reads_as_closed(rs, link, raw, namespace, clock):
    raw.hset(f"{namespace}:breaker:stream", mapping={"state": "weird", "failures": "x"})
    store = RedisGateStore(rs.url, namespace=namespace, name="stream", link=link)
    assert store.current_state() == "closed"
    assert store.apply(step("ask", clock(), "t")) == (
        "limited",
        None,
    )


def test_namespaces_and_tiers_are_independent(rs, link, namespace, clock):
    a = gate(clock, RedisGateStore(rs.url, namespace=namespace, name="stream", link=link))
    b = gate(clock, RedisGateStore(rs.url, namespace=namespace, name="completion", link=link))
    c = gate(clock, RedisGateStore(rs.url, namespace=namespace + "x", name="stream", link=link))
    for _ in range(3):
        a.acquire().failure()
    assert (a.state, b.state, c.state) == ("open", "closed", "closed")


def test_config_selects_the_redis_store_and_cache(rs, tmp_path, namespace):
    config = make_config(
        tmp_path,
        breaker__storage="redis",
        breaker__redis_url=rs.url,
        breaker__namespace=namespace,
        cache__backend="redis",
        cache__redis_url=rs.url,
    )
    store = gate_store(config, "stream")
    assert isinstance(store, RedisGateStore)
    assert store.key == f"{namespace}:breaker:stream"
    cache = response_cache(config, time.time)
    assert isinstance(cache, RedisResponseCache)
    assert isinstance(cache, Cache)
    assert cache.prefix == f"{namespace}:cache:"
    cache.close()
    default = make_config(tmp_path)
    assert isinstance(gate_store(default, "stream"), MemoryGateStore)
    disk = response_cache(default, time.time)
    assert type(disk) is ResponseCache
    assert isinstance(disk, Cache)
    disk.close()


def test_a_missing_redis_package_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "redis", None)  # "import redis" now raises ImportError
    config = make_config(tmp_path, breaker__storage="redis", cache__backend="redis")
    with pytest.raises(ConfigError, match=r"breaker\.storage.*pip install redis"):
        gate_store(config, "stream")
    with pytest.raises(ConfigError, match=r"cache\.backend.*pip install redis"):
        response_cache(config, time.time)


# --------------------------------------------------------------------------------------------
# Resilience: Redis hung, stopped, restarted
# --------------------------------------------------------------------------------------------


def redis_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        r
        for r in caplog.records
        if r.levelno >= logging.WARNING and r.name.startswith("fallbackchain")
    ]


@pytest.mark.slow
def test_store_carries_on_locally_while_redis_is_down_and_returns_to_it(
    rs, namespace, clock, caplog
):
    caplog.set_level(logging.INFO, logger="fallbackchain")
    lk = RedisLink(rs.url, backoff=0.3)
    try:
        store = RedisGateStore(rs.url, namespace=namespace, name="stream", link=lk)
        g = gate(clock, store)
        for _ in range(3):
            g.acquire().failure()
        assert g.state == "open"
        rs.stop()
        # local decisions, seeded with what Redis said last: still open, no stampede
        for _ in range(50):
            assert g.acquire() is None
        assert g.state == "open"
        assert not store.using_redis
        clock.advance(31)
        probe = g.acquire()
        assert probe is not None and probe.probe
        assert g.acquire() is None
        probe.success()
        assert g.state == "closed"
        assert len(redis_warnings(caplog)) == 1
        rs.start()
        time.sleep(0.35)  # the back-off
        g.acquire().failure()
        assert store.using_redis
        with rs.client() as r:
            assert r.hget(f"{namespace}:breaker:stream", "failures") == b"1"
        assert any("reconnected" in r.getMessage() for r in caplog.records)
        assert len(redis_warnings(caplog)) == 1
    finally:
        lk.close()


def test_a_hung_redis_stalls_one_call_per_backoff_not_every_call(rs, namespace, clock, caplog):
    lk = RedisLink(rs.url, backoff=0.5)
    store = RedisGateStore(rs.url, namespace=namespace, name="stream", link=lk)
    try:
        store.apply(step("success"))  # connected, and the breaker is proven
        rs.pause()
        durations = []
        for _ in range(40):
            t0 = time.perf_counter()
            grant = store.apply(step("ask", clock(), "t"))
            assert grant == ("normal", None)  # the local store goes on trusting it
            durations.append(time.perf_counter() - t0)
        stalls = [d for d in durations if d > 0.02]
        assert len(stalls) == 1, durations
        assert max(durations) < 0.1 + 0.03, durations
        assert len(redis_warnings(caplog)) == 1
    finally:
        rs.resume()
        lk.close()


def test_async_store_falls_back_too(rs, namespace, clock, caplog):
    lk = RedisLink(rs.url, backoff=60.0)
    store = RedisGateStore(rs.url, namespace=namespace, name="stream", link=lk)

    async def go() -> list[float]:
        await store.aapply(step("failure", clock()))
        rs.pause()
        durations = []
        try:
            for _ in range(20):
                t0 = time.perf_counter()
                await store.aapply(step("failure", clock()))
                durations.append(time.perf_counter() - t0)
        finally:
            rs.resume()
            await lk.aclose_loop_client()
        return durations

    durations = asyncio.run(go())
    assert max(durations) < 0.13, durations
    assert sum(d > 0.02 for d in durations) == 1
    assert store.current_state() == "open"  # 1 in Redis, then 2 more counted locally
    assert len(redis_warnings(caplog)) == 1
    lk.close()


def test_redis_errors_never_reach_callers(namespace, clock):
    lk = RedisLink("redis://127.0.0.1:9/0")  # nothing listens there
    store = RedisGateStore(lk.url, namespace=namespace, name="stream", link=lk)
    g = gate(clock, store)
    for _ in range(3):
        g.acquire().failure()
    assert g.state == "open"
    assert not store.using_redis
    clock.advance(31)
    assert g.acquire().probe  # the local store stamped the opening on the gate's clock
    cache = RedisResponseCache(CacheConfig(memory_items=0), namespace=namespace, link=lk)
    assert cache.get("fc1-" + "0" * 64) is None
    assert cache.put("fc1-" + "0" * 64, completion()) is False
    assert cache.clear() == 0
    assert list(cache.iter_keys()) == []
    assert cache.stats().entries == 0
    lk.close()


# --------------------------------------------------------------------------------------------
# The Redis cache
# --------------------------------------------------------------------------------------------


def completion(text: str = "Paris.", finish_reason: str | None = "stop") -> ChatCompletion:
    c = ChatCompletion.model_validate(
        {
            "id": "c1",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
            ],
        }
    )
    c.choices[0].finish_reason = finish_reason  # type: ignore[assignment]
    return c


KEY = cache_key("gpt-4o-mini", user("capital of France?"), {})


def make_cache(rs, namespace, clock=None, *, link=None, **overrides) -> RedisResponseCache:
    config = dataclasses.replace(
        CacheConfig(ttl=TTL, memory_items=16, backend="redis", redis_url=rs.url), **overrides
    )
    return RedisResponseCache(config, namespace=namespace, clock=clock or FakeClock(), link=link)


def test_cache_is_shared_between_instances(rs, namespace, link):
    a = make_cache(rs, namespace, link=link)
    b = make_cache(rs, namespace, link=link)
    assert a.put(KEY, completion("Paris."))
    hit = b.get(KEY)
    assert hit is not None and hit.completion.choices[0].message.content == "Paris."
    assert b.stats().hits == 1


def test_cache_serves_an_answer_read_leniently_to_another_instance(rs, namespace, link):
    sparse = ChatCompletion.construct(  # no object, no created: as the chain reads it live
        id="c1",
        model="gpt-4o-mini",
        choices=[{"index": 0, "finish_reason": "stop", "message": {"content": "Hi"}}],
    )
    a = make_cache(rs, namespace, link=link)
    b = make_cache(rs, namespace, link=link)
    assert a.put(KEY, sparse)
    hit = b.get(KEY)
    assert hit is not None and hit.completion.choices[0].message.content == "Hi"
    assert (b.stats().hits, b.stats().errors) == (1, 0)


@pytest.mark.slow
def test_cache_expires_in_redis_after_ttl(rs, namespace, link, raw):
    cache = make_cache(rs, namespace, link=link)
    cache.put(KEY, completion())
    ttl = raw.ttl(f"{namespace}:cache:{KEY}")
    assert 0 < ttl <= TTL
    short = make_cache(rs, namespace, link=link, ttl=0.2, memory_items=0)
    short.put(KEY, completion())
    time.sleep(0.3)
    assert raw.get(f"{namespace}:cache:{KEY}") is None
    assert short.get(KEY) is None


def test_cache_never_serves_an_answer_ttl_old_by_its_clock(rs, namespace, link):
    clock = FakeClock()
    cache = make_cache(rs, namespace, clock, link=link)
    cache.put(KEY, completion())
    clock.advance(TTL - 1)
    assert cache.get(KEY).age == pytest.approx(TTL - 1)
    clock.advance(1)
    assert cache.get(KEY) is None
    other = make_cache(rs, namespace, clock, link=link, memory_items=0)
    assert other.get(KEY) is None  # the Redis copy is dated too


def test_cache_stores_json_rows_only(rs, namespace, link, raw):
    cache = make_cache(rs, namespace, link=link)
    cache.put(KEY, completion("Paris."))
    row = json.loads(raw.get(f"{namespace}:cache:{KEY}").decode("utf-8"))
    assert set(row) == {"format", "stored_at", "completion"}
    assert row["format"] == 1
    assert row["completion"]["choices"][0]["message"]["content"] == "Paris."


class _TouchOnUnpickle:
    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> Any:
        return (pathlib.Path.touch, (self.marker,))


def test_a_planted_pickle_is_refused_without_unpickling(rs, namespace, link, raw, tmp_path, caplog):
    marker = tmp_path / "pwned"
    raw.set(f"{namespace}:cache:{KEY}", pickle.dumps(_TouchOnUnpickle(marker)))
    cache = make_cache(rs, namespace, link=link)
    assert cache.get(KEY) is None
    assert not marker.exists()
    assert "UnsafeCacheRowError" in caplog.text
    raw.set(f"{namespace}:cache:{KEY}", b"not json at all")
    assert cache.get(KEY) is None
    assert "CacheCorruptError" in caplog.text
    assert cache.stats().errors == 2


def test_partial_answers_are_never_stored(rs, namespace, link, raw):
    cache = make_cache(rs, namespace, link=link)
    assert cache.put(KEY, completion(finish_reason=None)) is False
    assert cache.put(KEY, completion(finish_reason="content_filter")) is False
    assert raw.exists(f"{namespace}:cache:{KEY}") == 0
    assert cache.get(KEY) is None


def test_cache_admin_operations(rs, namespace, link, raw, tmp_path):
    clock = FakeClock()
    cache = make_cache(rs, namespace, clock, link=link)
    keys = [cache_key("m", user(f"q{i}"), {}) for i in range(5)]
    for i, k in enumerate(keys):
        clock.advance(1)
        assert cache.put(k, completion(f"a{i}"))
    raw.set(f"{namespace}x:cache:{keys[0]}", b"another namespace")
    assert sorted(cache.iter_keys()) == sorted(keys)
    stats = cache.stats(scan=True)
    assert (stats.entries, stats.stores, stats.expired) == (5, 5, 0)
    assert stats.bytes > 0
    assert (stats.oldest, stats.newest) == (clock() - 4, clock())
    assert namespace in stats.directory and "redis://" in stats.directory
    # export, clear, import
    target = tmp_path / "export.jsonl"
    assert cache.export_jsonl(target) == 5
    assert cache.clear() == 5
    assert raw.exists(f"{namespace}x:cache:{keys[0]}") == 1  # other namespaces untouched
    assert list(cache.iter_keys()) == []
    report = cache.import_jsonl(target)
    assert (report.imported, report.invalid) == (5, 0)
    again = cache.import_jsonl(io.StringIO(target.read_text()))
    assert (again.imported, again.kept) == (0, 5)
    assert sorted(r.key for r in cache.export_rows()) == sorted(keys)
    # prune: entries TTL old by the cache's clock go
    clock.advance(TTL - 2.5)
    assert cache.prune() == 2
    assert len(list(cache.iter_keys())) == 3


def test_import_keeps_the_newer_answer(rs, namespace, link):
    clock = FakeClock()
    cache = make_cache(rs, namespace, clock, link=link)
    cache.put(KEY, completion("new"))
    assert cache.import_row(KEY, completion("old"), clock() - 10) == "kept"
    assert cache.import_row(KEY, completion("same time"), clock() + 5) == "kept"  # future = now
    clock.advance(5)
    assert cache.import_row(KEY, completion("newer"), clock()) == "imported"
    assert cache.get(KEY).completion.choices[0].message.content == "newer"
    assert cache.import_row(KEY, completion("ancient"), clock() - TTL) == "expired"
    with pytest.raises(ValueError):
        cache.import_row("not-a-key", completion(), clock())


def test_redis_cache_mirrors_the_whole_response_cache_interface():
    """Every public member of ResponseCache is implemented here, or shared through Cache."""
    # written in the Cache protocol on export_rows / import_row / close, for both caches
    shared = {"export_jsonl", "import_jsonl", "__enter__", "__exit__"}
    assert all(getattr(RedisResponseCache, n) is getattr(Cache, n) for n in shared)
    public = {n for n in dir(ResponseCache) if not n.startswith("_")} | {"__enter__", "__exit__"}
    missing = {n for n in public if n not in vars(RedisResponseCache)} - shared
    assert not missing, f"RedisResponseCache must implement {sorted(missing)}"
    protocol = {n for n in dir(Cache) if not n.startswith("_")} | {"__enter__", "__exit__"}
    assert protocol <= public  # the protocol asks nothing the disk cache lacks
    assert not issubclass(RedisResponseCache, ResponseCache)  # composition, not inheritance


def test_cache_memory_layer_serves_while_redis_is_down(rs, namespace, caplog):
    lk = RedisLink(rs.url, backoff=30.0)
    cache = make_cache(rs, namespace, link=lk)
    try:
        cache.put(KEY, completion("Paris."))
        rs.stop()
        for _ in range(20):
            assert cache.get(KEY).completion.choices[0].message.content == "Paris."
            assert cache.put(cache_key("m", user("x"), {}), completion()) is False
        assert len(redis_warnings(caplog)) == 1
        assert not cache.disk_available
    finally:
        lk.close()


def test_async_cache_uses_redis_asyncio_only(rs, namespace, link):
    writer = make_cache(rs, namespace, link=link)
    reader = make_cache(rs, namespace, link=link, memory_items=0)

    async def go() -> Any:
        try:
            assert await writer.aput(KEY, completion("Paris."))
            return await reader.aget(KEY)
        finally:
            await link.aclose_loop_client()

    before = link.sync_calls
    hit = asyncio.run(go())
    assert hit.completion.choices[0].message.content == "Paris."
    assert link.sync_calls == before
    assert link.async_calls >= 2


# --------------------------------------------------------------------------------------------
# Chains on Redis (sync and async, through the config)
# --------------------------------------------------------------------------------------------


def redis_overrides(url: str, namespace: str, **more: Any) -> dict[str, Any]:
    return {
        "breaker__storage": "redis",
        "breaker__redis_url": url,
        "breaker__namespace": namespace,
        "cache__backend": "redis",
        "cache__redis_url": url,
        **more,
    }


def test_chain_answers_from_the_shared_cache_during_an_outage(
    harness_factory, server, rs, namespace
):
    warm = harness_factory(**redis_overrides(rs.url, namespace))
    _, first = warm.ask("hello")
    assert first.source == "stream"
    # another process (a fresh chain, empty memory layer) during a full outage
    other = harness_factory(**redis_overrides(rs.url, namespace, cache__memory_items=0))
    server.default = Fault.status(503)
    _, response = other.ask("hello")
    assert response.source == "cache"
    assert response.text == first.text


def test_chains_share_one_breaker_through_redis(harness_factory, server, rs, namespace):
    a = harness_factory(**redis_overrides(rs.url, namespace, retry__max_attempts=1))
    b = harness_factory(**redis_overrides(rs.url, namespace, retry__max_attempts=1))
    server.default = Fault.status(503)
    fail_max = a.chain.config.breaker.fail_max
    # one attempt per request on the route: the stream tier's breaker opens after fail_max
    # requests, then the completion tier's after fail_max more
    for i in range(2 * fail_max):
        chain = a if i % 2 else b
        with pytest.raises(AllTiersFailedError):
            chain.ask(f"q{i}")
    assert (
        a.chain.breaker_states()
        == b.chain.breaker_states()
        == {
            "stream": "open",
            "completion": "open",
        }
    )
    before = server.counts["total"]
    with pytest.raises(AllTiersFailedError):
        b.ask("again")
    assert server.counts["total"] == before  # both open: nothing reaches upstream


def test_async_chain_never_calls_the_sync_client_on_the_loop(server, rs, namespace, tmp_path):
    from .conftest import Harness

    config = make_config(tmp_path, server.base_url, **redis_overrides(rs.url, namespace))
    h = Harness("async", config, server, FakeClock())
    try:
        lk = fc_redis.shared_link(rs.url)
        sync_before = lk.sync_calls
        _, r1 = h.ask("hello")
        server.default = Fault.status(503)
        for _ in range(6):
            h.ask("hello")  # answered from the cache once the tiers fail
        assert r1.source == "stream"
        assert lk.sync_calls_on_loop == 0
        assert lk.sync_calls == sync_before  # every Redis command went through redis.asyncio
        assert lk.async_calls > 10

        async def states() -> Any:
            return h.chain.breaker_states()  # on the loop: last known state, no Redis call

        assert h.run(states) == {"stream": "open", "completion": "open"}
        assert lk.sync_calls_on_loop == 0
    finally:
        h.close()


@pytest.mark.slow  # stops and restarts redis-server
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_chain_survives_redis_hung_stopped_and_restarted(
    mode, server, namespace, tmp_path, caplog, monkeypatch
):
    """One warning, no call stalled more than ~100 ms by Redis, Redis used again when back."""
    from .conftest import Harness

    caplog.set_level(logging.INFO, logger="fallbackchain")
    monkeypatch.setattr(fc_redis, "RECONNECT_BACKOFF", 0.5)
    # Time spent waiting on Redis, per chain call (every command goes through the link).
    in_redis: list[float] = []
    call, acall = RedisLink.call, RedisLink.acall

    def timed_call(self: RedisLink, op: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return call(self, op)
        finally:
            in_redis.append(time.perf_counter() - t0)

    async def timed_acall(self: RedisLink, op: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return await acall(self, op)
        finally:
            in_redis.append(time.perf_counter() - t0)

    monkeypatch.setattr(RedisLink, "call", timed_call)
    monkeypatch.setattr(RedisLink, "acall", timed_acall)
    with RedisServer() as own:
        config = make_config(tmp_path, server.base_url, **redis_overrides(own.url, namespace))
        h = Harness(mode, config, server, FakeClock(), real_time=True)
        try:

            def timed(prompt: str) -> tuple[float, float, Any]:
                in_redis.clear()
                t0 = time.perf_counter()
                _, response = h.ask(prompt)
                return time.perf_counter() - t0, sum(in_redis), response

            normal = [timed("hello") for _ in range(5)]  # warms Redis and the cache
            assert redis_warnings(caplog) == []
            own.pause()  # hung: accepts connections, answers nothing
            hung = [timed("hello") for _ in range(8)]
            own.resume()
            own.stop()  # down: connection refused
            server.default = Fault.status(503)
            down = [timed("hello") for _ in range(8)]
            assert all(r.text for _, _, r in hung + down)  # every call answered
            assert {r.source for _, _, r in down} == {"cache"}
            stalls = [w for _, w, _ in hung + down]
            normal_max = max(d for d, _, _ in normal)
            worst = max(d for d, _, _ in hung + down)
            print(
                f"\n[{mode}] per call: normal max {normal_max * 1000:.1f} ms; with Redis hung "
                f"or down: worst {worst * 1000:.1f} ms, worst wait on Redis "
                f"{max(stalls) * 1000:.1f} ms, calls that waited > 20 ms: "
                f"{sum(w > 0.02 for w in stalls)} of {len(stalls)}"
            )
            assert max(stalls) <= 0.1 + 0.02, stalls  # the client timeout, plus scheduling
            assert sum(w > 0.02 for w in stalls) <= 2, stalls  # once per back-off, not per call
            assert len(redis_warnings(caplog)) == 1, [r.getMessage() for r in caplog.records]
            # restarted on the same port: used again after the back-off
            own.start()
            server.default = Fault.ok()
            time.sleep(0.6)
            h.ask("hello")
            h.ask("again")
            with own.client() as r:
                assert r.exists(f"{namespace}:breaker:stream") == 1
                assert r.exists(f"{namespace}:cache:{h.chain.cache_key(user('again'))}") == 1
            assert any("reconnected" in rec.getMessage() for rec in caplog.records)
            assert len(redis_warnings(caplog)) == 1
        finally:
            h.close()


# --------------------------------------------------------------------------------------------
# One command per step: the sync and async halves make the same decisions as the memory store
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("redis_up", [True, False], ids=["redis-up", "redis-down"])
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_sync_and_async_redis_steps_leave_the_memory_store_trace(
    rs, namespace, link, script, redis_up
):
    if not redis_up:
        rs.stop()  # every step then runs its command's local fallback
    traces = {}
    for kind in ("memory", "sync", "async"):
        clock = FakeClock()
        store = (
            MemoryGateStore()
            if kind == "memory"
            else RedisGateStore(rs.url, namespace=f"{namespace}-{kind}", name="stream", link=link)
        )
        g = BreakerGate("stream", fail_max=3, reset_timeout=30.0, clock=clock, store=store)
        if kind != "async":
            traces[kind] = _run_script_sync(g, clock, SCRIPTS[script])
            continue

        async def go(g=g, clock=clock):
            try:
                return await _run_script_async(g, clock, SCRIPTS[script])
            finally:
                await link.aclose_loop_client()

        traces[kind] = asyncio.run(go())
    assert traces["sync"] == traces["memory"]
    assert traces["async"] == traces["memory"]
    if redis_up:
        assert store.using_redis
