"""Profile where the chain's happy-path CPU goes, next to the raw SDK doing the same work.

    .venv/bin/python benchmarks/profile_chain.py [--requests N] [--async] [--no-cache]

Runs the fault server in its own process, streams N answers through the raw openai client
and N through a chain, and prints the functions that account for the chain's extra time
(cProfile, sorted by internal time), plus the CPU per content chunk of each.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import dataclasses
import io
import pstats
import tempfile
import time
from pathlib import Path

import openai
from _common import API_KEY, production_config, server_process
from happy_path import PROMPTS, chain_async, chain_sync, raw_async, raw_sync

from fallbackchain import AsyncFallbackChain, FallbackChain


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--async", dest="use_async", action="store_true")
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument("--top", type=int, default=35)
    args = parser.parse_args()
    with server_process(words=60) as base_url, tempfile.TemporaryDirectory() as tmp:
        config = production_config(base_url, Path(tmp) / "cache")
        if args.no_cache:
            config = dataclasses.replace(
                config, cache=dataclasses.replace(config.cache, enabled=False)
            )
        if args.use_async:
            profile_async(base_url, config, args)
        else:
            profile_sync(base_url, config, args)


def _report(label: str, profiler: cProfile.Profile, cpu: float, chunks: int, top: int) -> None:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    print(f"=== {label}: {cpu / chunks * 1e6:.1f} µs CPU per content chunk (under cProfile)")
    print(out.getvalue())


def profile_sync(base_url: str, config: object, args: argparse.Namespace) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
    chain = FallbackChain(config, client=client)  # type: ignore[arg-type]
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
    for p in prompts[:50]:
        raw_sync(client, p)
        chain_sync(chain, p)
    for label, one in (
        ("raw", lambda p: raw_sync(client, p)),
        ("chain", lambda p: chain_sync(chain, p)),
    ):
        cpu0 = time.process_time()
        for p in prompts:
            one(p)
        plain = time.process_time() - cpu0
        profiler = cProfile.Profile()
        chunks = 0
        cpu0 = time.process_time()
        profiler.enable()
        for p in prompts:
            chunks += one(p)[1]
        profiler.disable()
        cpu = time.process_time() - cpu0
        print(f"=== {label}: {plain / chunks * 1e6:.1f} µs CPU per content chunk (no profiler)")
        _report(label, profiler, cpu, chunks, args.top)
    chain.close()
    client.close()


def profile_async(base_url: str, config: object, args: argparse.Namespace) -> None:
    async def go() -> None:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
        chain = AsyncFallbackChain(config, client=client)  # type: ignore[arg-type]
        prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.requests)]
        await asyncio.gather(*(raw_async(client, p) for p in prompts[:200]))
        await asyncio.gather(*(chain_async(chain, p) for p in prompts[:200]))
        for label, one in (
            ("raw", lambda p: raw_async(client, p)),
            ("chain", lambda p: chain_async(chain, p)),
        ):
            profiler = cProfile.Profile()
            cpu0 = time.process_time()
            profiler.enable()
            results = []
            for start in range(0, len(prompts), 200):  # 200 concurrent streams at a time
                group = prompts[start : start + 200]
                results += await asyncio.gather(*(one(p) for p in group))
            profiler.disable()
            cpu = time.process_time() - cpu0
            _report(label, profiler, cpu, sum(r[1] for r in results), args.top)
        await chain.aclose()
        await client.close()

    asyncio.run(go())


if __name__ == "__main__":
    main()
