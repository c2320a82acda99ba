"""Outage: 20 requests/s for prompts answered (and so cached) before, while the API returns 503.

Three contenders, one after another against the same in-process fault server:

* the chain with the production config (``config/fallbackchain.toml``: fail_max 5,
  reset_timeout 30 s, 3 attempts per tier, full-jitter backoff from 0.5 s);
* the tutorial retry loop (3 tries, sleep 1 s then 2 s, SDK default retries on);
* the SDK alone (``max_retries=2``).

Requests arrive open-loop (request *i* is due at ``i / rate`` seconds, whatever happened to the
others), each in its own worker thread; "time to answer" runs from when the request was due
to when the caller got an answer or an error. Upstream requests are counted by the server from
the start to the end of the outage. For the chain, arrivals go on after the API comes back
until the first live answer, which gives the recovery time at the end of the outage.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import naive
import openai
from _common import (
    API_KEY,
    Row,
    Section,
    Settings,
    fmt_time,
    percentile,
    production_config,
    user,
)

from fallbackchain import AsyncFallbackChain, FallbackChain
from fallbackchain.testing import Fault, FaultServer

RATE = 20.0
PROMPTS = [f"outage prompt {i}" for i in range(50)]


@dataclass
class Outcome:
    due: float
    done: float = 0.0
    answered: bool = False
    source: str = ""
    error: str = ""

    @property
    def latency(self) -> float:
        return self.done - self.due


@dataclass
class Run:
    name: str
    outcomes: list[Outcome]
    upstream: int
    duration: float
    opened_at: float | None = None
    probes: int = 0
    recovery: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class _Watch:
    """A chain listener: when both breakers are open, and how many probes were sent."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.open: set[str] = set()
        self.both_open_at: float | None = None
        self.probes = 0
        self.counting = False

    def on_breaker_change(self, event: Any) -> None:
        with self.lock:
            if event.new == "open":
                self.open.add(event.tier)
            else:
                self.open.discard(event.tier)
            if self.both_open_at is None and {"stream", "completion"} <= self.open:
                self.both_open_at = time.perf_counter()

    def on_attempt_start(self, event: Any) -> None:
        if event.probe and self.counting:
            with self.lock:
                self.probes += 1


def _drive(
    answer: Callable[[str], str | tuple[str, str]],
    server: FaultServer,
    duration: float,
    *,
    until_live: float = 0.0,
    on_end: Callable[[], None] | None = None,
) -> tuple[list[Outcome], int, float | None]:
    """Run the outage; returns every outcome, upstream requests during it, recovery time."""
    outcomes: list[Outcome] = []
    live_after_end: list[float] = []
    lock = threading.Lock()
    end = threading.Event()

    def one(index: int, outcome: Outcome) -> None:
        prompt = PROMPTS[index % len(PROMPTS)]
        try:
            result = answer(prompt)
        except Exception as exc:
            outcome.done = time.perf_counter()
            outcome.error = type(exc).__name__
            return
        outcome.done = time.perf_counter()
        outcome.answered = True
        outcome.source = result[1] if isinstance(result, tuple) else "live"
        if outcome.source != "cache" and end.is_set():
            with lock:
                live_after_end.append(outcome.done)

    server.default = Fault.status(503)
    before = server.counts["total"]
    start = time.perf_counter()
    outage_end = start + duration
    upstream = 0

    def recover() -> None:
        nonlocal upstream
        delay = outage_end - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        with lock:
            upstream = server.counts["total"] - before
            server.default = Fault.ok()
            end.set()
        if on_end is not None:
            on_end()

    restorer = threading.Thread(target=recover, name="outage-end")
    restorer.start()
    with ThreadPoolExecutor(max_workers=256, thread_name_prefix="bench") as pool:
        index = 0
        while True:
            due = start + index / RATE
            if due >= outage_end and (until_live <= 0 or live_after_end):
                break
            if due >= outage_end + until_live:
                break
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            outcome = Outcome(due=due)
            outcomes.append(outcome)
            pool.submit(one, index, outcome)
            index += 1
    restorer.join()
    recovery = (min(live_after_end) - outage_end) if live_after_end else None
    # Only the requests that arrived during the outage are the outage's.
    during = [o for o in outcomes if o.due < outage_end]
    return during, upstream, recovery


def _chain_run(base_url: str, server: FaultServer, settings: Settings, duration: float) -> Run:
    reset_timeout = 3.0 if settings.quick else 30.0
    cache_dir = settings.scratch / "outage-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    config = production_config(base_url, cache_dir, breaker__reset_timeout=reset_timeout)
    watch = _Watch()
    client = openai.OpenAI(base_url=base_url, api_key=API_KEY)  # SDK default retries on
    chain = FallbackChain(config, client=client, listeners=[watch])
    try:
        for prompt in PROMPTS:  # answered before, so cached
            chain.complete(user(prompt))

        def answer(prompt: str) -> tuple[str, str]:
            response = chain.complete(user(prompt))
            return response.text, response.source

        watch.counting = True
        start = time.perf_counter()
        probes_during: list[int] = []
        outcomes, upstream, recovery = _drive(
            answer,
            server,
            duration,
            until_live=reset_timeout + 10.0,
            on_end=lambda: probes_during.append(watch.probes),
        )
    finally:
        chain.close()
        client.close()
    run = Run("fallbackchain", outcomes, upstream, duration, probes=probes_during[0])
    run.opened_at = None if watch.both_open_at is None else watch.both_open_at - start
    run.recovery = recovery
    run.extra = {"fail_max": config.breaker.fail_max, "reset_timeout": reset_timeout}
    return run


def _baseline_run(
    name: str,
    answer: Callable[[openai.OpenAI, str], str],
    base_url: str,
    server: FaultServer,
    duration: float,
) -> Run:
    client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=2)
    try:
        for prompt in PROMPTS[:5]:
            answer(client, prompt)
        outcomes, upstream, _ = _drive(lambda p: answer(client, p), server, duration)
    finally:
        client.close()
    return Run(name, outcomes, upstream, duration)


def _rows(runs: list[Run], duration: float, compressed: bool) -> list[Row]:
    chain, tutorial, sdk = runs
    fail_max = chain.extra["fail_max"]
    label = f"{duration:.0f}-s outage at {RATE:.0f} req/s" + (" (compressed)" if compressed else "")
    n = len(chain.outcomes)
    budget = 2 * fail_max + chain.probes

    def answered(run: Run) -> str:
        end = run.outcomes[0].due + run.duration
        during = sum(o.answered and o.done < end for o in run.outcomes)
        total = sum(o.answered for o in run.outcomes)
        return f"{during} / {total} of {len(run.outcomes)}"

    def lat(run: Run, q: float) -> float:
        return percentile([o.latency for o in run.outcomes], q)

    after_open = [
        o.latency
        for o in chain.outcomes
        if chain.opened_at is not None and o.due - chain.outcomes[0].due >= chain.opened_at
    ]
    p99_open = percentile(after_open, 99)
    return [
        Row(
            "outage",
            f"{label}: upstream requests during the outage",
            str(chain.upstream),
            f"tutorial {tutorial.upstream}; SDK {sdk.upstream}",
            f"{chain.upstream / tutorial.upstream:.4f} / {chain.upstream / sdk.upstream:.4f}",
            f"≤ 2 fail_max + probes = {budget}",
            chain.upstream <= budget,
            f"{n} requests; fail_max {fail_max}, {chain.probes} probe(s) during the outage",
        ),
        Row(
            "outage",
            f"{label}: requests answered (before the outage ended / at all)",
            answered(chain),
            f"tutorial {answered(tutorial)}; SDK {answered(sdk)}",
            "",
            "every request answered",
            all(o.answered and o.done < o.due + 1.0 for o in chain.outcomes),
            "the baselines have no cache: their late answers came after the API was back",
        ),
        Row(
            "outage",
            f"{label}: time to answer p50",
            fmt_time(lat(chain, 50)),
            f"tutorial {fmt_time(lat(tutorial, 50))}; SDK {fmt_time(lat(sdk, 50))}",
            f"{lat(chain, 50) / lat(tutorial, 50):.5f} / {lat(chain, 50) / lat(sdk, 50):.5f}",
            "",
            None,
            "from when the request was due to its answer or error (baselines: error)",
        ),
        Row(
            "outage",
            f"{label}: time to answer p99",
            fmt_time(lat(chain, 99)),
            f"tutorial {fmt_time(lat(tutorial, 99))}; SDK {fmt_time(lat(sdk, 99))}",
            f"{lat(chain, 99) / lat(tutorial, 99):.4f} / {lat(chain, 99) / lat(sdk, 99):.4f}",
            "",
            None,
            "the chain's tail is the first requests, retried before the breakers opened",
        ),
        Row(
            "outage",
            f"{label}: time to answer p99 once both breakers are open",
            fmt_time(p99_open),
            "",
            "",
            "≤ 5 ms",
            p99_open <= 5e-3,
            f"{len(after_open)} requests; breakers open "
            f"{fmt_time(chain.opened_at or float('nan'))} into the outage",
        ),
    ]


ASYNC_CONCURRENCY = 32


def _async_cache_answers(base_url: str, server: FaultServer, settings: Settings) -> Row:
    """The async chain in an outage: 32 concurrent requests answered from the cache.

    Prompts answered before; the upstream answers 503; once both breakers are open, rounds
    of 32 concurrent ``complete()`` calls on one event loop (answers held in memory are
    served on the loop, no thread hop). p99 of the time to answer.
    """
    rounds = 20 if settings.quick else 100
    cache_dir = settings.scratch / "outage-async-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    config = production_config(base_url, cache_dir)

    async def main() -> list[float]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY)
        chain = AsyncFallbackChain(config, client=client)
        latencies: list[float] = []
        try:
            for prompt in PROMPTS:  # answered before, so cached
                await chain.complete(user(prompt))
            server.default = Fault.status(503)
            while any(state != "open" for state in chain.breaker_states().values()):
                await chain.complete(user(PROMPTS[0]))  # the failures open the breakers

            async def one(prompt: str) -> None:
                start = time.perf_counter()
                response = await chain.complete(user(prompt))
                latencies.append(time.perf_counter() - start)
                assert response.source == "cache", response.source

            for r in range(rounds):
                group = range(r * ASYNC_CONCURRENCY, (r + 1) * ASYNC_CONCURRENCY)
                await asyncio.gather(*(one(PROMPTS[i % len(PROMPTS)]) for i in group))
        finally:
            server.default = Fault.ok()
            await chain.aclose()
            await client.close()
        return latencies

    latencies = asyncio.run(main())
    p99 = percentile(latencies, 99)
    return Row(
        "outage",
        f"async chain, {ASYNC_CONCURRENCY} concurrent requests once both breakers are open: "
        "time to answer p99",
        fmt_time(p99),
        "",
        "",
        "≤ 2 ms",
        p99 <= 2e-3,
        f"p50 {fmt_time(percentile(latencies, 50))}; {len(latencies)} requests in rounds of "
        f"{ASYNC_CONCURRENCY} on one event loop, every one answered from the cache",
    )


def run(settings: Settings) -> Section:
    duration = 6.0 if settings.quick else 30.0
    section = Section("outage")
    with FaultServer(words=60) as server:
        runs = [
            _chain_run(server.base_url, server, settings, duration),
            _baseline_run("tutorial", naive.tutorial_answer, server.base_url, server, duration),
            _baseline_run("sdk", naive.sdk_answer, server.base_url, server, duration),
        ]
        server.wait_idle(10.0)
        async_row = _async_cache_answers(server.base_url, server, settings)
        server.wait_idle(10.0)
    section.rows = [*_rows(runs, duration, settings.quick), async_row]
    section.chart = {
        run.name: {
            "upstream": run.upstream,
            "answered": sum(o.answered for o in run.outcomes) / len(run.outcomes),
            "p50": percentile([o.latency for o in run.outcomes], 50),
            "p99": percentile([o.latency for o in run.outcomes], 99),
        }
        for run in runs
    }
    chain = runs[0]
    section.chart["recovery_end_of_outage"] = chain.recovery
    section.chart["reset_timeout"] = chain.extra["reset_timeout"]
    section.chart["opened_at"] = chain.opened_at
    section.notes.append(
        f"Outage: {'compressed to ' if settings.quick else ''}{duration:.0f} s of HTTP 503 "
        f"(no Retry-After) at {RATE:.0f} requests/s over {len(PROMPTS)} prompts answered "
        "before; in-process fault server; each request in its own worker thread; chain with "
        f"the production config (reset_timeout {chain.extra['reset_timeout']:g} s)."
    )
    return section


if __name__ == "__main__":
    import sys
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        result = run(Settings(quick="--quick" in sys.argv, scratch=Path(tmp)))
    for row in result.rows:
        print(row)
    print(result.chart)
