"""Cache tier: how long a cached answer takes, from the memory layer and from the disk layer.

Two levels, both timed per call with ``time.perf_counter_ns``:

* ``ResponseCache.get`` itself (the tier): 1,000 stored 60-word answers, read in a shuffled
  order; memory = the default memory layer, disk = the same directory with ``memory_items=0``;
* a whole ``chain.complete()`` answered from the cache while both breakers are open (what a
  caller waits for during an outage), memory and disk alike.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import shutil
import time

import openai
from _common import API_KEY, Row, Section, Settings, fmt_time, percentile, production_config, user
from openai.types.chat import ChatCompletion

from fallbackchain import FallbackChain, ResponseCache
from fallbackchain.testing import Fault, FaultServer

ENTRIES = 1000


def _timed(calls: list[tuple[object, ...]], fn: object) -> list[float]:
    samples: list[float] = []
    clock = time.perf_counter_ns
    gc.collect()
    for args in calls:
        start = clock()
        fn(*args)  # type: ignore[operator]
        samples.append((clock() - start) / 1e9)
    return samples


def _completion(server: FaultServer) -> ChatCompletion:
    client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY, max_retries=0)
    try:
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=user("cache tier")  # type: ignore[arg-type]
        )
    finally:
        client.close()


def run(settings: Settings) -> Section:
    section = Section("cache tier")
    reads = 5_000 if settings.quick else 50_000
    rng = random.Random(7)
    directory = settings.scratch / "cache-tier"
    shutil.rmtree(directory, ignore_errors=True)
    with FaultServer(words=60) as server:
        base = production_config(server.base_url, directory)
        completion = _completion(server)
        keys = [f"fc1-{i:064x}" for i in range(ENTRIES)]
        with ResponseCache(base.cache) as cache:
            for key in keys:
                cache.put(key, completion)
            order = [(rng.choice(keys),) for _ in range(reads)]
            for (key,) in order[:2000]:  # warm
                cache.get(key)
            memory = _timed(order, cache.get)
            assert all(cache.get(k) is not None for k in keys[:10])
        disk_config = dataclasses.replace(base.cache, memory_items=0)
        with ResponseCache(disk_config) as cache:
            for (key,) in order[:2000]:
                cache.get(key)
            disk = _timed(order, cache.get)
            assert cache.get(keys[0]) is not None

        # end to end: chain.complete() with both breakers open
        chain_results = {}
        for label, memory_items in (("memory", base.cache.memory_items), ("disk", 0)):
            chain_dir = settings.scratch / f"cache-tier-chain-{label}"
            shutil.rmtree(chain_dir, ignore_errors=True)
            config = production_config(
                server.base_url,
                chain_dir,
                cache__memory_items=memory_items,
                breaker__fail_max=1,
                breaker__reset_timeout=3600.0,
                retry__max_attempts=1,
            )
            client = openai.OpenAI(base_url=server.base_url, api_key=API_KEY)
            chain = FallbackChain(config, client=client)
            try:
                prompts = [f"cache tier prompt {i}" for i in range(200)]
                for prompt in prompts:
                    chain.complete(user(prompt))
                server.default = Fault.status(503)
                # fail_max 1: the first request opens the stream tier's breaker, the second
                # the completion tier's (a 503 is the route's: one attempt per request)
                chain.complete(user(prompts[0]))
                chain.complete(user(prompts[0]))
                assert set(chain.breaker_states().values()) == {"open"}
                before = server.counts["total"]
                calls = [(user(rng.choice(prompts)),) for _ in range(reads // 5)]
                for args in calls[:500]:
                    chain.complete(*args)
                samples = _timed(calls, chain.complete)
                assert server.counts["total"] == before  # never touched the network
                chain_results[label] = samples
            finally:
                server.default = Fault.ok()
                chain.close()
                client.close()

    for label, samples, target in (("memory", memory, 50e-6), ("disk", disk, 300e-6)):
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        section.rows.append(
            Row(
                "cache tier",
                f"ResponseCache.get from {label}: p50 / p99",
                f"{fmt_time(p50)} / {fmt_time(p99)}",
                "",
                "",
                f"≤ {fmt_time(target)}",
                p99 <= target,
                f"{len(samples):,} reads of {ENTRIES:,} stored 60-word answers; target on p99",
            )
        )
        section.chart[label] = {"p50": p50, "p99": p99, "target": target}
    for label, samples in chain_results.items():
        p50, p99 = percentile(samples, 50), percentile(samples, 99)
        section.rows.append(
            Row(
                "cache tier",
                f"chain.complete() from the cache ({label}), breakers open: p50 / p99",
                f"{fmt_time(p50)} / {fmt_time(p99)}",
                "",
                "",
                "(end to end, for reference)",
                None,
                f"{len(samples):,} requests; no upstream request was made",
            )
        )
        section.chart[f"chain-{label}"] = {"p50": p50, "p99": p99}
    return section


if __name__ == "__main__":
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        result = run(Settings(quick="--quick" in sys.argv, scratch=Path(tmp)))
    for row in result.rows:
        print(row)
