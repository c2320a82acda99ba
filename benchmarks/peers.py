"""Peers: fallbackchain next to what users would pick instead, on the same scenarios.

Four contenders, each configured as its own documentation advises:

* **raw SDK**: ``openai.OpenAI(max_retries=2, timeout=30)`` (the SDK's retries, its default count;
  the default 600-s timeout shortened to 30 s, as ``failover.py`` does). No fallback, no cache.
* **tenacity**: the OpenAI cookbook's retry decorator, ``@retry(wait=wait_random_exponential(min=1,
  max=60), stop=stop_after_attempt(6))`` (any exception retried), on a function that makes the
  streamed call and reads it to the end, with a client whose own retries are off
  (``max_retries=0, timeout=30``). (The cookbook wraps ``create()`` alone; for a stream that
  would leave a mid-stream drop unretried, exactly as with the raw SDK.) No fallback, no cache.
* **LiteLLM Router**: a ``primary`` and a ``backup`` model group (one deployment each, two
  servers), ``fallbacks=[{"primary": ["backup"]}]``, ``num_retries=2``, ``timeout=30``,
  ``stream_timeout=10``; cooldowns, allowed fails and mid-stream continuation left at their
  defaults. No response cache (LiteLLM's is cache-first, not a fallback).
* **fallbackchain**: ``config/fallbackchain.toml`` (the production defaults: first-token and
  idle timeouts 10 s, 3 attempts per route, fail_max 5, reset_timeout 30 s) with one
  ``[[fallbacks]]`` entry on the backup server; the drop-in ``chat.completions.create``.

Scenarios (all against ``fallbackchain.testing.FaultServer`` on loopback; 300-word answers):

1. healthy streaming: throughput and client CPU per answer (the server in its own process so only
   the client's CPU is counted), interleaved rounds;
2. a mid-stream drop (TCP abort after 150 words) and a clean early end without ``finish_reason``
   after 150 words: text shown twice, truncated answers accepted as complete;
3. a 429 with ``Retry-After: 2`` (every request to the primary is limited for 2 s): requests the
   limited route received, time to a complete answer;
4. a full outage (both servers answer 503 for 30 s, 20 requests/s, prompts answered before):
   upstream requests, answers given, p50/p99 time to answer or error;
5. a silent primary (headers, then nothing): time to a complete answer, cut off at 125 s.

Everything runs in real time (no peer sees a fake clock). Results are also given as ratios to the
raw SDK; ``benchmarks/peers.md`` gets the markdown table. Needs the optional extra
``pip install -e '.[peers]'``; without it this prints what is missing and exits 0.

    .venv/bin/python benchmarks/peers.py            # ~10-13 minutes
    .venv/bin/python benchmarks/peers.py --quick    # ~6 minutes, outage compressed to 6 s
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import openai
from _common import API_KEY, MODEL, machine_info, percentile, production_config, server_process

from fallbackchain import FallbackChain, FallbackConfig
from fallbackchain.testing import Fault, FaultServer

PEERS = ("litellm", "tenacity")
OUT = Path(__file__).resolve().parent / "peers.md"


def missing_peers() -> list[str]:
    """The packages of the ``peers`` extra that are not installed."""
    missing = []
    for name in PEERS:
        try:
            found = importlib.util.find_spec(name) is not None
        except ValueError:  # sys.modules[name] is None: an import of it is blocked
            found = False
        if not found:
            missing.append(name)
    return missing


BACKUP_MODEL = "gpt-4o"  # the backup answers "Answer from gpt-4o: ...", so who answered shows
KEY_ENV = "FALLBACKCHAIN_BENCH_API_KEY"
WORDS = 300
SDK_TIMEOUT = 30.0
CONTENDERS = ("raw SDK", "tenacity", "LiteLLM Router", "fallbackchain")
RATE = 20.0
SILENT_CAP = 125.0

OnText = Callable[[str], None]


def user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


# --------------------------------------------------------------------------------------------
# the contenders: ask(prompt, on_text) streams one answer, calling on_text with every piece of
# text the consumer is shown, and returns the answer (or raises whatever the caller would get)
# --------------------------------------------------------------------------------------------


def _deltas(stream: Any, on_text: OnText) -> str:
    parts: list[str] = []
    for chunk in stream:
        if chunk.choices:
            text = chunk.choices[0].delta.content
            if text:
                on_text(text)
                parts.append(text)
    return "".join(parts)


@dataclass
class Contender:
    name: str
    ask: Callable[[str, OnText], str]
    close: Callable[[], None]


def raw_sdk(primary: str) -> Contender:
    client = openai.OpenAI(base_url=primary, api_key=API_KEY, max_retries=2, timeout=SDK_TIMEOUT)

    def ask(prompt: str, on_text: OnText) -> str:
        stream = client.chat.completions.create(model=MODEL, messages=user(prompt), stream=True)  # type: ignore[arg-type]
        with stream:
            return _deltas(stream, on_text)

    return Contender("raw SDK", ask, client.close)


def tenacity_client(primary: str) -> Contender:
    # Imported here: the extra is optional, and main() says what is missing first.
    from tenacity import retry, stop_after_attempt, wait_random_exponential  # noqa: PLC0415

    client = openai.OpenAI(base_url=primary, api_key=API_KEY, max_retries=0, timeout=SDK_TIMEOUT)

    # The OpenAI cookbook's decorator ("How to handle rate limits"). The cookbook wraps create()
    # alone; for a stream that retries nothing once the headers came, so the whole read is
    # wrapped, as a user who wants a dropped stream retried writes it.
    @retry(wait=wait_random_exponential(min=1, max=60), stop=stop_after_attempt(6))
    def ask(prompt: str, on_text: OnText) -> str:
        stream = client.chat.completions.create(model=MODEL, messages=user(prompt), stream=True)  # type: ignore[arg-type]
        with stream:
            return _deltas(stream, on_text)

    return Contender("tenacity", ask, client.close)


def _quiet_litellm() -> Any:
    # No model-cost map fetched from the network at import (there is none here), no banners.
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm  # noqa: PLC0415 (optional, and after the environment variable)

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    for name in ("LiteLLM", "LiteLLM Router", "LiteLLM Proxy", "litellm"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
    return litellm


def litellm_router(primary: str, backup: str) -> Contender:
    litellm = _quiet_litellm()

    def deployment(group: str, model: str, base_url: str) -> dict[str, Any]:
        params = {"model": f"openai/{model}", "api_base": base_url, "api_key": API_KEY}
        return {"model_name": group, "litellm_params": params}

    router = litellm.Router(
        model_list=[
            deployment("primary", MODEL, primary),
            deployment("backup", BACKUP_MODEL, backup),
        ],
        fallbacks=[{"primary": ["backup"]}],
        num_retries=2,
        timeout=SDK_TIMEOUT,
        stream_timeout=10.0,
    )

    def ask(prompt: str, on_text: OnText) -> str:
        return _deltas(
            router.completion(model="primary", messages=user(prompt), stream=True), on_text
        )

    def close() -> None:
        pass  # the Router has nothing to release that outlives the process

    return Contender("LiteLLM Router", ask, close)


def fallback_chain(
    primary: str,
    backup: str,
    cache_dir: Path,
    *,
    reset_timeout: float | None = None,
) -> Contender:
    shutil.rmtree(cache_dir, ignore_errors=True)
    overrides: dict[str, Any] = {"openai__api_key_env": KEY_ENV}
    if reset_timeout is not None:
        overrides["breaker__reset_timeout"] = reset_timeout
    config = production_config(primary, cache_dir, **overrides)
    config = dataclasses.replace(
        config, fallbacks=(FallbackConfig(name="backup", model=BACKUP_MODEL, base_url=backup),)
    )
    chain = FallbackChain(config)

    def ask(prompt: str, on_text: OnText) -> str:
        stream = chain.chat.completions.create(model=MODEL, messages=user(prompt), stream=True)  # type: ignore[arg-type]
        with stream:
            return _deltas(stream, on_text)

    return Contender("fallbackchain", ask, chain.close)


def make(name: str, primary: str, backup: str, scratch: Path, **chain_options: Any) -> Contender:
    if name == "raw SDK":
        return raw_sdk(primary)
    if name == "tenacity":
        return tenacity_client(primary)
    if name == "LiteLLM Router":
        return litellm_router(primary, backup)
    return fallback_chain(primary, backup, scratch / "cache", **chain_options)


@contextmanager
def servers() -> Iterator[tuple[FaultServer, FaultServer]]:
    with FaultServer(words=WORDS) as primary, FaultServer(words=WORDS) as backup:
        yield primary, backup


# --------------------------------------------------------------------------------------------
# one request, as the consumer sees it
# --------------------------------------------------------------------------------------------


@dataclass
class Seen:
    seconds: float
    shown: str = ""
    text: str | None = None  # what the call returned; None when it raised
    error: str = ""
    primary_requests: int = 0
    upstream: int = 0

    def answered_by(self) -> str:
        if self.text is None:
            return "error"
        if self.text.startswith(f"Answer from {BACKUP_MODEL}:"):
            return "backup"
        return "primary"


def ask_once(
    contender: Contender, prompt: str, primary: FaultServer, backup: FaultServer
) -> tuple[Seen, str, str]:
    """One streamed request; returns what was seen and the two complete answers it could be."""
    pieces: list[str] = []
    before_p, before_b = primary.counts["total"], backup.counts["total"]
    start = time.perf_counter()
    try:
        text: str | None = contender.ask(prompt, pieces.append)
        error = ""
    except Exception as exc:
        text, error = None, type(exc).__name__
    seen = Seen(time.perf_counter() - start, "".join(pieces), text, error)
    seen.primary_requests = primary.counts["total"] - before_p
    seen.upstream = seen.primary_requests + backup.counts["total"] - before_b
    return (
        seen,
        primary.answer_for(user(prompt), MODEL),
        backup.answer_for(user(prompt), BACKUP_MODEL),
    )


def _complete(seen: Seen, expected: tuple[str, str]) -> bool:
    return seen.text is not None and seen.text in expected


def _duplicated(seen: Seen, expected: tuple[str, str]) -> int:
    """Characters shown beyond the answer: text the consumer was shown more than once."""
    longest = max(len(e) for e in expected)
    final = seen.text if seen.text in expected else None
    return max(0, len(seen.shown) - len(final if final is not None else seen.shown[:longest]))


# --------------------------------------------------------------------------------------------
# scenarios
# --------------------------------------------------------------------------------------------


@dataclass
class Results:
    quick: bool
    healthy: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    healthy_n: int = 0
    faults: dict[str, dict[str, list[Seen]]] = field(default_factory=dict)
    expected_ok: dict[str, dict[str, list[bool]]] = field(default_factory=dict)
    duplicated: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    outage: dict[str, dict[str, Any]] = field(default_factory=dict)
    outage_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)


def healthy(results: Results, scratch: Path) -> None:
    n = 8 if results.quick else 20
    rounds = 3 if results.quick else 7
    results.healthy_n = n
    with server_process(words=WORDS) as base_url:
        contenders = [make(name, base_url, base_url, scratch / "healthy") for name in CONTENDERS]
        try:
            expected = ""
            for contender in contenders:  # warm-up: connections, imports, schemas, sqlite pages
                for i in range(3):
                    text = contender.ask(f"healthy warm-up {i}", lambda _: None)
                    expected = expected or text
                    assert text == expected or i, (contender.name, text[:40])
            times: dict[str, list[tuple[float, float]]] = {c.name: [] for c in contenders}
            for r in range(rounds):  # interleaved: drift and other jobs hit every contender alike
                for contender in contenders:
                    wall, cpu = time.perf_counter(), time.process_time()
                    for i in range(n):
                        contender.ask(f"healthy prompt {r}-{i}", lambda _: None)
                    times[contender.name].append(
                        (time.perf_counter() - wall, time.process_time() - cpu)
                    )
        finally:
            for contender in contenders:
                contender.close()
    results.healthy = times


def _record(
    results: Results, scenario: str, name: str, seen: Seen, expected: tuple[str, str]
) -> None:
    results.faults.setdefault(scenario, {}).setdefault(name, []).append(seen)
    results.expected_ok.setdefault(scenario, {}).setdefault(name, []).append(
        _complete(seen, expected)
    )
    results.duplicated.setdefault(scenario, {}).setdefault(name, []).append(
        _duplicated(seen, expected)
    )


def mid_stream(results: Results, scratch: Path) -> None:
    rounds = 2 if results.quick else 3
    kinds = {
        "drop": Fault.drop(after_chunks=WORDS // 2),
        "early end": Fault.early_end(after_chunks=WORDS // 2),
    }
    with servers() as (primary, backup):
        contenders = [
            make(name, primary.base_url, backup.base_url, scratch / "mid") for name in CONTENDERS
        ]
        try:
            for contender in contenders:
                contender.ask("mid-stream warm-up", lambda _: None)
            for r in range(rounds):
                for label, fault in kinds.items():
                    for contender in contenders:
                        primary.clear()
                        primary.push(fault, stream=True)
                        seen, *expected = ask_once(contender, f"mid {label} {r}", primary, backup)
                        _record(results, label, contender.name, seen, (expected[0], expected[1]))
                        primary.wait_idle(5.0)
        finally:
            for contender in contenders:
                contender.close()


def rate_limited(results: Results, scratch: Path) -> None:
    rounds = 2 if results.quick else 3
    window = 2.0
    with servers() as (primary, backup):
        contenders = [
            make(name, primary.base_url, backup.base_url, scratch / "429") for name in CONTENDERS
        ]
        try:
            for contender in contenders:
                contender.ask("429 warm-up", lambda _: None)
            for r in range(rounds):
                for contender in contenders:
                    # Every request in the next 2 s is limited, each told Retry-After: 2.
                    primary.clear()
                    primary.default = Fault.status(429, retry_after=window)
                    lift = threading.Timer(window, primary.clear)
                    lift.start()
                    seen, *expected = ask_once(contender, f"429 prompt {r}", primary, backup)
                    lift.join()
                    _record(results, "429", contender.name, seen, (expected[0], expected[1]))
                    time.sleep(6.0)  # past LiteLLM's 5-s cooldown: every round starts fresh
        finally:
            for contender in contenders:
                contender.close()


@dataclass
class Due:
    due: float
    done: float = 0.0
    answered: bool = False


def _outage_one(name: str, scratch: Path, duration: float, quick: bool) -> dict[str, Any]:
    prompts = [f"outage prompt {i}" for i in range(50)]
    with servers() as (primary, backup):
        options = {"reset_timeout": 3.0} if quick and name == "fallbackchain" else {}
        contender = make(name, primary.base_url, backup.base_url, scratch / "outage", **options)
        try:
            for prompt in prompts:  # answered before: fallbackchain's cache holds them
                contender.ask(prompt, lambda _: None)
            if name == "fallbackchain":
                time.sleep(1.0)  # the write-behind cache writer has flushed
            outcomes: list[Due] = []

            def one(index: int, outcome: Due) -> None:
                try:
                    contender.ask(prompts[index % len(prompts)], lambda _: None)
                    outcome.answered = True
                except Exception:
                    pass
                outcome.done = time.perf_counter()

            before = primary.counts["total"] + backup.counts["total"]
            primary.default = backup.default = Fault.status(503)
            start = time.perf_counter()
            end = start + duration
            upstream: list[int] = []

            def recover() -> None:
                time.sleep(max(0.0, end - time.perf_counter()))
                upstream.append(primary.counts["total"] + backup.counts["total"] - before)
                primary.default = backup.default = Fault.ok()

            cpu = time.process_time()
            restorer = threading.Thread(target=recover, name="outage-end")
            restorer.start()
            with ThreadPoolExecutor(max_workers=700, thread_name_prefix="peers") as pool:
                index = 0
                while (due := start + index / RATE) < end:
                    time.sleep(max(0.0, due - time.perf_counter()))
                    outcome = Due(due)
                    outcomes.append(outcome)
                    pool.submit(one, index, outcome)
                    index += 1
            restorer.join()
            cpu = time.process_time() - cpu
        finally:
            contender.close()
    latencies = [o.done - o.due for o in outcomes]
    return {
        "requests": len(outcomes),
        "upstream": upstream[0],
        "answered_during": sum(o.answered and o.done < end for o in outcomes),
        "answered": sum(o.answered for o in outcomes),
        "p50": percentile(latencies, 50),
        "p99": percentile(latencies, 99),
        "cpu": cpu,
    }


def outage(results: Results, scratch: Path) -> None:
    duration = 6.0 if results.quick else 30.0
    results.outage_seconds = duration
    os.environ.setdefault(KEY_ENV, API_KEY)
    for name in CONTENDERS:  # one after another: a contender's CPU never slows another's
        results.outage[name] = _outage_one(name, scratch / name, duration, results.quick)


SILENCES = {
    "silent": Fault.slow_first_byte(seconds=600.0),  # not even the response headers
    "silent after headers": Fault.stall(after_chunks=0, seconds=600.0),  # 200, then nothing
}


def silent(results: Results, scratch: Path) -> None:
    """Both kinds of silence, all four contenders at once, each with its own servers: the
    waits are timeouts, not CPU. The primary's warm-up request is not counted."""
    runs: dict[tuple[str, str], tuple[Seen, str, str]] = {}

    def one(key: tuple[str, str], primary: FaultServer, backup: FaultServer, c: Contender) -> None:
        runs[key] = ask_once(c, "silent prompt", primary, backup)

    started: list[tuple[tuple[str, str], FaultServer, FaultServer, Contender, threading.Thread]]
    started = []
    for kind, fault in SILENCES.items():
        for name in CONTENDERS:
            primary = FaultServer(words=WORDS).start()
            backup = FaultServer(words=WORDS).start()
            directory = scratch / f"{kind}-{name}"
            contender = make(name, primary.base_url, backup.base_url, directory)
            contender.ask("silent warm-up", lambda _: None)
            primary.default = fault
            key = (kind, name)
            thread = threading.Thread(
                target=one, args=(key, primary, backup, contender), daemon=True, name=name
            )
            started.append((key, primary, backup, contender, thread))
    start = time.perf_counter()
    for *_, thread in started:
        thread.start()
    for key, primary, _backup, _contender, thread in started:
        thread.join(max(0.0, start + SILENT_CAP - time.perf_counter()))
        if key not in runs:
            seen = Seen(SILENT_CAP, error="cut off")
            seen.primary_requests = primary.counts["total"] - 1
            runs[key] = (seen, "", "")
    for key, primary, backup, contender, _ in started:
        primary.stop()
        backup.stop()
        contender.close()
        seen, expected_p, expected_b = runs[key]
        _record(results, key[0], key[1], seen, (expected_p, expected_b))


# --------------------------------------------------------------------------------------------
# the table
# --------------------------------------------------------------------------------------------


def _med(values: list[float]) -> float:
    return percentile(values, 50)


def _ratio(value: float, raw: float) -> str:
    if raw == 0 or value != value or raw != raw:
        return ""
    ratio = value / raw
    return f" ({ratio:.2f}x)" if ratio >= 0.1 else f" ({ratio:.2g}x)"


def _fmt_s(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} µs"
    if seconds < 1.0:
        return f"{seconds * 1e3:.1f} ms"
    return f"{seconds:.2f} s"


def _cells(values: dict[str, str]) -> str:
    return " | ".join(values[name] for name in CONTENDERS)


def table(results: Results) -> list[str]:
    head = "| scenario | " + " | ".join(CONTENDERS) + " |"
    lines = [head, "|---|" + "---|" * len(CONTENDERS)]

    def row(label: str, values: dict[str, str]) -> None:
        lines.append(f"| {label} | {_cells(values)} |")

    if results.healthy:
        n = results.healthy_n
        wall = {k: _med([w for w, _ in v]) for k, v in results.healthy.items()}
        cpu = {k: _med([c for _, c in v]) for k, v in results.healthy.items()}
        raw_w, raw_c = wall["raw SDK"], cpu["raw SDK"]
        row(
            "healthy streaming: answers/s (ratio to raw)",
            {k: f"{n / wall[k]:.1f} ({raw_w / wall[k]:.2f}x)" for k in CONTENDERS},
        )
        row(
            "healthy streaming: client CPU per answer (ratio to raw)",
            {k: f"{_fmt_s(cpu[k] / n)}{_ratio(cpu[k], raw_c)}" for k in CONTENDERS},
        )
    for label, title in (
        ("drop", "mid-stream drop (TCP abort after 150 of 300 words)"),
        ("early end", "stream ends cleanly after 150 words, no finish_reason"),
    ):
        if label not in results.faults:
            continue
        seen = results.faults[label]
        ok = results.expected_ok[label]
        dup = results.duplicated[label]
        row(
            f"{title}: complete answers",
            {k: f"{sum(ok[k])} of {len(ok[k])}" for k in CONTENDERS},
        )
        row(
            f"{title}: what the caller got",
            {k: ", ".join(sorted({s.error or "an answer" for s in seen[k]})) for k in CONTENDERS},
        )
        row(
            f"{title}: characters shown twice (per request)",
            {k: f"{_med([float(d) for d in dup[k]]):.0f}" for k in CONTENDERS},
        )
        row(
            f"{title}: truncated answers returned as complete",
            {
                k: str(
                    sum(s.text is not None and not o for s, o in zip(seen[k], ok[k], strict=True))
                )
                for k in CONTENDERS
            },
        )
        raw_t = _med([s.seconds for s in seen["raw SDK"]])
        row(
            f"{title}: time to answer or error, median",
            {
                k: f"{_fmt_s(_med([s.seconds for s in seen[k]]))}"
                f"{_ratio(_med([s.seconds for s in seen[k]]), raw_t)}"
                for k in CONTENDERS
            },
        )
    if "429" in results.faults:
        seen = results.faults["429"]
        ok = results.expected_ok["429"]
        raw_t = _med([s.seconds for s in seen["raw SDK"]])
        row(
            "429 with Retry-After: 2 (limited for 2 s): complete answers (who answered)",
            {
                k: f"{sum(ok[k])} of {len(ok[k])} ("
                + ", ".join(sorted({s.answered_by() for s in seen[k]}))
                + ")"
                for k in CONTENDERS
            },
        )
        row(
            "429: requests the limited route received, median",
            {k: f"{_med([float(s.primary_requests) for s in seen[k]]):.0f}" for k in CONTENDERS},
        )
        row(
            "429: time to answer, median (ratio to raw)",
            {
                k: f"{_fmt_s(_med([s.seconds for s in seen[k]]))}"
                f"{_ratio(_med([s.seconds for s in seen[k]]), raw_t)}"
                for k in CONTENDERS
            },
        )
    if results.outage:
        out = results.outage
        secs = results.outage_seconds
        raw = out["raw SDK"]
        row(
            f"full outage, {secs:.0f} s of 503 on both servers at {RATE:.0f} req/s: "
            "upstream requests (ratio to raw)",
            {
                k: f"{out[k]['upstream']:,}{_ratio(out[k]['upstream'], raw['upstream'])}"
                for k in CONTENDERS
            },
        )
        row(
            "outage: answered during the outage / at all",
            {
                k: f"{out[k]['answered_during']} / {out[k]['answered']} of {out[k]['requests']}"
                for k in CONTENDERS
            },
        )
        row(
            "outage: client CPU, outage start to the last request's end (ratio to raw)",
            {k: f"{out[k]['cpu']:.1f} s{_ratio(out[k]['cpu'], raw['cpu'])}" for k in CONTENDERS},
        )
        for q in ("p50", "p99"):
            row(
                f"outage: time to answer or error, {q} (ratio to raw)",
                {k: f"{_fmt_s(out[k][q])}{_ratio(out[k][q], raw[q])}" for k in CONTENDERS},
            )
    for kind, title in (
        ("silent", "silent primary (no response headers): time to an answer"),
        (
            "silent after headers",
            "silent primary (200 and headers, then nothing): time to an answer",
        ),
    ):
        if kind not in results.faults:
            continue
        silence = results.faults[kind]
        raw_s = silence["raw SDK"][0].seconds

        def silent_cell(
            k: str, silence: dict[str, list[Seen]] = silence, raw_s: float = raw_s
        ) -> str:
            s = silence[k][0]
            if s.error == "cut off":
                return f"> {SILENT_CAP:.0f} s (no answer yet; {s.primary_requests} to primary)"
            what = s.answered_by() if s.text is not None else s.error
            return (
                f"{_fmt_s(s.seconds)}{_ratio(s.seconds, raw_s)}: {what}; "
                f"{s.primary_requests} to primary"
            )

        row(title, {k: silent_cell(k) for k in CONTENDERS})
    return lines


CONFIGS = {
    "raw SDK": "`openai.OpenAI(max_retries=2, timeout=30)`; no fallback, no cache",
    "tenacity": (
        "the OpenAI cookbook's `@retry(wait=wait_random_exponential(min=1, max=60), "
        "stop=stop_after_attempt(6))` on a function that makes the streamed call and reads it "
        "to the end (the cookbook wraps `create()` alone, which for a stream would leave a "
        "mid-stream drop unretried), with `openai.OpenAI(max_retries=0, timeout=30)`; "
        "no fallback, no cache"
    ),
    "LiteLLM Router": (
        '`Router(fallbacks=[{"primary": ["backup"]}], num_retries=2, timeout=30, '
        "stream_timeout=10)`, one deployment per group; cooldowns (5 s, 3 allowed fails) and "
        "mid-stream continuation at their defaults; no response cache"
    ),
    "fallbackchain": (
        "`config/fallbackchain.toml` (first-token and idle timeouts 10 s, 3 attempts per "
        "route, fail_max 5, reset_timeout 30 s, disk cache) plus one `[[fallbacks]]` entry "
        "on the backup server; the drop-in `chat.completions.create(stream=True)`"
    ),
}


def write(results: Results, versions: dict[str, str]) -> str:
    info = machine_info()
    load = os.getloadavg()
    lines = [
        "# Peers: fallbackchain next to what users would pick instead",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `benchmarks/peers.py`"
        f"{' --quick' if results.quick else ''}: {info['cpu']}, {info['cores']} cores "
        f"(shared with other jobs; load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}), "
        f"{info['memory']}, {info['os']}, Python {info['python']}, "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + f", commit {info['commit']}. One run; every scenario against the project's fault "
        "server on loopback, 300-word answers, streamed.",
        "",
        *table(results),
        "",
        "How each was configured (as its documentation advises):",
        "",
        *(f"- **{name}**: {text}." for name, text in CONFIGS.items()),
        "",
        "How each was measured:",
        "",
        "- Healthy: the server in its own process, so the CPU is the client's alone; "
        f"{len(next(iter(results.healthy.values()), []))} interleaved rounds of "
        f"{results.healthy_n} sequential answers per contender; medians.",
        "- Mid-stream faults and 429: the same request for each contender in turn, "
        'a few rounds; "shown twice" counts characters the consumer was given beyond the '
        "answer's length (a retry that replays the stream from the start); \"truncated returned "
        'as complete" is a call that returned normally with less than the whole answer. In the '
        "429 scenario every request to the primary gets 429 with `Retry-After: 2` until 2 s have "
        "passed; a round starts 6 s after the previous one (past LiteLLM's cooldown).",
        "- Outage: requests arrive open-loop at the given rate, each in its own thread; time "
        "from when a request was due to its answer or error. Prompts were answered once before "
        "(so fallbackchain's cache holds them; nobody else keeps answers). Contenders one after "
        "another, each with its own servers."
        + (" Compressed to 6 s (fallbackchain's reset_timeout 3 s)." if results.quick else ""),
        "- Silent primary: no byte for 600 s (not even the headers), or the headers and then "
        "nothing; all eight runs at once, each with its own servers; cut off at "
        f"{SILENT_CAP:.0f} s.",
        "- Real time throughout: no peer runs on a fake clock.",
        *results.notes,
        "",
    ]
    text = "\n".join(lines)
    OUT.write_text(text, encoding="utf-8")
    return text


SCENARIOS: dict[str, Callable[[Results, Path], None]] = {
    "healthy": healthy,
    "mid_stream": mid_stream,
    "429": rate_limited,
    "outage": outage,
    "silent": silent,
}


def main(argv: list[str] | None = None) -> int:
    missing = missing_peers()
    if missing:
        print(
            f"benchmarks/peers.py: skipped, not installed: {', '.join(missing)} "
            "(the optional extra: .venv/bin/pip install -e '.[peers]')"
        )
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else "")
    parser.add_argument("--quick", action="store_true", help="fewer rounds, a 6-s outage")
    parser.add_argument(
        "--only", default="", help=f"comma-separated subset of {', '.join(SCENARIOS)}"
    )
    args = parser.parse_args(argv)
    chosen = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    unknown = sorted(set(chosen) - set(SCENARIOS))
    if unknown:
        parser.error(f"unknown scenario(s): {', '.join(unknown)}")
    os.environ.setdefault(KEY_ENV, API_KEY)  # fallbackchain reads its key from the environment
    _quiet_litellm()
    versions = {name: version(name) for name in ("openai", *PEERS)}
    results = Results(quick=args.quick)
    with tempfile.TemporaryDirectory(prefix="peers-") as tmp:
        for name in chosen:
            began = time.perf_counter()
            print(f"peers: {name} ...", flush=True)
            SCENARIOS[name](results, Path(tmp) / name)
            print(f"peers: {name} done in {time.perf_counter() - began:.0f} s", flush=True)
    print(write(results, versions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
