"""A concurrent run mixing the caller's own mistakes, a chain closed mid-run, and a host clock
stepped back and forward (#11): breakers never open from any of them, nothing is lost.

Real threads and tasks, the real openai client, the project's fault server; only the wall
clock is stepped (a host's clock being set), which intervals must never see.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import pytest

from fallbackchain import AsyncFallbackChain, ChainClosedError, FallbackChain
from fallbackchain.testing import Fault, FaultServer

from .conftest import make_config, user

REQUESTS = 400
SEED = 20261205


class SteppedClock:
    """A ``TimeSource``: the real monotonic clock, and a wall clock that jumps by hours."""

    def __init__(self) -> None:
        self.offset = 0.0
        self.steps = 0

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time() + self.offset

    def step(self, rng: random.Random) -> None:
        self.offset += rng.choice([-3600.0, 3600.0, -86400.0, 7200.0])
        self.steps += 1


def caller_mistake(rng: random.Random) -> dict[str, Any]:
    """A request the SDK cannot build: it fails before anything is sent."""
    kind = rng.choice(["surrogate", "object", "set"])
    if kind == "surrogate":
        return {"messages": [{"role": "user", "content": "bad \ud800 text"}]}
    if kind == "object":
        return {"messages": [{"role": "user", "content": object()}]}
    return {"messages": user("fine"), "metadata": {"tags": {"a", "b"}}}


def plan(rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    for i in range(REQUESTS):
        if rng.random() < 0.3:
            out.append(("mistake", caller_mistake(rng)))
        else:
            out.append(("good", {"messages": user(f"prompt {i % 25}")}))
    return out


def check(outcomes: Counter[str], chain: Any, server: FaultServer, clock: SteppedClock) -> None:
    assert outcomes["unexpected"] == 0, outcomes
    assert outcomes["mistake-raised"] > 50, outcomes  # each raised to its caller, unchanged
    assert outcomes["answered"] > 100, outcomes
    assert outcomes["closed"] > 0, outcomes  # requests after close() got ChainClosedError
    assert clock.steps > 10
    # no breaker ever counted a caller's mistake or a clock step
    assert {g.fail_counter for g in chain.breakers.values()} == {0}
    assert set(chain.breaker_states().values()) == {"closed"}
    assert server.counts["active"] == 0


def classify(exc: BaseException) -> str:
    if isinstance(exc, ChainClosedError):
        return "closed"
    if isinstance(exc, TypeError | ValueError):  # UnicodeEncodeError is a ValueError
        return "mistake-raised"
    return "unexpected"


@pytest.mark.slow
def test_threads_with_caller_mistakes_a_mid_run_close_and_clock_steps(
    server: FaultServer, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    clock = SteppedClock()
    config = make_config(tmp_path, server.base_url)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
    chain = FallbackChain(config, client=client, clock=clock)
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    requests = plan(rng)
    close_at = int(REQUESTS * 0.8)

    def one(index: int, kind: str, request: dict[str, Any]) -> None:
        if index == close_at:
            chain.close()  # the app shuts down while other threads are still asking
        if index % 25 == 0:
            with lock:
                clock.step(rng)
        try:
            response = chain.complete(**request)
            outcome = "answered" if kind == "good" and response.text else "unexpected"
        except Exception as exc:
            outcome = classify(exc)
            if outcome == "mistake-raised" and kind != "mistake":
                outcome = "unexpected"
        with lock:
            outcomes[outcome] += 1

    with ThreadPoolExecutor(max_workers=8) as pool:
        for future in [pool.submit(one, i, k, r) for i, (k, r) in enumerate(requests)]:
            future.result(timeout=30)
    check(outcomes, chain, server, clock)
    assert server.wait_idle(5.0)
    client.close()


@pytest.mark.slow
def test_tasks_with_caller_mistakes_a_mid_run_close_and_clock_steps(
    server: FaultServer, tmp_path: Path
) -> None:
    rng = random.Random(SEED + 1)
    clock = SteppedClock()
    config = make_config(tmp_path, server.base_url)
    requests = plan(rng)
    close_at = int(REQUESTS * 0.8)
    outcomes: Counter[str] = Counter()

    async def main() -> Any:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test")
        chain = AsyncFallbackChain(config, client=client, clock=clock)
        gate = asyncio.Semaphore(16)

        async def one(index: int, kind: str, request: dict[str, Any]) -> None:
            async with gate:
                if index == close_at:
                    await chain.aclose()
                if index % 25 == 0:
                    clock.step(rng)
                try:
                    response = await chain.complete(**request)
                    outcome = "answered" if kind == "good" and response.text else "unexpected"
                except Exception as exc:
                    outcome = classify(exc)
                    if outcome == "mistake-raised" and kind != "mistake":
                        outcome = "unexpected"
                outcomes[outcome] += 1

        await asyncio.gather(*(one(i, k, r) for i, (k, r) in enumerate(requests)))
        await client.close()
        return chain

    chain = asyncio.run(main())
    check(outcomes, chain, server, clock)


@pytest.mark.parametrize("step", [-86400.0, 1800.0])
def test_a_cached_answer_survives_a_clock_step_within_its_ttl(
    server: FaultServer, tmp_path: Path, step: float
) -> None:
    clock = SteppedClock()
    config = make_config(tmp_path, server.base_url)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
    with FallbackChain(config, client=client, clock=clock) as chain:
        chain.complete(user("kept"))
        clock.offset += step  # the host's clock is set, within the cache's ttl (1 h here)
        server.default = Fault.status(503)
        assert chain.complete(user("kept")).source == "cache"
    client.close()
