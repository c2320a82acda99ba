"""Chaos soak: seeded random faults of every kind, sync (threads) and async (tasks), concurrent.

Every request, whatever faults it met, must:

* end with a ``ChainResponse``, an ``AllTiersFailedError``, or the SDK's own client error
  (only when a bad-request fault was scheduled) -- nothing else -- within its deadline;
* never show duplicated text: the deltas joined (after the last ``reset``) equal
  ``response.text``, and without a reset every delta is new text;
* never return truncated text as complete: a ``stop``/``length`` answer is the server's whole
  answer for that prompt; a ``content_filter`` answer is the server's filtered half;
* and afterwards: the cache holds only complete answers (each the full answer of its prompt),
  breaker counters are consistent with their states, no thread or task is left behind, no
  connection is left open (server side), no socket is leaked (no ``ResourceWarning``).

CI mode makes at least 2,000 requests (half in threads, half in tasks) plus a hypothesis
property test of fault schedules run one request at a time on a fake clock. Set
``FALLBACKCHAIN_SOAK=long`` for a longer run (and a different seed with
``FALLBACKCHAIN_SOAK_SEED``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import tempfile
import threading
import time
import warnings
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fallbackchain import (
    AllTiersFailedError,
    AsyncFallbackChain,
    BreakerOpenError,
    FallbackChain,
)
from fallbackchain.testing import Fault, FaultServer

from .conftest import FakeClock, between_tests, make_config, user

LONG = os.environ.get("FALLBACKCHAIN_SOAK", "").lower() == "long"
SEED = int(os.environ.get("FALLBACKCHAIN_SOAK_SEED", "20240611"))
REQUESTS_PER_MODE = 10_000 if LONG else 1_100  # x2 modes: >= 2,000 in CI
THREADS = 16
TASKS = 32
PROMPTS = [f"soak prompt {i}" for i in range(40)]
WORDS = 16
COMPLETE = {"stop", "length", "tool_calls", "function_call"}
CLIENT_ERRORS = (
    openai.BadRequestError,
    openai.AuthenticationError,
    openai.PermissionDeniedError,
    openai.NotFoundError,
    openai.UnprocessableEntityError,
)
TIMEOUT = 0.2  # first_token and idle: a stall must really be waited out
DEADLINE = 2.0
SPREAD = 3.0
"""Seconds over which a mode's requests are started, about 15 breaker ``reset_timeout``s: a
burst answered in microseconds while both breakers are open would otherwise drain the whole
plan inside one open window and measure that window, not the chain under chaos over time."""

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600 if LONG else 120)]  # a soak


# --------------------------------------------------------------------------------------------
# fixtures and fault schedules
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def soak_server() -> Iterator[FaultServer]:
    with FaultServer(words=WORDS) as server:
        yield server


@pytest.fixture
def fresh(soak_server: FaultServer) -> Iterator[FaultServer]:
    yield from between_tests(soak_server)


def soak_config(directory: Path, base_url: str, **overrides: Any) -> Any:
    settings_ = {
        "openai__first_token_timeout": TIMEOUT,
        "openai__idle_timeout": TIMEOUT,
        "openai__timeout": 2.0,
        "retry__deadline": DEADLINE,
        "retry__base_delay": 0.002,
        "retry__max_delay": 0.02,
        "retry__max_retry_after": 0.1,
        "breaker__fail_max": 5,
        "breaker__reset_timeout": 0.2,
        "cache__memory_items": 16,  # smaller than the prompt pool: the disk layer is used too
    }
    settings_.update(overrides)
    return make_config(directory, base_url, **settings_)


def random_fault(rng: random.Random) -> Fault:
    """One fault of any kind the server has (``ok`` most often)."""
    kind = rng.choices(
        [
            "ok",
            "status",
            "drop",
            "early_end",
            "stall",
            "slow_first_byte",
            "sse_error",
            "malformed",
            "reset",
            "finish",
        ],
        weights=[40, 14, 6, 6, 2, 3, 5, 5, 5, 4],
    )[0]
    after = rng.randrange(0, WORDS + 2)
    if kind == "ok":
        return Fault.ok()
    if kind == "status":
        return rng.choice(
            [
                Fault.status(500),
                Fault.status(502),
                Fault.status(503),
                Fault.status(408),
                Fault.status(429, retry_after=0.01),
                Fault.status(429, retry_after_ms=5),
                Fault.status(429, retry_after=60),  # above max_retry_after: next tier at once
                Fault.status(503, should_retry=False),
                Fault.status(429, error_code="insufficient_quota", error_type="insufficient_quota"),
                Fault.status(400),  # the caller's own mistake: propagates
                Fault.status(404),
            ]
        )
    if kind == "drop":
        return Fault.drop(after_chunks=after)
    if kind == "early_end":
        return Fault.early_end(after_chunks=after)
    if kind == "stall":
        return Fault.stall(after_chunks=after, seconds=TIMEOUT * 3)
    if kind == "slow_first_byte":
        return Fault.slow_first_byte(rng.choice([0.01, TIMEOUT * 3]))
    if kind == "sse_error":
        return Fault.sse_error(after_chunks=after)
    if kind == "malformed":
        return Fault.malformed(after_chunks=after)
    if kind == "reset":
        return Fault.reset()
    return Fault.finish(rng.choice(["content_filter", "length"]))


ALL_KINDS = frozenset(
    {
        "ok",
        "status",
        "drop",
        "early_end",
        "stall",
        "slow_first_byte",
        "sse_error",
        "malformed",
        "reset",
        "finish",
    }
)


def kinds_met(server: FaultServer) -> set[str]:
    """The fault kinds the server actually applied to requests so far (exact counters: the
    request log keeps only the newest ones, and a soak sends more)."""
    return {kind for kind, count in server.fault_counts.items() if count}


def is_client_fault(fault: Fault) -> bool:
    return fault.kind == "status" and fault.status_code in (400, 401, 403, 404, 422)


# --------------------------------------------------------------------------------------------
# per-request checks
# --------------------------------------------------------------------------------------------


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    sources: Counter[str] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def problem(self, text: str) -> None:
        with self.lock:
            if len(self.problems) < 50:
                self.problems.append(text)

    def count(self, outcome: str, source: str | None = None) -> None:
        with self.lock:
            self.outcomes[outcome] += 1
            if source is not None:
                self.sources[source] += 1


def expected_text(server: FaultServer, prompt: str, model: str, finish: str | None) -> str:
    answer = server.answer_for(user(prompt), model)
    if finish == "content_filter":  # the server sends the first half of the words
        tokens = [answer.split(" ")[0]] + [" " + w for w in answer.split(" ")[1:]]
        return "".join(tokens[: len(tokens) // 2])
    return answer


def check_response(
    tally: Tally,
    server: FaultServer,
    model: str,
    prompt: str,
    events: list[Any],
    response: Any,
    elapsed: float,
) -> None:
    where = f"{prompt!r} via {response.source}"
    if elapsed > DEADLINE + TIMEOUT + 1.5:
        tally.problem(f"{where}: took {elapsed:.2f}s, deadline {DEADLINE}s")
    shown: list[str] = []
    resets = 0
    for event in events:
        if event.type == "reset":
            resets += 1
            shown = []
        else:
            shown.append(event.text)
    if "".join(shown) != response.text:
        tally.problem(f"{where}: deltas after the last reset != response.text")
    if resets == 0 and "".join(e.text for e in events) != response.text:
        tally.problem(f"{where}: duplicated text without a reset")
    choice = response.completion.choices[0]
    finish = choice.finish_reason
    if finish is None:
        tally.problem(f"{where}: an answer without finish_reason was returned")
        return
    if choice.message.content != response.text:
        tally.problem(f"{where}: completion text != response.text")
    if response.source == "cache" and finish not in COMPLETE:
        tally.problem(f"{where}: an incomplete answer ({finish}) came from the cache")
    if response.text != expected_text(server, prompt, model, finish):
        tally.problem(f"{where}: text is not the server's {finish} answer (truncated?)")
    live = [a for a in response.attempts if not isinstance(a.exception, BreakerOpenError)]
    if response.source != "cache" and (not live or live[-1].tier != response.source):
        tally.problem(f"{where}: last live attempt is not the answering tier")


def check_failure(tally: Tally, prompt: str, exc: BaseException, elapsed: float) -> None:
    if isinstance(exc, AllTiersFailedError):
        if not exc.attempts:
            tally.problem(f"{prompt!r}: AllTiersFailedError without attempts")
        if prompt in str(exc):
            tally.problem(f"{prompt!r}: the error message contains the prompt")
        if elapsed > DEADLINE + TIMEOUT + 1.5:
            tally.problem(f"{prompt!r}: failed after {elapsed:.2f}s, deadline {DEADLINE}s")
        tally.count("all-tiers-failed")
    elif isinstance(exc, CLIENT_ERRORS):
        tally.count("client-error")
    else:
        tally.problem(f"{prompt!r}: unexpected {type(exc).__name__}: {exc}")
        tally.count("unexpected")


# --------------------------------------------------------------------------------------------
# afterwards: cache, breakers, threads, connections
# --------------------------------------------------------------------------------------------


VALID_TRANSITIONS = frozenset(
    {("closed", "open"), ("open", "half-open"), ("half-open", "closed"), ("half-open", "open")}
)


class BreakerLog:
    """A listener recording breaker transitions and failed attempts per tier."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.transitions: list[tuple[str, str, str]] = []
        self.failures: Counter[str] = Counter()
        self.probes: Counter[str] = Counter()

    def on_attempt_start(self, event: Any) -> None:
        if event.probe:
            with self.lock:
                self.probes[event.tier] += 1

    def on_breaker_change(self, event: Any) -> None:
        with self.lock:
            self.transitions.append((event.tier, event.old, event.new))

    def on_attempt_end(self, event: Any) -> None:
        if event.outcome == "failure":
            with self.lock:
                self.failures[event.tier] += 1


def check_cache(chain: Any, server: FaultServer, model: str) -> list[str]:
    problems = []
    keys = {chain.cache_key(user(p)): p for p in PROMPTS}
    rows = list(chain.cache.export_rows())
    for row in rows:
        finish = [c.finish_reason for c in row.completion.choices]
        if not finish or any(f not in COMPLETE for f in finish):
            problems.append(f"cache row {row.key[:12]} is incomplete: {finish}")
        prompt = keys.get(row.key)
        if prompt is None:
            problems.append(f"cache row {row.key[:12]} is for no prompt of this soak")
        elif row.completion.choices[0].message.content != server.answer_for(user(prompt), model):
            problems.append(f"cache row for {prompt!r} is not the whole answer")
    for key, prompt in keys.items():
        cached = chain.cache.get(key)
        if cached is not None and cached.completion.choices[0].finish_reason not in COMPLETE:
            problems.append(f"cache serves an incomplete answer for {prompt!r}")
    return problems


def check_breakers(chain: Any, log: BreakerLog, concurrency: int) -> list[str]:
    """Breaker counters and states agree with what the listener saw.

    ``fail_counter`` counts consecutive failed attempts. A closed breaker holds fewer than
    ``fail_max``. Above ``fail_max`` it can only go through attempts already running when the
    breaker opened (at most ``concurrency - 1`` more) and failed half-open probes, each of
    which is counted too (pybreaker's own semantics); nothing else may push it higher.
    """
    problems = []
    fail_max = chain.config.breaker.fail_max
    for tier, old, new in log.transitions:
        if (old, new) not in VALID_TRANSITIONS:
            problems.append(f"{tier}: invalid breaker transition {old} -> {new}")
    for name, gate in chain.breakers.items():
        state, counter = gate.state, gate.fail_counter
        if state == "closed" and counter >= fail_max:
            problems.append(f"{name}: closed with {counter} >= fail_max {fail_max} failures")
        if counter > log.failures[name]:
            problems.append(f"{name}: counter {counter} > {log.failures[name]} failures seen")
        bound = fail_max + (concurrency - 1) + log.probes[name]
        if counter > bound:
            problems.append(f"{name}: fail counter {counter} > {bound} ({state})")
        opened = [t for t in log.transitions if t[0] == name and t[2] == "open"]
        if state != "closed" and not opened:
            problems.append(f"{name}: {state} but it never opened")
    return problems


def wait_for_threads(baseline: set[int], timeout: float = 5.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        extra = [t for t in threading.enumerate() if t.ident not in baseline and t.is_alive()]
        if not extra:
            return []
        time.sleep(0.05)
    return [t.name for t in extra]


def push_schedule(server: FaultServer, rng: random.Random, n: int) -> int:
    """Queue ``n`` seeded faults (consumed by attempts in arrival order); client faults queued."""
    client_faults = 0
    for _ in range(n):
        fault = random_fault(rng)
        client_faults += is_client_fault(fault)
        server.push(fault, stream=rng.choice([None, None, True, False]))
    return client_faults


def settle_and_check(
    chain: Any, server: FaultServer, log: BreakerLog, model: str, concurrency: int
) -> list[str]:
    server.clear()  # no fault left queued for whatever comes next
    return check_cache(chain, server, model) + check_breakers(chain, log, concurrency)


# --------------------------------------------------------------------------------------------
# the soak, threads
# --------------------------------------------------------------------------------------------


def test_soak_threads(fresh: FaultServer, tmp_path: Path) -> None:
    server = fresh
    rng = random.Random(SEED)
    config = soak_config(tmp_path, server.base_url)
    model = config.openai.model
    baseline_threads = {t.ident for t in threading.enumerate()}
    client_faults = push_schedule(server, rng, REQUESTS_PER_MODE * 2)
    plan = [(rng.choice(PROMPTS), rng.random() < 0.04) for _ in range(REQUESTS_PER_MODE)]
    tally = Tally()
    log = BreakerLog()
    gc.collect()  # earlier tests' garbage warns when collected: not this soak's leak
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-soak")
        chain = FallbackChain(config, client=client, listeners=[log])

        began = time.monotonic()

        def one(index: int, prompt: str, close_early: bool) -> None:
            time.sleep(max(0.0, began + index * SPREAD / len(plan) - time.monotonic()))
            start = time.monotonic()
            events: list[Any] = []
            try:
                with chain.stream(user(prompt)) as stream:
                    for event in stream:
                        events.append(event)
                        if close_early and len(events) == 2:
                            break
                    if close_early and len(events) == 2:
                        tally.count("closed-early")
                        return
                    response = stream.response
            except Exception as exc:
                check_failure(tally, prompt, exc, time.monotonic() - start)
                return
            elapsed = time.monotonic() - start
            tally.count("response", response.source)
            check_response(tally, server, model, prompt, events, response, elapsed)

        with ThreadPoolExecutor(max_workers=THREADS, thread_name_prefix="soak") as pool:
            for future in [pool.submit(one, i, p, e) for i, (p, e) in enumerate(plan)]:
                future.result()
        problems = settle_and_check(chain, server, log, model, THREADS)
        chain.close()
        client.close()
        gc.collect()
    assert server.wait_idle(5.0), "a connection is still being served"
    assert server.counts["active"] == 0
    leaked = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaked, [str(w.message) for w in leaked[:5]]
    assert not wait_for_threads(baseline_threads), "threads left behind"
    assert not tally.problems, tally.problems
    assert not problems, problems
    assert tally.outcomes["client-error"] <= client_faults
    assert tally.outcomes["unexpected"] == 0
    total = sum(tally.outcomes.values())
    assert total == REQUESTS_PER_MODE
    assert kinds_met(server) == ALL_KINDS, ALL_KINDS - kinds_met(server)
    # the faults did bite, and the chain still answered nearly everything
    assert tally.sources["stream"] > 0
    assert tally.sources["completion"] + tally.sources["cache"] > 0
    assert tally.outcomes["response"] >= 0.8 * REQUESTS_PER_MODE, tally.outcomes


# --------------------------------------------------------------------------------------------
# the soak, asyncio tasks
# --------------------------------------------------------------------------------------------


def test_soak_tasks(fresh: FaultServer, tmp_path: Path) -> None:
    server = fresh
    rng = random.Random(SEED + 1)
    config = soak_config(tmp_path, server.base_url)
    model = config.openai.model
    baseline_threads = {t.ident for t in threading.enumerate()}
    client_faults = push_schedule(server, rng, REQUESTS_PER_MODE * 2)
    plan = [
        (rng.choice(PROMPTS), rng.choices(["normal", "close", "cancel"], [92, 4, 4])[0])
        for _ in range(REQUESTS_PER_MODE)
    ]
    tally = Tally()
    log = BreakerLog()
    leftover_tasks: list[str] = []

    async def main() -> list[str]:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-soak")
        chain = AsyncFallbackChain(config, client=client, listeners=[log])
        gate = asyncio.Semaphore(TASKS)

        async def consume(prompt: str, how: str) -> None:
            start = time.monotonic()
            events: list[Any] = []
            async with chain.stream(user(prompt)) as stream:
                async for event in stream:
                    events.append(event)
                    if how == "close" and len(events) == 2:
                        tally.count("closed-early")
                        return
            elapsed = time.monotonic() - start
            tally.count("response", stream.response.source)
            check_response(tally, server, model, prompt, events, stream.response, elapsed)

        began = time.monotonic()

        async def one(index: int, prompt: str, how: str) -> None:
            await asyncio.sleep(max(0.0, began + index * SPREAD / len(plan) - time.monotonic()))
            async with gate:
                start = time.monotonic()
                try:
                    if how == "cancel":
                        with contextlib.suppress(TimeoutError):
                            async with asyncio.timeout(rng_cancel.uniform(0.0005, 0.02)):
                                await consume(prompt, how)
                                return
                        tally.count("cancelled")
                        return
                    await consume(prompt, how)
                except Exception as exc:
                    check_failure(tally, prompt, exc, time.monotonic() - start)

        rng_cancel = random.Random(SEED + 2)
        await asyncio.gather(*(one(i, p, how) for i, (p, how) in enumerate(plan)))
        problems = settle_and_check(chain, server, log, model, TASKS)
        await chain.aclose()
        await client.close()
        current = asyncio.current_task()
        leftover_tasks.extend(
            repr(t) for t in asyncio.all_tasks() if t is not current and not t.done()
        )
        return problems

    gc.collect()  # earlier tests' garbage warns when collected: not this soak's leak
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        problems = asyncio.run(main())
        gc.collect()
    assert not leftover_tasks, leftover_tasks[:5]
    assert server.wait_idle(5.0), "a connection is still being served"
    assert server.counts["active"] == 0
    leaked = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaked, [str(w.message) for w in leaked[:5]]
    assert not wait_for_threads(baseline_threads), "threads left behind"
    assert not tally.problems, tally.problems
    assert not problems, problems
    assert tally.outcomes["client-error"] <= client_faults
    assert tally.outcomes["unexpected"] == 0
    # a "cancel" request that finished before its timeout was counted as what it ended with
    assert sum(tally.outcomes.values()) == REQUESTS_PER_MODE
    assert kinds_met(server) == ALL_KINDS, ALL_KINDS - kinds_met(server)
    assert tally.sources["stream"] > 0
    assert tally.sources["completion"] + tally.sources["cache"] > 0


# --------------------------------------------------------------------------------------------
# hypothesis: fault schedules, one request at a time, on a fake clock
# --------------------------------------------------------------------------------------------

_fault_choices = st.sampled_from(
    [
        Fault.ok(),
        Fault.status(503),
        Fault.status(500),
        Fault.status(429, retry_after=0.5),
        Fault.status(429, retry_after=60),
        Fault.status(503, should_retry=False),
        Fault.status(429, error_code="insufficient_quota", error_type="insufficient_quota"),
        Fault.status(400),
        Fault.status(422),
        Fault.reset(),
        Fault.finish("content_filter"),
        Fault.finish("length"),
    ]
)


@st.composite
def fault_values(draw: st.DrawFn) -> Fault:
    kind = draw(st.sampled_from(["fixed", "mid", "mid", "timing"]))
    if kind == "fixed":
        return draw(_fault_choices)
    after = draw(st.integers(min_value=0, max_value=WORDS + 1))
    if kind == "mid":
        make = draw(st.sampled_from([Fault.drop, Fault.early_end, Fault.sse_error, Fault.malformed]))
        return make(after_chunks=after)
    # real waits: rare, kept short (the timeouts are 0.2 s)
    return draw(
        st.sampled_from(
            [
                Fault.stall(after_chunks=after, seconds=TIMEOUT * 2),
                Fault.slow_first_byte(TIMEOUT * 2),
            ]
        )
    )


schedules = st.lists(
    st.tuples(
        st.sampled_from(PROMPTS[:4]),
        st.lists(st.tuples(fault_values(), st.sampled_from([None, True, False])), max_size=7),
    ),
    min_size=1,
    max_size=4,
)


@pytest.mark.parametrize("mode", ["sync", "async"])
@settings(
    max_examples=400 if LONG else 30,
    deadline=None,
    derandomize=not LONG,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(schedule=schedules)
def test_fault_schedules_keep_every_promise(
    soak_server: FaultServer, mode: str, schedule: list[Any]
) -> None:
    """Each request under its own scripted faults: the per-request promises, exactly counted."""
    server = soak_server
    server.clear()
    server.wait_idle(5.0)
    clock = FakeClock()
    tally = Tally()
    log = BreakerLog()
    with tempfile.TemporaryDirectory() as tmp:
        config = soak_config(Path(tmp), server.base_url)
        model = config.openai.model
        loop = asyncio.new_event_loop() if mode == "async" else None
        if mode == "sync":
            client: Any = openai.OpenAI(base_url=server.base_url, api_key="sk-soak")
            chain: Any = FallbackChain(
                config, client=client, clock=clock, sleep=clock.sleep, listeners=[log]
            )
        else:
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-soak")
            chain = AsyncFallbackChain(
                config, client=client, clock=clock, sleep=clock.async_sleep, listeners=[log]
            )

        def ask(prompt: str) -> tuple[list[Any], Any]:
            if loop is None:
                with chain.stream(user(prompt)) as stream:
                    return list(stream), stream.response

            async def go() -> tuple[list[Any], Any]:
                async with chain.stream(user(prompt)) as stream:
                    return [e async for e in stream], stream.response

            return loop.run_until_complete(go())

        try:
            for prompt, faults in schedule:
                server.clear()
                for fault, stream in faults:
                    server.push(fault, stream=stream)
                before = server.counts["total"]
                start = time.monotonic()
                failure: Exception | None = None
                try:
                    events, response = ask(prompt)
                except Exception as exc:
                    failure = exc
                if failure is not None:
                    check_failure(tally, prompt, failure, time.monotonic() - start)
                    made = server.counts["total"] - before
                    if isinstance(failure, AllTiersFailedError):
                        sent = [
                            a
                            for a in failure.attempts
                            if not isinstance(a.exception, BreakerOpenError)
                        ]
                        assert made == len(sent), (made, failure.attempts)
                    else:
                        assert made >= 1
                    continue
                check_response(
                    tally, server, model, prompt, events, response, time.monotonic() - start
                )
                sent = [
                    a for a in response.attempts if not isinstance(a.exception, BreakerOpenError)
                ]
                # every attempt listed (and only those) reached the API, exactly once
                assert server.counts["total"] - before == len(sent), response.attempts
                clock.advance(1.0)  # breakers may reach their half-open time between requests
            problems = settle_and_check(chain, server, log, model, 1)
        finally:
            if loop is None:
                chain.close()
                client.close()
            else:
                loop.run_until_complete(chain.aclose())
                loop.run_until_complete(client.close())
                loop.close()
    assert server.wait_idle(5.0)
    assert not tally.problems, tally.problems
    assert not problems, problems
    assert tally.outcomes["unexpected"] == 0
