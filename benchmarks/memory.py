"""Memory: RSS over 10,000 requests with 1,000 distinct prompts.

One chain (production config, ``cache.memory_items = 256`` so the memory layer is full and
evicting for most of the run) streams 10,000 answers from 4 threads against the fault server
in its own process (so the server's own records are not in our RSS). The first 1,000
requests visit every prompt once; the rest pick prompts at random (seeded). RSS
(``psutil``) is sampled every 500 requests.

Target: no growth with request count once every prompt has been seen, i.e. RSS after
10,000 requests within 1 MiB of RSS after the first 1,000, while the memory layer holds at
most ``memory_items`` answers. The memory layer's own size is estimated with ``tracemalloc``
(``memory_items`` answers like these).
"""

from __future__ import annotations

import gc
import random
import shutil
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import openai
import psutil
from _common import (
    API_KEY,
    Row,
    Section,
    Settings,
    fmt_bytes,
    production_config,
    server_process,
    user,
)
from openai.types.chat import ChatCompletion

from fallbackchain import FallbackChain

MEMORY_ITEMS = 256
THREADS = 4
SAMPLE_EVERY = 500


def _layer_estimate(completion: ChatCompletion, items: int) -> int:
    body = completion.model_dump(mode="json")
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    kept = [(f"fc1-{i:064x}", ChatCompletion.model_validate(body), float(i)) for i in range(items)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    del kept
    return after - before


def run(settings: Settings) -> Section:
    total = 2_000 if settings.quick else 10_000
    distinct = 200 if settings.quick else 1_000
    every = 100 if settings.quick else SAMPLE_EVERY
    section = Section("memory")
    process = psutil.Process()
    cache_dir = settings.scratch / "memory-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    prompts = [f"memory prompt {i}" for i in range(distinct)]
    rng = random.Random(11)
    order = prompts + [rng.choice(prompts) for _ in range(total - distinct)]
    samples: list[tuple[int, int]] = []
    with server_process(words=60) as base_url:
        config = production_config(base_url, cache_dir, cache__memory_items=MEMORY_ITEMS)
        client = openai.OpenAI(base_url=base_url, api_key=API_KEY)
        chain = FallbackChain(config, client=client)
        try:
            first = chain.complete(user("warm-up"))
            gc.collect()
            samples.append((0, process.memory_info().rss))
            lock = threading.Lock()
            sources: dict[str, int] = {}

            def one(prompt: str) -> None:
                response = chain.complete(user(prompt))
                with lock:
                    sources[response.source] = sources.get(response.source, 0) + 1

            with ThreadPoolExecutor(max_workers=THREADS) as pool:
                for start in range(0, total, every):
                    list(pool.map(one, order[start : start + every]))
                    samples.append((start + every, process.memory_info().rss))
            stats = chain.cache.stats()
        finally:
            chain.close()
            client.close()
    layer = _layer_estimate(first.completion, MEMORY_ITEMS)
    rss = dict(samples)
    after_pass = rss[distinct]
    end = rss[total]
    growth = end - after_pass
    # least-squares slope over the samples after the first pass, in bytes per 1,000 requests
    tail = [(n, r) for n, r in samples if n >= distinct]
    mean_n = sum(n for n, _ in tail) / len(tail)
    mean_r = sum(r for _, r in tail) / len(tail)
    slope = sum((n - mean_n) * (r - mean_r) for n, r in tail) / sum(
        (n - mean_n) ** 2 for n, _ in tail
    )
    section.rows.append(
        Row(
            "memory",
            f"RSS after {distinct:,} / {total:,} requests ({distinct:,} distinct prompts)",
            f"{fmt_bytes(after_pass)} / {fmt_bytes(end)}",
            f"before the first request {fmt_bytes(rss[0])}",
            f"{growth / (1 << 20):+.2f} MiB",
            "no growth after every prompt was seen: ≤ +1 MiB",
            growth <= 1 << 20 and stats.memory_entries <= MEMORY_ITEMS,
            f"slope {slope * 1000 / 1024:+.1f} KiB per 1,000 requests; memory layer "
            f"{stats.memory_entries}/{MEMORY_ITEMS} entries ≈ {fmt_bytes(layer)}; "
            f"{THREADS} threads; answered by {sources}",
        )
    )
    section.chart = {"samples": samples, "memory_items": MEMORY_ITEMS, "layer_bytes": layer}
    return section


if __name__ == "__main__":
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        result = run(Settings(quick="--quick" in sys.argv, scratch=Path(tmp)))
    for row in result.rows:
        print(row)
    print(result.chart["samples"])
