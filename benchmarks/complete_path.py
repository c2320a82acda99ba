"""complete(), healthy: throughput and client CPU per answer beside the raw SDK's non-streamed
``create(stream=False)``, with ``openai.complete_streams`` on (the default: streaming first)
and off (a whole completion first), cache on and off; interleaved rounds in one run.

Targets (#14): with a whole completion first, >= 0.9x the raw SDK's throughput and <= 1.2x its
CPU per answer.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
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


def _batch(
    one: Callable[[str], str], n: int, offset: int, settle: Callable[[], object] = lambda: None
) -> tuple[float, float]:
    """``n`` sequential answers: (wall seconds, CPU seconds of this process).

    ``settle`` ends the batch: a chain's cache writer finishes its writes inside the batch
    that queued them, so their CPU is charged there, not to the next contender's batch.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(n):
        one(f"complete-path prompt {offset + i}")
    settle()
    return time.perf_counter() - wall, time.process_time() - cpu


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
        settles = {name: chain.cache.flush for name, chain in chains.items()}
        try:
            assert raw("same?") == ones["whole first"]("same?")
            for one in ones.values():  # warm-up: connections, schemas, sqlite pages
                _batch(one, 10, 0)
            results: dict[str, list[tuple[float, float]]] = {name: [] for name in ones}
            for r in range(rounds):  # interleaved: drift hits every contender alike
                for name, one in ones.items():
                    settle = settles.get(name, lambda: None)
                    results[name].append(_batch(one, n, (r + 1) * 1000, settle))
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
                f"{rounds} interleaved rounds of {n} sequential 300-word answers; medians",
            )
        )
    section.chart = {name: results[name] for name in ones}
    return section


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        for row in run(Settings(quick="--quick" in sys.argv, scratch=Path(tmp))).rows:
            print(row)
