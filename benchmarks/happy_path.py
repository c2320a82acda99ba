"""Happy-path overhead: ``chain.stream`` vs the raw openai client streaming the same answers.

The fault server runs in its own process (``python -m fallbackchain.testing --words 60``), so
the CPU time measured here (``time.process_time``, all threads of this process) is the
client's alone. Both contenders stream the very same requests (same prompts, same
``stream_options``) over the same connection pool, in alternating batches, so drift on the
machine hits both alike.

* sync: one thread, requests one after another;
* async: 200 concurrent streams per round on one event loop.

Reported: throughput ratio (chain / raw, content chunks per second), added time to first token
(p50 chain - p50 raw) and added CPU per content chunk ((CPU chain - CPU raw) / chunks).
A diagnostic row repeats the sync run with the cache disabled, to split the per-request
cache write from the per-chunk work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx2
import openai
from _common import (
    API_KEY,
    MODEL,
    Row,
    Section,
    Settings,
    fmt_time,
    median,
    percentile,
    production_config,
    server_process,
    user,
)
from openai.types.chat import ChatCompletionChunk

from fallbackchain import AsyncFallbackChain, FallbackChain

WORDS = 60
PROMPTS = [f"happy path prompt {i}" for i in range(100)]


@dataclass
class Batch:
    wall: float = 0.0
    cpu: float = 0.0
    chunks: int = 0
    requests: int = 0
    ttft: list[float] = field(default_factory=list)

    def add(self, other: Batch) -> None:
        self.wall += other.wall
        self.cpu += other.cpu
        self.chunks += other.chunks
        self.requests += other.requests
        self.ttft.extend(other.ttft)

    @property
    def throughput(self) -> float:
        return self.chunks / self.wall if self.wall else float("nan")


# --------------------------------------------------------------------------------------------
# one request, each way
# --------------------------------------------------------------------------------------------


def raw_sync(client: openai.OpenAI, prompt: str) -> tuple[float, int, str]:
    start = time.perf_counter()
    first = 0.0
    parts: list[str] = []
    with client.chat.completions.create(
        model=MODEL,
        messages=user(prompt),  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    ) as stream:
        for chunk in stream:
            if chunk.choices:
                content = chunk.choices[0].delta.content
                if content:
                    if not parts:
                        first = time.perf_counter()
                    parts.append(content)
    return first - start, len(parts), "".join(parts)


def chain_sync(chain: FallbackChain, prompt: str) -> tuple[float, int, str]:
    start = time.perf_counter()
    first = 0.0
    parts: list[str] = []
    with chain.stream(user(prompt)) as stream:
        for event in stream:
            if event.type == "reset":
                parts.clear()
                continue
            if event.type != "delta":
                continue
            if not parts:
                first = time.perf_counter()
            parts.append(event.text)
    return first - start, len(parts), "".join(parts)


def dropin_sync(chain: FallbackChain, prompt: str) -> tuple[float, int, str]:
    """The drop-in: the raw SDK's loop, unchanged, over ``chain.chat.completions.create``."""
    return raw_sync(chain, prompt)  # type: ignore[arg-type]  # the same code, as a user's


async def raw_async(client: openai.AsyncOpenAI, prompt: str) -> tuple[float, int, str]:
    start = time.perf_counter()
    first = 0.0
    parts: list[str] = []
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=user(prompt),  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    async with stream:
        async for chunk in stream:
            if chunk.choices:
                content = chunk.choices[0].delta.content
                if content:
                    if not parts:
                        first = time.perf_counter()
                    parts.append(content)
    return first - start, len(parts), "".join(parts)


async def chain_async(chain: AsyncFallbackChain, prompt: str) -> tuple[float, int, str]:
    start = time.perf_counter()
    first = 0.0
    parts: list[str] = []
    async with chain.stream(user(prompt)) as stream:
        async for event in stream:
            if event.type == "reset":
                parts.clear()
                continue
            if event.type != "delta":
                continue
            if not parts:
                first = time.perf_counter()
            parts.append(event.text)
    return first - start, len(parts), "".join(parts)


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------


def sync_batch(one: Callable[[str], tuple[float, int, str]], n: int, offset: int) -> Batch:
    batch = Batch()
    prompts = [PROMPTS[(offset + i) % len(PROMPTS)] for i in range(n)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for prompt in prompts:
        ttft, chunks, _ = one(prompt)
        batch.ttft.append(ttft)
        batch.chunks += chunks
    batch.wall = time.perf_counter() - wall0
    batch.cpu = time.process_time() - cpu0
    batch.requests = n
    return batch


async def async_batch(one: Callable[[str], Any], concurrency: int, offset: int) -> Batch:
    batch = Batch()
    prompts = [PROMPTS[(offset + i) % len(PROMPTS)] for i in range(concurrency)]
    cpu0, wall0 = time.process_time(), time.perf_counter()
    results = await asyncio.gather(*(one(p) for p in prompts))
    batch.wall = time.perf_counter() - wall0
    batch.cpu = time.process_time() - cpu0
    for ttft, chunks, _ in results:
        batch.ttft.append(ttft)
        batch.chunks += chunks
    batch.requests = concurrency
    return batch


def _interleaved(
    contenders: dict[str, Callable[[int], Batch]], rounds: int
) -> dict[str, list[Batch]]:
    """Run each contender once per round, rotating the order; every batch, per contender."""
    batches: dict[str, list[Batch]] = {name: [] for name in contenders}
    names = list(contenders)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            gc.collect()
            batches[name].append(contenders[name](r))
    return batches


def _total(batches: list[Batch]) -> Batch:
    total = Batch()
    for batch in batches:
        total.add(batch)
    return total


# --------------------------------------------------------------------------------------------
# the scenario
# --------------------------------------------------------------------------------------------


def _rows(label: str, batches: dict[str, list[Batch]], chain: str) -> list[Row]:
    """Ratios from paired rounds (same round, same prompts): medians, with their spread."""
    raw_b, chain_b = batches["raw"], batches[chain]
    raw, ch = _total(raw_b), _total(chain_b)
    ratios = [c.throughput / r.throughput for c, r in zip(chain_b, raw_b, strict=True)]
    cpu_diffs = [
        c.cpu / c.chunks - r.cpu / r.chunks for c, r in zip(chain_b, raw_b, strict=True)
    ]
    ratio = median(ratios)
    added_cpu = median(cpu_diffs)
    added_ttft = percentile(ch.ttft, 50) - percentile(raw.ttft, 50)
    spread = (
        f"IQR {percentile(cpu_diffs, 25) * 1e6:+.2f} … {percentile(cpu_diffs, 75) * 1e6:+.2f} µs"
    )
    return [
        Row(
            "happy path",
            f"{label}: throughput (content chunks/s)",
            f"{ch.throughput:,.0f}",
            f"{raw.throughput:,.0f}",
            f"{ratio:.3f}",
            "ratio ≥ 0.97",
            ratio >= 0.97,
            f"median of {len(ratios)} paired rounds; "
            f"range {min(ratios):.3f} … {max(ratios):.3f}",
        ),
        Row(
            "happy path",
            f"{label}: time to first token p50",
            fmt_time(percentile(ch.ttft, 50)),
            fmt_time(percentile(raw.ttft, 50)),
            f"{added_ttft * 1e3:+.3f} ms",
            "added ≤ 0.3 ms",
            added_ttft <= 0.3e-3,
            f"p99 {fmt_time(percentile(ch.ttft, 99))} vs {fmt_time(percentile(raw.ttft, 99))}",
        ),
        Row(
            "happy path",
            f"{label}: CPU per content chunk",
            fmt_time(ch.cpu / ch.chunks),
            fmt_time(raw.cpu / raw.chunks),
            f"{added_cpu * 1e6:+.2f} µs",
            "(end to end: the fixed cost per request / 60 included; see isolated)",
            None,
            f"median of {len(cpu_diffs)} paired rounds ({spread}); "
            f"{ch.requests} requests x {WORDS} chunks",
        ),
    ]


def _chart(batches: dict[str, list[Batch]]) -> dict[str, Any]:
    out = {}
    for name, runs in batches.items():
        total = _total(runs)
        out[name] = {"throughput": total.throughput, "cpu_per_chunk": total.cpu / total.chunks}
    return out


def run_sync(settings: Settings, base_url: str) -> tuple[list[Row], dict[str, Any]]:
    n = 40 if settings.quick else 100
    rounds = 3 if settings.quick else 21
    cache_dir = settings.scratch / "happy-sync-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    config = production_config(base_url, cache_dir)
    no_cache = dataclasses.replace(
        config, cache=dataclasses.replace(config.cache, enabled=False)
    )
    client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
    chain = FallbackChain(config, client=client)
    bare = FallbackChain(no_cache, client=client)
    try:
        # sanity: the same answers both ways
        for prompt in PROMPTS[:3]:
            assert raw_sync(client, prompt)[2] == chain_sync(chain, prompt)[2]
            assert raw_sync(client, prompt)[2] == dropin_sync(bare, prompt)[2]
        for _ in range(2):  # warm-up: connections, pydantic schemas, sqlite pages
            sync_batch(lambda p: raw_sync(client, p), 20, 0)
            sync_batch(lambda p: chain_sync(chain, p), 20, 0)
            sync_batch(lambda p: chain_sync(bare, p), 20, 0)
        batches = _interleaved(
            {
                "raw": lambda r: sync_batch(lambda p: raw_sync(client, p), n, r * n),
                "chain": lambda r: sync_batch(lambda p: chain_sync(chain, p), n, r * n),
                "chain-nocache": lambda r: sync_batch(lambda p: chain_sync(bare, p), n, r * n),
                "dropin": lambda r: sync_batch(lambda p: dropin_sync(chain, p), n, r * n),
            },
            rounds,
        )
    finally:
        chain.close()
        bare.close()
        client.close()
    rows = _rows("sync, sequential", batches, "chain")
    diag = _rows("sync, cache disabled (diagnostic)", batches, "chain-nocache")
    dropin = _rows("sync, drop-in stream (`chat.completions.create`)", batches, "dropin")
    for row in diag + dropin:
        row.met = None
        row.target = "(diagnostic)"
    return rows + diag + dropin, _chart(batches)


def run_async(settings: Settings, base_url: str) -> tuple[list[Row], dict[str, Any]]:
    concurrency = 200
    rounds = 3 if settings.quick else 11
    cache_dir = settings.scratch / "happy-async-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    config = production_config(base_url, cache_dir)

    async def main() -> dict[str, list[Batch]]:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=API_KEY, max_retries=0)
        chain = AsyncFallbackChain(config, client=client)
        try:
            assert (await raw_async(client, PROMPTS[0]))[2] == (
                await chain_async(chain, PROMPTS[0])
            )[2]
            for _ in range(2):
                await async_batch(lambda p: raw_async(client, p), concurrency, 0)
                await async_batch(lambda p: chain_async(chain, p), concurrency, 0)
            batches: dict[str, list[Batch]] = {"raw": [], "chain": []}
            for r in range(rounds):
                order = ["raw", "chain"] if r % 2 == 0 else ["chain", "raw"]
                for name in order:
                    gc.collect()
                    if name == "raw":
                        batch = await async_batch(
                            lambda p: raw_async(client, p), concurrency, r * concurrency
                        )
                    else:
                        batch = await async_batch(
                            lambda p: chain_async(chain, p), concurrency, r * concurrency
                        )
                    batches[name].append(batch)
            return batches
        finally:
            await chain.aclose()
            await client.close()

    batches = asyncio.run(main())
    return _rows(f"async, {concurrency} concurrent", batches, "chain"), _chart(batches)


# --------------------------------------------------------------------------------------------
# replay: the same bytes without a socket, to measure the chain's own CPU with less noise
# --------------------------------------------------------------------------------------------


def _record_bodies(base_url: str, prompts: list[str]) -> dict[str, list[bytes]]:
    """The exact SSE bytes the server sends for each prompt, split as it sends them."""
    bodies: dict[str, list[bytes]] = {}
    with httpx2.Client(base_url=base_url, timeout=10) as http:
        for prompt in prompts:
            payload = {
                "model": MODEL,
                "messages": user(prompt),
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            with http.stream("POST", "/chat/completions", json=payload) as response:
                bodies[prompt] = [
                    event + b"\n\n" for event in response.read().split(b"\n\n") if event
                ]
    return bodies


def run_replay(settings: Settings, base_url: str) -> tuple[list[Row], dict[str, Any]]:
    prompts = PROMPTS[:20]
    bodies = _record_bodies(base_url, prompts)
    headers = {"content-type": "text/event-stream; charset=utf-8", "x-request-id": "req_replay"}

    def handler(request: httpx2.Request) -> httpx2.Response:
        prompt = json.loads(request.content)["messages"][-1]["content"]
        return httpx2.Response(200, headers=headers, content=iter(bodies[prompt]))

    n = 40 if settings.quick else 100
    rounds = 5 if settings.quick else 21
    cache_dir = settings.scratch / "happy-replay-cache"
    shutil.rmtree(cache_dir, ignore_errors=True)
    config = production_config(base_url, cache_dir)
    http = httpx2.Client(transport=httpx2.MockTransport(handler))
    client = openai.OpenAI(base_url=base_url, api_key=API_KEY, max_retries=0, http_client=http)
    chain = FallbackChain(config, client=client)
    replay_prompts = [prompts[i % len(prompts)] for i in range(n)]

    def batch(one: Callable[[str], tuple[float, int, str]]) -> Batch:
        result = Batch()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for prompt in replay_prompts:
            ttft, chunks, _ = one(prompt)
            result.ttft.append(ttft)
            result.chunks += chunks
        result.wall = time.perf_counter() - wall0
        result.cpu = time.process_time() - cpu0
        result.requests = len(replay_prompts)
        return result

    try:
        assert raw_sync(client, prompts[0])[2] == chain_sync(chain, prompts[0])[2]
        for _ in range(2):
            batch(lambda p: raw_sync(client, p))
            batch(lambda p: chain_sync(chain, p))
        batches = _interleaved(
            {
                "raw": lambda r: batch(lambda p: raw_sync(client, p)),
                "chain": lambda r: batch(lambda p: chain_sync(chain, p)),
            },
            rounds,
        )
    finally:
        chain.close()
        client.close()
    rows = _rows("sync, in-process replay", batches, "chain")
    rows = [row for row in rows if "CPU" in row.metric]
    for row in rows:
        row.target = "(diagnostic) added ≤ 3 µs"
        row.met = None
        row.note = "same SSE bytes through httpx2.MockTransport, no socket; " + row.note
    return rows, _chart(batches)


# --------------------------------------------------------------------------------------------
# isolated: the chain's own CPU, with a stand-in client that hands out pre-built chunks
# --------------------------------------------------------------------------------------------


def _prebuilt_chunks(base_url: str) -> list[tuple[Any, Any]]:
    """Each chunk of one answer twice: as the SDK's model (raw's) and as sent (the chain's)."""
    events = _record_bodies(base_url, PROMPTS[:1])[PROMPTS[0]]
    sent = [
        json.loads(event.removeprefix(b"data: "))
        for event in events
        if not event.startswith(b"data: [DONE]")
    ]
    return [(ChatCompletionChunk.model_validate(data), data) for data in sent]


class _Replay:
    """Iterable (sync and async) over pre-built chunks, as the SDK's Stream would be."""

    def __init__(self, chunks: list[Any]) -> None:
        self._chunks = chunks

    def __enter__(self) -> _Replay:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def __iter__(self) -> Any:
        return iter(self._chunks)

    async def __aenter__(self) -> _Replay:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def _agen(self) -> Any:
        for chunk in self._chunks:
            yield chunk

    def __aiter__(self) -> Any:
        return self._agen()


class _StandInClient:
    """Just enough of ``openai.OpenAI`` / ``AsyncOpenAI`` for a chain's happy path.

    ``create()`` streams the SDK's chunk models (the raw loop's baseline);
    ``with_raw_response.create().parse(to=...)`` streams the same chunks as sent (the JSON
    objects), which is how the chain reads a stream.
    """

    def __init__(self, chunks: list[tuple[Any, Any]], *, is_async: bool) -> None:
        self._chunks = [model for model, _ in chunks]
        self._sent = [data for _, data in chunks]
        self._async = is_async
        self.chat = self
        self.completions = self
        self.with_raw_response = _RawStandIn(self)

    def with_options(self, **_: Any) -> _StandInClient:
        return self

    def _made(self, items: list[Any]) -> Any:
        if not self._async:
            return _Replay(items)

        async def made() -> _Replay:
            return _Replay(items)

        return made()

    def create(self, **_: Any) -> Any:
        return self._made(self._chunks)


class _RawStandIn:
    """``with_raw_response``: a response whose ``parse(to=...)`` streams the chunks as sent."""

    def __init__(self, client: _StandInClient) -> None:
        self._client = client

    def parse(self, *, to: Any) -> _Replay:
        return _Replay(self._client._sent)

    def create(self, **_: Any) -> Any:
        if not self._client._async:
            return self

        async def made() -> _RawStandIn:
            return self

        return made()


def _consume(stream: Any) -> int:
    """The raw SDK's loop over a stand-in stream (the baseline of the isolated rows)."""
    parts = []
    for chunk in stream:
        if chunk.choices:
            content = chunk.choices[0].delta.content
            if content:
                parts.append(content)
    return len(parts)


async def _aconsume(stream: Any) -> int:
    parts = []
    async for chunk in stream:
        if chunk.choices:
            content = chunk.choices[0].delta.content
            if content:
                parts.append(content)
    return len(parts)


_Costs = list[dict[str, dict[int, float]]]
"""Per round: per way, per answer length: CPU seconds per request."""


def run_isolated(settings: Settings, base_url: str) -> tuple[list[Row], dict[str, Any]]:
    """The chain's own CPU per content chunk and per request: no SDK parsing, no socket.

    A stand-in client hands out pre-built chunks (the raw loop gets the SDK's models, the
    chain the JSON objects it reads); each way runs answers of 10 and of 300 content chunks:
    the slope between the two is the CPU per chunk, the intercept the fixed cost per request
    (both minus the same loop over the stand-in alone). CPU is the caller's thread's (the
    targets' "caller's path"; a cache writer thread has nothing to write here: the answers
    repeat). Each round runs every way and length once, ``n`` requests in a row (async: 100
    concurrent at a time), in an order that rotates from round to round; the figures are
    medians over rounds of per-round slopes and intercepts, so drift between rounds cancels.
    """
    chunks = _prebuilt_chunks(base_url)
    at = [i for i, (c, _) in enumerate(chunks) if c.choices and c.choices[0].delta.content]
    head, body, tail = chunks[: at[0]], chunks[at[0] : at[-1] + 1], chunks[at[-1] + 1 :]
    lengths = {10: head + body[:10] + tail, 300: head + (body * 5)[:300] + tail}
    n = 100 if settings.quick else 300
    rounds = 3 if settings.quick else 9
    config = production_config(base_url, settings.scratch / "happy-isolated")
    clock = time.thread_time

    def split(costs: dict[int, float]) -> tuple[float, float]:
        per_chunk = (costs[300] - costs[10]) / 290
        return per_chunk, costs[10] - 10 * per_chunk

    def own(per_round: _Costs, name: str, raw: str) -> tuple[float, float]:
        """Median over rounds of (per chunk, per request) of ``name`` minus ``raw``."""
        chunk_costs, fixed_costs = [], []
        for costs in per_round:
            (chunk, fixed), (raw_chunk, raw_fixed) = split(costs[name]), split(costs[raw])
            chunk_costs.append(chunk - raw_chunk)
            fixed_costs.append(fixed - raw_fixed)
        return median(chunk_costs), median(fixed_costs)

    # -- sync: request by request ------------------------------------------------------------
    sync_chains, ways = [], []
    for length, stream in lengths.items():
        shutil.rmtree(settings.scratch / f"happy-isolated-{length}", ignore_errors=True)
        stand_in: Any = _StandInClient(stream, is_async=False)
        chain = FallbackChain(
            dataclasses.replace(
                config,
                cache=dataclasses.replace(
                    config.cache, directory=str(settings.scratch / f"happy-isolated-{length}")
                ),
            ),
            client=stand_in,
        )
        sync_chains.append(chain)
        ways += [
            ("raw sync", length, lambda _, s=stand_in: _consume(s.create())),
            ("sync", length, lambda i, c=chain: chain_sync(c, PROMPTS[i % 20])),
            ("drop-in sync", length, lambda i, c=chain: dropin_sync(c, PROMPTS[i % 20])),
        ]
    sync_rounds: _Costs = []
    try:
        for r in range(rounds + 1):  # the first round warms up, and is not counted
            total = {(name, length): 0.0 for name, length, _ in ways}
            turn = r % len(ways)
            for name, length, one in ways[turn:] + ways[:turn]:
                cpu = clock()
                for i in range(n):
                    one(i)
                total[name, length] += clock() - cpu
            if r:
                costs: dict[str, dict[int, float]] = {}
                for (name, length), spent in total.items():
                    costs.setdefault(name, {})[length] = spent / n
                sync_rounds.append(costs)
    finally:
        for chain in sync_chains:
            chain.close()

    # -- async: 100 concurrent streams, batch by batch -----------------------------------
    async def go() -> _Costs:
        chains, batches = [], []
        for length, stream in lengths.items():
            stand_in: Any = _StandInClient(stream, is_async=True)
            chain = AsyncFallbackChain(
                dataclasses.replace(
                    config,
                    cache=dataclasses.replace(
                        config.cache,
                        directory=str(settings.scratch / f"happy-isolated-async-{length}"),
                    ),
                ),
                client=stand_in,
            )
            chains.append(chain)

            async def raw(_: int, s: Any = stand_in) -> None:
                await _aconsume(await s.create())

            async def via(i: int, c: AsyncFallbackChain = chain) -> None:
                await chain_async(c, PROMPTS[i % 20])

            batches += [("raw async", length, raw), ("async", length, via)]
        per_round: _Costs = []
        try:
            for r in range(rounds + 1):
                total = {(name, length): 0.0 for name, length, _ in batches}
                turn = r % len(batches)
                for name, length, one in batches[turn:] + batches[:turn]:
                    cpu = clock()
                    for start in range(0, n, 100):
                        await asyncio.gather(*(one(i) for i in range(start, start + 100)))
                    total[name, length] += clock() - cpu
                if r:
                    costs: dict[str, dict[int, float]] = {}
                    for (name, length), spent in total.items():
                        costs.setdefault(name, {})[length] = spent / (n // 100 * 100)
                    per_round.append(costs)
        finally:
            for chain in chains:
                await chain.aclose()
        return per_round

    async_rounds = asyncio.run(go())
    measured = {
        "sync": own(sync_rounds, "sync", "raw sync"),
        "drop-in sync": own(sync_rounds, "drop-in sync", "raw sync"),
        "async": own(async_rounds, "async", "raw async"),
    }
    alone = {
        name: split({length: median([c[name][length] for c in per_round]) for length in lengths})
        for name, per_round in (
            ("raw sync", sync_rounds),
            ("sync", sync_rounds),
            ("drop-in sync", sync_rounds),
            ("raw async", async_rounds),
            ("async", async_rounds),
        )
    }

    results: dict[str, float] = {}
    rows = []
    for name, raw, chunk_target in (
        ("sync", "raw sync", 1.5e-6),
        ("async", "raw async", 3e-6),
        ("drop-in sync", "raw sync", None),
    ):
        (chunk, fixed), (raw_chunk, raw_fixed) = alone[name], alone[raw]
        own_chunk, own_fixed = measured[name]
        results[f"{name}: per chunk"] = own_chunk
        results[f"{name}: per request"] = own_fixed
        label = "drop-in stream, sync" if name.startswith("drop-in") else name
        rows.append(
            Row(
                "happy path",
                f"chain's own CPU per content chunk, {label}, cache on (isolated)",
                fmt_time(chunk),
                fmt_time(raw_chunk),
                f"{own_chunk * 1e6:+.2f} µs",
                "(diagnostic)" if chunk_target is None else f"≤ {chunk_target * 1e6:g} µs",
                None if chunk_target is None else own_chunk <= chunk_target,
                "a stand-in client hands out pre-built chunks (no SDK parsing, no "
                "socket); slope between answers of 10 and 300 content chunks, minus the same "
                f"loop over the stand-in alone; caller's thread CPU; median of {rounds} rounds "
                f"of {n} requests per way and length, in rotating order",
            )
        )
        rows.append(
            Row(
                "happy path",
                f"chain's own fixed CPU per request, {label}, cache on (isolated)",
                fmt_time(fixed),
                fmt_time(raw_fixed),
                f"{own_fixed * 1e6:+.1f} µs",
                "(diagnostic)" if chunk_target is None else "≤ 100 µs",
                None if chunk_target is None else own_fixed <= 100e-6,
                "intercept of the same two lengths: the key, the plan, the breaker, the "
                "answer's assembly and its hand-over to the cache writer",
            )
        )
    return rows, results


def run(settings: Settings) -> Section:
    section = Section("happy path")
    with server_process(words=WORDS) as base_url:
        sync_rows, sync_chart = run_sync(settings, base_url)
        replay_rows, replay_chart = run_replay(settings, base_url)
        async_rows, async_chart = run_async(settings, base_url)
        isolated_rows, isolated_chart = run_isolated(settings, base_url)
    section.rows = sync_rows + replay_rows + async_rows + isolated_rows
    section.chart = {
        "sync": sync_chart,
        "async": async_chart,
        "replay": replay_chart,
        "isolated": isolated_chart,
    }
    section.notes.append(
        "Happy path: the fault server runs in its own process (its CPU is not counted); "
        f"{WORDS}-word answers, one content chunk per word; CPU is `time.process_time()` of "
        "the client process (all its threads, so the async chain's cache writes in worker "
        "threads are included)."
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
