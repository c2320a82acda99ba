"""``fallbackchain demo``: the whole resilience story against local fault servers, no API key.

It lives in the test bed, not in the library: ``fallbackchain demo`` (and
``python -m fallbackchain.testing demo``) import it only when asked.

Two :class:`~fallbackchain.testing.FaultServer` instances on loopback play the primary provider
and a backup model. A real :class:`~fallbackchain.FallbackChain` drives a scripted story, printed
live: healthy streaming → a mid-stream drop recovered without duplicated text → a rate limit with
``Retry-After`` → streaming broken but non-streaming working → a provider outage answered by the
fallback model → a full outage answered from the cache with upstream untouched → recovery.
Next to it, the Responses API's own story: a background stream dropped mid-answer is resumed
with ``responses.retrieve(starting_after=N)`` where it stopped (each event once, one POST, no
second bill).

Then the same fault script is replayed against the retry loop most tutorials give (3 tries, sleep
1 s then 2 s, the SDK's own 2 retries inside each try): its upstream calls are counted for real,
its sleeps are added up instead of slept, and its duplicated or missing answers are counted.
"""

from __future__ import annotations

import dataclasses
import json
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import openai
import openai.types.responses
import pydantic

# The demo is an app of the library: it uses the public API only.
from .. import (
    AllTiersFailedError,
    BreakerConfig,
    CacheConfig,
    ChainConfig,
    ChainResponse,
    FallbackChain,
    FallbackConfig,
    OpenAIConfig,
    RetryConfig,
    trace_of,
)
from ._faults import Fault
from ._server import FaultServer

__all__ = ["DemoResult", "Tally", "run_demo"]

_COLORS = {"title": "1;36", "reset": "1;33", "source": "1;32", "dim": "2", "bad": "1;31"}


@dataclass(frozen=True, slots=True)
class _Phase:
    key: str
    title: str
    prompts: tuple[str, ...]
    setup: Callable[[FaultServer, FaultServer], None]


@dataclass(slots=True)
class Tally:
    """One side of the comparison, on the same faults: the chain, or the tutorial's loop."""

    upstream_calls: int = 0
    failures: int = 0
    waited: float = 0.0
    duplicated: int = 0
    truncated_accepted: int = 0
    resumed_posts: int = 0  # Responses generations billed for the dropped stream
    resumed_repeated: int = 0  # characters of that answer shown twice


@dataclass(slots=True)
class DemoResult:
    """What the story showed: per phase, the sources that answered; and the two tallies."""

    sources: dict[str, list[str]] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=lambda: {})
    chain: Tally = field(default_factory=Tally)
    tutorial: Tally = field(default_factory=Tally)
    upstream_during_open_breakers: int = 0
    open_breaker_answers: int = 0
    resumed_retrievals: int = 0
    resumed_after: str = ""
    seconds: float = 0.0


def _story() -> tuple[_Phase, ...]:
    def healthy(primary: FaultServer, backup: FaultServer) -> None:
        primary.clear()
        backup.clear()

    def drop(primary: FaultServer, backup: FaultServer) -> None:
        primary.push(Fault.drop(after_chunks=10), stream=True)

    def rate_limit(primary: FaultServer, backup: FaultServer) -> None:
        primary.push(Fault.status(429, retry_after=0.5), stream=True)

    def stream_broken(primary: FaultServer, backup: FaultServer) -> None:
        primary.push(Fault.early_end(after_chunks=6), stream=True, times=3)

    def provider_down(primary: FaultServer, backup: FaultServer) -> None:
        primary.default = Fault.status(503)

    def all_down(primary: FaultServer, backup: FaultServer) -> None:
        backup.default = Fault.status(503)

    def recovered(primary: FaultServer, backup: FaultServer) -> None:
        primary.clear()
        backup.clear()

    return (
        _Phase("healthy", "Healthy streaming", ("What is your refund policy?",), healthy),
        _Phase(
            "drop",
            "Connection dropped mid-stream: retried, nothing shown twice",
            ("How do I reset my password?",),
            drop,
        ),
        _Phase(
            "rate_limit",
            "Rate limited (429, Retry-After: 0.5 s): honoured, then answered",
            ("Do you ship abroad?",),
            rate_limit,
        ),
        _Phase(
            "stream_broken",
            "Streams end early (no finish_reason): never accepted; the completion tier answers",
            ("Can I change my order?",),
            stream_broken,
        ),
        _Phase(
            "provider_down",
            "Primary provider down: the backup model answers",
            ("Where is my parcel?", "Do you have a student discount?"),
            provider_down,
        ),
        _Phase(
            "all_down",
            "Everything down: breakers open, answers from the cache, upstream untouched",
            (
                "What is your refund policy?",
                "How do I reset my password?",
                "Do you ship abroad?",
                "Can I change my order?",
                "What is your refund policy?",
                "How do I reset my password?",
            ),
            all_down,
        ),
        _Phase(
            "recovered",
            "Recovery: after reset_timeout one probe closes the primary's stream breaker "
            "(the other tiers are probed when next needed)",
            ("What is your refund policy?",),
            recovered,
        ),
    )


class _Printer:
    def __init__(self, out: TextIO, *, color: bool) -> None:
        self._out = out
        self._color = color

    def paint(self, text: str, style: str) -> str:
        if not self._color:
            return text
        return f"\033[{_COLORS[style]}m{text}\033[0m"

    def write(self, text: str = "", style: str | None = None, *, end: str = "\n") -> None:
        self._out.write((self.paint(text, style) if style else text) + end)
        self._out.flush()


class _Recorder:
    """A listener that keeps every hook event (for ``--record``).

    ``last_opened``: when a breaker last opened (``time.monotonic()``), so the story waits
    for ``reset_timeout`` from then rather than from whenever it gets to the recovery.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.phase = ""
        self.last_opened = 0.0

    def __getattr__(self, name: str) -> Callable[[object], None]:
        if not name.startswith("on_"):
            raise AttributeError(name)

        def record(event: object) -> None:
            row = {"phase": self.phase, "event": type(event).__name__}
            row.update(dataclasses.asdict(event))  # type: ignore[call-overload]
            self.events.append(row)
            if row["event"] == "BreakerChanged" and row.get("new") == "open":
                self.last_opened = time.monotonic()

        return record


def _config(primary: FaultServer, backup: FaultServer, cache_dir: str) -> ChainConfig:
    return ChainConfig(
        openai=OpenAIConfig(
            base_url=primary.base_url,
            model="primary-model",
            timeout=2.0,
            first_token_timeout=1.0,
            idle_timeout=1.0,
        ),
        retry=RetryConfig(base_delay=0.05, max_delay=0.2, max_retry_after=2.0, deadline=10.0),
        breaker=BreakerConfig(fail_max=5, reset_timeout=2.0),
        cache=CacheConfig(directory=cache_dir),
        fallbacks=(FallbackConfig(name="backup", model="backup-model", base_url=backup.base_url),),
    )


def _ask(
    chain: FallbackChain, prompt: str, printer: _Printer, recorder: _Recorder
) -> tuple[ChainResponse | None, float, int]:
    """One request, printed live. Returns (response, seconds, characters shown twice)."""
    started = time.perf_counter()
    printer.write(f"  > {prompt}", "dim")
    printer.write("    ", end="")
    shown: list[str] = []
    duplicated = 0
    try:
        with chain.stream([{"role": "user", "content": prompt}]) as stream:
            for event in stream:
                recorder.events.append(
                    {"phase": recorder.phase, "event": "ChainEvent", **dataclasses.asdict(event)}
                )
                if event.type == "reset":
                    printer.write(" [reset] ", "reset", end="")
                    shown = []
                    continue
                if event.type != "delta":  # tool calls and refusals: not part of this story
                    continue
                if "".join(shown).endswith(event.text) and len(event.text) > 3:
                    duplicated += len(event.text)
                shown.append(event.text)
                printer.write(event.text, end="")
            response = stream.response
    except AllTiersFailedError as exc:
        printer.write(f"no answer: {exc}", "bad")
        return None, time.perf_counter() - started, duplicated
    took = time.perf_counter() - started
    tries = ", ".join(f"{a.tier}:{a.error or 'ok'}" for a in response.attempts)
    printer.write()
    printer.write(
        f"    source={printer.paint(response.source, 'source')}  {took * 1000:.2f} ms  "
        f"attempts=[{tries}]",
    )
    return response, took, duplicated


def run_demo(
    out: TextIO, *, color: bool = False, record: Path | None = None, seed: int = 7
) -> DemoResult:
    """Run the story, print it to ``out``, and return what it showed."""
    printer = _Printer(out, color=color)
    recorder = _Recorder()
    result = DemoResult()
    started = time.perf_counter()
    story = _story()
    with (
        FaultServer(words=24) as primary,
        FaultServer(words=24) as backup,
        tempfile.TemporaryDirectory() as cache_dir,
    ):
        config = _config(primary, backup, cache_dir)
        client = openai.OpenAI(base_url=primary.base_url, api_key="demo-no-key")
        backup_client = openai.OpenAI(base_url=backup.base_url, api_key="demo-no-key")
        try:
            with FallbackChain(
                config,
                client=client,
                fallback_clients={"backup": backup_client},
                listeners=[recorder],
            ) as chain:
                for phase in story:
                    recorder.phase = phase.key
                    if phase.key == "recovered":
                        printer.write(
                            f"\n  (waiting {config.breaker.reset_timeout:g} s for reset_timeout)",
                            "dim",
                        )
                        reopens = recorder.last_opened + config.breaker.reset_timeout + 0.1
                        _build_responses_types()  # meanwhile: it would slow the next chapter
                        time.sleep(max(0.0, reopens - time.monotonic()))
                    phase.setup(primary, backup)
                    printer.write(f"\n== {phase.title}", "title")
                    before = primary.counts["total"] + backup.counts["total"]
                    for prompt in phase.prompts:
                        calls_before = primary.counts["total"] + backup.counts["total"]
                        all_open = phase.key == "all_down" and all(
                            state == "open" for state in chain.breaker_states().values()
                        )
                        response, took, duplicated = _ask(chain, prompt, printer, recorder)
                        result.chain.duplicated += duplicated
                        source = response.source if response else "failed"
                        result.sources.setdefault(phase.key, []).append(source)
                        result.latencies.setdefault(source, []).append(took)
                        if response is None:
                            result.chain.failures += 1
                        else:
                            result.chain.waited += sum(a.delay_before for a in response.attempts)
                            finish = response.completion.choices[0].finish_reason
                            result.chain.truncated_accepted += finish is None
                        if all_open:
                            spent = primary.counts["total"] + backup.counts["total"] - calls_before
                            result.upstream_during_open_breakers += spent
                            result.open_breaker_answers += response is not None
                    calls = primary.counts["total"] + backup.counts["total"] - before
                    printer.write(
                        f"    upstream calls in this phase: {calls}; "
                        f"breakers: {chain.breaker_states()}",
                        "dim",
                    )
                result.chain.upstream_calls = primary.counts["total"] + backup.counts["total"]
                recorder.phase = "resumed"
                _resumption(chain, primary, printer, result)
        finally:
            client.close()
            backup_client.close()
        _replay_naive(story, primary, backup, result, seed=seed)
        _replay_naive_resumption(primary, result)
    result.seconds = time.perf_counter() - started
    _print_table(printer, result)
    if record is not None:
        with record.open("w", encoding="utf-8") as handle:
            for row in recorder.events:
                handle.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    return result


# -- the Responses API: resumption instead of regeneration ---------------------------------------

_RESUME_PROMPT = "Summarise our refund policy."
_RESUME_DROP_AFTER = 8  # text deltas: well into the answer


def _build_responses_types() -> None:
    """Build the SDK's Responses models now: pydantic builds them on first use (~0.5 s)."""
    for name in dir(openai.types.responses):
        model = getattr(openai.types.responses, name)
        if isinstance(model, type) and issubclass(model, pydantic.BaseModel):
            model.model_rebuild()


def _resumption(
    chain: FallbackChain, primary: FaultServer, printer: _Printer, result: DemoResult
) -> None:
    """A background Responses stream dropped mid-answer, resumed where it stopped."""
    primary.clear()
    primary.push(Fault.drop(after_chunks=_RESUME_DROP_AFTER), stream=True, api="responses")
    printer.write(
        "\n== Responses API: a background stream dropped mid-answer is resumed where it stopped "
        "(retrieve with starting_after), not generated again",
        "title",
    )
    printer.write(f"  > {_RESUME_PROMPT}", "dim")
    printer.write("    ", end="")
    before = primary.route_counts
    shown: list[str] = []
    final = ""
    started = time.perf_counter()
    with chain.responses.create(input=_RESUME_PROMPT, background=True, stream=True) as events:
        for event in events:
            if event.type == "response.output_text.delta":
                shown.append(event.delta)
                printer.write(event.delta, end="")
            elif event.type == "response.completed":
                final = event.response.output_text
    took = time.perf_counter() - started
    trace = trace_of(events)
    counts = primary.route_counts - before
    result.chain.resumed_posts = counts["responses.create"]
    result.resumed_retrievals = counts["responses.retrieve"]
    result.chain.resumed_repeated = max(0, len("".join(shown)) - len(final))
    notes = [a.error for a in trace.attempts if a.error] if trace else []
    result.resumed_after = notes[0] if notes else ""
    tries = ", ".join(f"{a.tier}:{a.error or 'ok'}" for a in trace.attempts) if trace else ""
    source = trace.source if trace else "?"
    printer.write()
    printer.write(
        f"    source={printer.paint(source, 'source')}  {took * 1000:.2f} ms  attempts=[{tries}]"
    )
    printer.write(
        f"    upstream: {result.chain.resumed_posts} POST /responses, "
        f"{result.resumed_retrievals} GET /responses/{{id}}?starting_after=N; "
        f"characters shown twice: {result.chain.resumed_repeated}",
        "dim",
    )


def _replay_naive_resumption(primary: FaultServer, result: DemoResult) -> None:
    """The same drop against the tutorial loop: it asks again from the start (and pays again)."""
    primary.clear()
    primary.push(Fault.drop(after_chunks=_RESUME_DROP_AFTER), stream=True, api="responses")
    before = primary.route_counts
    client = openai.OpenAI(base_url=primary.base_url, api_key="demo-no-key", max_retries=0)
    shown = ""
    try:
        for _ in range(len(_TUTORIAL_SLEEPS) + 1):
            answered = len(shown)
            try:
                with client.responses.create(
                    model="primary-model", input=_RESUME_PROMPT, background=True, stream=True
                ) as events:
                    for event in events:
                        if event.type == "response.output_text.delta":
                            shown += event.delta
                result.tutorial.resumed_repeated += answered  # printed again from the start
                break
            except openai.APIError:
                continue
    finally:
        client.close()
        primary.clear()
    result.tutorial.resumed_posts = (primary.route_counts - before)["responses.create"]


# -- the tutorial loop, replayed ------------------------------------------------------------------

_SDK_RETRIES = 2
_TUTORIAL_SLEEPS = (1.0, 2.0)


def _replay_naive(
    story: tuple[_Phase, ...],
    primary: FaultServer,
    backup: FaultServer,
    result: DemoResult,
    *,
    seed: int,
) -> None:
    """Replay the story's faults against the tutorial loop; count, don't sleep."""
    rng = random.Random(seed)  # noqa: S311 - emulates the SDK's backoff jitter, not security
    primary.clear()
    backup.clear()
    primary.reset_counts()
    client = openai.OpenAI(base_url=primary.base_url, api_key="demo-no-key", max_retries=0)
    try:
        for phase in story:
            _drop_leftover_rules(primary)
            phase.setup(primary, backup)
            for prompt in phase.prompts:
                waited, failed, duplicated, truncated = _naive_request(client, prompt, rng)
                tally = result.tutorial
                tally.waited += waited
                tally.failures += failed
                tally.duplicated += duplicated
                tally.truncated_accepted += truncated
        result.tutorial.upstream_calls = primary.counts["total"]
    finally:
        client.close()
        primary.clear()
        backup.clear()


def _drop_leftover_rules(server: FaultServer) -> None:
    """Forget scripted one-off faults the last phase did not use up; keep the default."""
    default = server.default
    server.clear()
    server.default = default


def _naive_request(
    client: openai.OpenAI, prompt: str, rng: random.Random
) -> tuple[float, int, int, int]:
    """The tutorial loop for one request: (seconds it would sleep, failed, dup chars, truncated)."""
    waited = 0.0
    shown: list[str] = []
    duplicated = 0
    for attempt in range(len(_TUTORIAL_SLEEPS) + 1):
        try:
            stream = _sdk_create_with_retries(client, prompt, rng)
            waited += stream[1]
            finished = False
            before = len("".join(shown))
            for chunk in stream[0]:
                if chunk.choices and chunk.choices[0].delta.content:
                    shown.append(chunk.choices[0].delta.content)
                if chunk.choices and chunk.choices[0].finish_reason:
                    finished = True
            if before:
                duplicated += before  # the retry printed the answer again from the start
        except openai.APIError as exc:
            if (
                isinstance(exc, openai.APIStatusError)
                and exc.status_code < 500
                and exc.status_code not in (408, 409, 429)
            ):
                return waited, 1, duplicated, 0
            if attempt < len(_TUTORIAL_SLEEPS):
                waited += _TUTORIAL_SLEEPS[attempt]
        except ValueError:  # json.JSONDecodeError from a malformed chunk
            if attempt < len(_TUTORIAL_SLEEPS):
                waited += _TUTORIAL_SLEEPS[attempt]
        else:
            return waited, 0, duplicated, 0 if finished else 1
    return waited, 1, duplicated, 0


def _sdk_create_with_retries(
    client: openai.OpenAI, prompt: str, rng: random.Random
) -> tuple[Any, float]:
    """``create(stream=True)`` with the SDK's default retry rule, sleeps added up, not slept."""
    waited = 0.0
    for retry in range(_SDK_RETRIES + 1):
        try:
            stream = client.chat.completions.create(
                model="primary-model",
                messages=[{"role": "user", "content": prompt}],
                stream=True,
            )
        except (
            openai.RateLimitError,
            openai.InternalServerError,
            openai.APIConnectionError,
        ) as exc:
            if retry == _SDK_RETRIES:
                raise
            retry_after = None
            if isinstance(exc, openai.APIStatusError):
                header = exc.response.headers.get("retry-after")
                retry_after = float(header) if header else None
            waited += (
                retry_after if retry_after else min(0.5 * 2**retry, 8.0) * (1 - 0.25 * rng.random())
            )
            continue
        return stream, waited
    raise AssertionError("unreachable")  # pragma: no cover


# -- the closing table ---------------------------------------------------------------------------


def _print_table(printer: _Printer, result: DemoResult) -> None:
    counts = Counter(source for sources in result.sources.values() for source in sources)
    total = sum(counts.values())
    printer.write("\n== Summary", "title")
    printer.write("  requests answered per tier:")
    for source, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        times = result.latencies.get(source, [])
        median = statistics.median(times) * 1000 if times else 0.0
        printer.write(f"    {source:<12} {n:>3}   median {median:9.2f} ms")

    def both(name: str, show: Callable[[Tally], str]) -> tuple[str, str, str]:
        return name, show(result.chain), show(result.tutorial)

    rows = [
        ("", "fallbackchain", "tutorial retry loop"),
        both("answers served", lambda t: f"{total - t.failures}/{total}"),
        both("upstream calls", lambda t: str(t.upstream_calls)),
        (
            f"upstream calls for the {result.open_breaker_answers} answers with all breakers open",
            str(result.upstream_during_open_breakers),
            "n/a (no breaker)",
        ),
        both("characters shown twice", lambda t: str(t.duplicated)),
        both("truncated answers accepted", lambda t: str(t.truncated_accepted)),
        (
            "Responses stream dropped mid-answer: generations billed",
            f"{result.chain.resumed_posts} (resumed)",
            f"{result.tutorial.resumed_posts} (asked again)",
        ),
        both("  characters of it shown twice", lambda t: str(t.resumed_repeated)),
        both("time spent sleeping on retries", lambda t: f"{t.waited:.1f} s"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, ours, theirs in rows:
        printer.write(f"  {name:<{width}}  {ours:>16}  {theirs:>20}")
    printer.write(
        f"  (story ran in {result.seconds:.1f} s; the tutorial loop was replayed against "
        "the same faults, its sleeps added up instead of slept)",
        "dim",
    )
