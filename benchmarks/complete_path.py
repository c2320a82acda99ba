"""complete(), healthy: throughput and client CPU per answer beside the raw SDK's non-streamed
``create(stream=False)``, with ``openai.complete_streams`` on (the default: streaming first)
and off (a whole completion first), cache on and off; contenders interleaved request by
request in one run.

Targets (#14): with a whole completion first, >= 0.9x the raw SDK's throughput and <= 1.2x its
CPU per answer.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import openai

from fallbackchain import FallbackChain

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    API_KEY,
    MODEL,
    Row,
    Section,
    Settings,
    median,
    production_config,
    server_process,
    user,
)

CONTENDERS = ("raw", "whole first", "whole first, no cache", "streams first")


_WRITER = "fallbackchain-cache-writer"  # the name of a chain's cache writer thread


def _writers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == _WRITER}


def _thread_cpu(threads: set[threading.Thread]) -> float:
    """CPU seconds ``threads`` have used so far (Linux: each thread's own CPU clock)."""
    return sum(time.clock_gettime(time.pthread_getcpuclockid(t.ident)) for t in threads if t.ident)


def _round(
    ones: dict[str, Callable[[str], str]],
    writers: dict[str, set[threading.Thread]],
    settle: Callable[[], object],
    n: int,
    offset: int,
) -> dict[str, tuple[float, float]]:
    """``n`` prompts, each answered by every contender in turn: (wall, CPU) per contender.

    Interleaved per request, in an order that rotates with each prompt, so drift on the
    machine (seconds long here) hits every contender alike. Wall and CPU are the caller's
    thread's, per call; a chain's cache writer works behind, as in real use (its wall is
    nobody's), and its thread's CPU over the round, once ``settle`` has let it finish, is
    added to the chain that owns it.
    """
    names = list(ones)
    totals = {name: [0.0, 0.0] for name in names}
    clock, cpu_clock = time.perf_counter, time.thread_time
    behind = {name: _thread_cpu(threads) for name, threads in writers.items()}
    for i in range(n):
        prompt = f"complete-path prompt {offset + i}"
        turn = i % len(names)
        for name in names[turn:] + names[:turn]:
            one = ones[name]
            wall, cpu = clock(), cpu_clock()
            one(prompt)
            totals[name][0] += clock() - wall
            totals[name][1] += cpu_clock() - cpu
    settle()
    for name, threads in writers.items():
        totals[name][1] += _thread_cpu(threads) - behind[name]
    return {name: (wall, cpu) for name, (wall, cpu) in totals.items()}


def run(settings: Settings) -> Section:
    n = 30 if settings.quick else 100
    rounds = 3 if settings.quick else 11
    section = Section("complete_path")
    with server_process(words=300) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
        chains: dict[str, FallbackChain] = {}
        for name, streams, cached in (
            ("whole first", False, True),
            ("whole first, no cache", False, False),
            ("streams first", True, True),
        ):
            directory = settings.scratch / f"complete-{len(chains)}"
            shutil.rmtree(directory, ignore_errors=True)
            config = production_config(base_url, directory)
            config = dataclasses.replace(
                config,
                openai=dataclasses.replace(config.openai, complete_streams=streams),
                cache=dataclasses.replace(config.cache, enabled=cached),
            )
            chains[name] = FallbackChain(config, client=client)

        def raw(prompt: str) -> str:
            answer = client.chat.completions.create(
                model=MODEL, messages=user(prompt), stream=False  # type: ignore[arg-type]
            )
            return answer.choices[0].message.content or ""

        def via(chain: FallbackChain) -> Callable[[str], str]:
            return lambda prompt: chain.complete(user(prompt)).text

        ones = {"raw": raw, **{name: via(chain) for name, chain in chains.items()}}

        def settle() -> None:
            for chain in chains.values():
                chain.cache.flush()

        try:
            # warm-up (connections, schemas, sqlite pages), one chain at a time: each chain's
            # first write starts its writer thread, which is how the threads are told apart
            writers: dict[str, set[threading.Thread]] = {}
            for name, one in ones.items():
                before = _writers()
                for i in range(10):
                    one(f"complete-path warm-up {i}")
                settle()
                if name in chains and chains[name].config.cache.enabled:
                    writers[name] = _writers() - before
                    assert len(writers[name]) == 1, f"{name}: no writer thread found"
            assert raw("same?") == ones["whole first"]("same?")
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in ones}
            for r in range(rounds):
                for name, measured in _round(ones, writers, settle, n, (r + 1) * 1000).items():
                    results[name].append(measured)
        finally:
            for chain in chains.values():
                chain.close()
            client.close()
    raw_wall = median([w for w, _ in results["raw"]])
    raw_cpu = median([c for _, c in results["raw"]])
    for name in CONTENDERS[1:]:
        wall = median([w for w, _ in results[name]])
        cpu = median([c for _, c in results[name]])
        throughput, cpu_ratio = raw_wall / wall, cpu / raw_cpu
        target = name == "whole first"
        section.rows.append(
            Row(
                "complete()",
                f"healthy, {name}: throughput / CPU per answer vs raw create(stream=False)",
                f"{n / wall:.0f} answers/s, {cpu / n * 1e6:.0f} µs CPU",
                f"raw {n / raw_wall:.0f} answers/s, {raw_cpu / n * 1e6:.0f} µs CPU",
                f"{throughput:.2f}x / {cpu_ratio:.2f}x",
                "≥ 0.9x / ≤ 1.2x" if target else "(for comparison)",
                (throughput >= 0.9 and cpu_ratio <= 1.2) if target else None,
                f"{rounds} rounds of {n} sequential 300-word answers, contenders interleaved "
                "per request; medians of the rounds; CPU: the caller's thread, plus the "
                "chain's cache writer thread",
            )
        )
    section.chart = {name: results[name] for name in ones}
    return section


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for row in run(Settings(quick="--quick" in sys.argv, scratch=Path(tmp))).rows:
            print(row)
