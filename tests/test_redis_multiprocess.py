"""Many processes, one Redis: the breaker and the cache are shared cluster-wide.

Worker processes are started with ``multiprocessing`` (forkserver, else spawn), each with its own chain or
store and its own Redis connections, against a redis-server and a FaultServer started here.

Run with ``-s`` to see the outage numbers (they are also in the assertion messages).
"""

from __future__ import annotations

import multiprocessing
import queue
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fallbackchain import ChainConfig
from fallbackchain.testing import Fault, FaultServer

from .conftest import make_config
from .redis_server import RedisServer, require_redis_package

require_redis_package()

pytestmark = pytest.mark.slow  # worker processes

WORKERS = 8
REQUESTS = 40  # per worker
SPACING = 0.05  # seconds between a worker's requests
RESET_TIMEOUT = 0.5
TIERS = ("stream", "completion")


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as srv:
        yield srv


@pytest.fixture
def rs(redis_server: RedisServer) -> RedisServer:
    redis_server.flushall()
    return redis_server


def mp_context() -> Any:
    """Fresh processes, cheaply: forked from a clean forkserver that imported the chain once.

    Each worker is a new process (no threads, sockets or Redis connections inherited from
    the test process); only the imports are shared. Falls back to spawn where there is no
    forkserver.
    """
    try:
        ctx = multiprocessing.get_context("forkserver")
    except ValueError:  # pragma: no cover - no forkserver on this platform
        return multiprocessing.get_context("spawn")
    ctx.set_forkserver_preload(["tests.test_redis_multiprocess"])
    return ctx


def _collect(results: Any, procs: list[Any], timeout: float) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < len(procs):
            out.append(results.get(timeout=max(0.1, deadline - time.monotonic())))
    except queue.Empty:
        pytest.fail(f"only {len(out)} of {len(procs)} workers reported")
    finally:
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
    errors = [r["error"] for r in out if r.get("error")]
    assert not errors, errors
    return out


# --------------------------------------------------------------------------------------------
# Workers (module-level: spawned processes import them)
# --------------------------------------------------------------------------------------------


def outage_worker(
    config: ChainConfig, base_url: str, barrier: Any, results: Any, requests: int, spacing: float
) -> None:
    """Run one sync chain through a full outage; report the probes it sent, per tier."""
    try:
        import openai

        from fallbackchain import AllTiersFailedError, AttemptStarted, FallbackChain

        probes = {"stream": 0, "completion": 0}

        class ProbeCounter:
            def on_attempt_start(self, event: AttemptStarted) -> None:
                if event.probe:
                    probes[event.tier] += 1

        client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
        chain = FallbackChain(config, client=client, listeners=[ProbeCounter()])
        answered = 0
        barrier.wait()
        for i in range(requests):
            try:
                chain.complete([{"role": "user", "content": f"q{i}"}])
                answered += 1
            except AllTiersFailedError:
                pass
            time.sleep(spacing)
        chain.close()
        client.close()
        results.put({"probes": probes, "answered": answered})
    except BaseException as exc:
        results.put({"error": repr(exc)})


def shared_state_worker(
    url: str, namespace: str, index: int, barrier: Any, results: Any, failures: int
) -> None:
    """Phase 1: count failures. Phase 2: race for the half-open probe. Also share the cache."""
    try:
        from openai.types.chat import ChatCompletion

        from fallbackchain._config import CacheConfig
        from fallbackchain.breaker._redis_store import RedisGateStore
        from fallbackchain.breaker._stores import GateSettings, Step
        from fallbackchain.cache._redis_cache import RedisResponseCache

        store = RedisGateStore(url, namespace=namespace, name="stream")
        settings = GateSettings(fail_max=10**9, reset_timeout=30.0, probe_lease=600.0, limited_lease=600.0)
        cache = RedisResponseCache(
            CacheConfig(backend="redis", redis_url=url, ttl=600.0), namespace=namespace
        )
        completion = ChatCompletion.model_validate(
            {
                "id": f"c{index}",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": f"answer {index}"},
                    }
                ],
            }
        )
        stored = cache.put(f"fc1-{index:064x}", completion)
        barrier.wait()
        for _ in range(failures):
            store.apply(Step("failure", settings, 1000.0))
        barrier.wait()  # the parent checks the count and opens the breaker
        barrier.wait()
        grant, _ = store.apply(Step("ask", settings, time.time(), f"worker-{index}"))
        results.put({"grant": grant, "stored": stored, "on_redis": store.using_redis})
    except BaseException as exc:
        results.put({"error": repr(exc)})


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


def run_fleet(config: ChainConfig, server: FaultServer) -> tuple[dict[str, int], dict[str, int]]:
    """8 processes in a full outage; returns the upstream counts and the probes sent, per tier."""
    ctx = mp_context()
    barrier = ctx.Barrier(WORKERS, timeout=30)
    results = ctx.Queue()
    procs = [
        ctx.Process(
            target=outage_worker,
            args=(config, server.base_url, barrier, results, REQUESTS, SPACING),
        )
        for _ in range(WORKERS)
    ]
    server.reset_counts()
    for p in procs:
        p.start()
    reports = _collect(results, procs, timeout=40)
    server.wait_idle(5)
    probes = {tier: sum(r["probes"][tier] for r in reports) for tier in TIERS}
    return server.counts, probes


def test_an_outage_is_detected_once_for_the_whole_fleet(server, rs, tmp_path: Path):
    server.default = Fault.status(503)
    namespace = f"fleet-{uuid.uuid4().hex[:8]}"

    def config(storage: str) -> ChainConfig:
        return make_config(
            tmp_path,
            server.base_url,
            breaker__storage=storage,
            breaker__redis_url=rs.url,
            breaker__namespace=namespace,
            breaker__reset_timeout=RESET_TIMEOUT,
            cache__enabled=False,
        )

    fail_max = config("redis").breaker.fail_max
    redis_counts, redis_probes = run_fleet(config("redis"), server)
    memory_counts, memory_probes = run_fleet(config("memory"), server)

    def tiers(counts: dict[str, int], probes: dict[str, int]) -> str:
        return ", ".join(f"{t} {counts[t]} ({probes[t]} probes)" for t in TIERS)

    report = (
        f"{WORKERS} processes x {REQUESTS} requests, all starting at once, over "
        f"~{REQUESTS * SPACING:.0f}s of full outage (fail_max={fail_max}, "
        f"reset_timeout={RESET_TIMEOUT}s, one breaker per tier): upstream requests with redis "
        f"storage = {redis_counts['total']} ({tiers(redis_counts, redis_probes)}; bound per "
        f"tier: fail_max + its probes); with memory storage = {memory_counts['total']} "
        f"({tiers(memory_counts, memory_probes)}); "
        f"ratio {memory_counts['total'] / redis_counts['total']:.1f}x"
    )
    print("\n" + report)
    # Cluster-wide, per breaker: in doubt at most fail_max attempts fail or are in flight, so
    # each opens after fail_max upstream requests in total however many workers start at
    # once; then each half-open period lets one probe through.
    for tier in TIERS:
        assert fail_max <= redis_counts[tier] <= fail_max + redis_probes[tier], report
    # Per process, each one detects the outage itself and probes on its own.
    assert memory_counts["total"] >= WORKERS * len(TIERS) * fail_max, report
    assert memory_counts["total"] >= 4 * redis_counts["total"], report


def test_failures_probes_and_answers_are_shared_across_processes(rs):
    from fallbackchain._config import CacheConfig
    from fallbackchain._redis_link import RedisLink
    from fallbackchain.breaker._redis_store import RedisGateStore
    from fallbackchain.cache._redis_cache import RedisResponseCache

    namespace = f"procs-{uuid.uuid4().hex[:8]}"
    ctx = mp_context()
    barrier = ctx.Barrier(WORKERS + 1, timeout=30)
    results = ctx.Queue()
    procs = [
        ctx.Process(target=shared_state_worker, args=(rs.url, namespace, i, barrier, results, 200))
        for i in range(WORKERS)
    ]
    for p in procs:
        p.start()
    link = RedisLink(rs.url)
    try:
        barrier.wait()  # phase 1 starts
        barrier.wait()  # phase 1 done
        store = RedisGateStore(rs.url, namespace=namespace, name="stream", link=link)
        assert store.failures() == WORKERS * 200  # no increment lost between processes
        with rs.client() as r:
            r.hset(store.key, mapping={"state": "open", "opened_at": "0"})
        barrier.wait()  # phase 2: everyone races for the probe
        reports = _collect(results, procs, timeout=30)
        assert sorted(str(r["grant"]) for r in reports).count("probe") == 1, reports
        assert all(r["on_redis"] and r["stored"] for r in reports), reports
        cache = RedisResponseCache(
            CacheConfig(backend="redis", redis_url=rs.url, ttl=600.0, memory_items=0),
            namespace=namespace,
            link=link,
        )
        answers = [cache.get(f"fc1-{i:064x}") for i in range(WORKERS)]
        assert [a.completion.choices[0].message.content if a else None for a in answers] == [
            f"answer {i}" for i in range(WORKERS)
        ]
    finally:
        link.close()
