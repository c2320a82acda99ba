"""Warming the cache: warm()/awarm() against the fault server, the run core, the warm command.

The chains use the real openai client over loopback, with an injected fake clock and sleep:
breaker timers, backoff and warm's own pauses never really wait.
"""

from __future__ import annotations

import ast
import asyncio
import inspect
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any

import openai
import pytest

import fallbackchain.warming
from fallbackchain import (
    AllTiersFailedError,
    AsyncFallbackChain,
    Attempt,
    FallbackChain,
    RateLimitedError,
    set_testing,
)
from fallbackchain.cache import InputFileError
from fallbackchain.chain import RESPONSES, Sleep, trace_of
from fallbackchain.cli import main
from fallbackchain.testing import Fault, FaultServer
from fallbackchain.warming import (
    WarmOptions,
    WarmProgress,
    WarmRequest,
    awarm,
    parse_prompts,
    warm,
)
from fallbackchain.warming._outcome import SendResult
from fallbackchain.warming._run import Collect, LookUp, Send, WarmRun

from .conftest import FakeClock, make_config, user
from .test_warm_prompts import SURROGATE, UNSENDABLE_LINES

# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def write_prompts(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def prompt_lines(n: int) -> list[str]:
    return [f'{{"prompt": "question {i}"}}' for i in range(n)]


class Chains:
    """Makes sync chains on the real openai client (fake clock and sleep); closes them all."""

    def __init__(self, tmp_path: Path, clock: FakeClock) -> None:
        self.tmp_path = tmp_path
        self.clock = clock
        self.made: list[tuple[FallbackChain, openai.OpenAI]] = []

    def __call__(self, base_url: str, **overrides: Any) -> FallbackChain:
        client = openai.OpenAI(base_url=base_url, api_key="sk-test", max_retries=0)
        chain = FallbackChain(
            make_config(self.tmp_path, base_url, **overrides),
            client=client,
            clock=self.clock,
            sleep=self.clock.sleep,
            random=lambda: 0.5,
        )
        self.made.append((chain, client))
        return chain

    def close(self) -> None:
        for chain, client in self.made:
            chain.close()
            client.close()
        self.made.clear()


@pytest.fixture
def chains(tmp_path: Path, clock: FakeClock) -> Any:
    made = Chains(tmp_path, clock)
    yield made
    made.close()


@pytest.fixture
def chain_factory(chains: Chains, server: FaultServer) -> Any:
    def factory(base_url: str | None = None, **overrides: Any) -> FallbackChain:
        return chains(base_url or server.base_url, **overrides)

    return factory


@pytest.fixture
def chain(chain_factory: Any) -> FallbackChain:
    return chain_factory()


def cached_text(
    chain: FallbackChain, messages: Any, model: str | None = None, **params: Any
) -> Any:
    key = chain.cache_key(messages, model, **params)
    assert key is not None
    answer = chain.cache.get(key)
    return None if answer is None else answer.completion.choices[0].message.content


# --------------------------------------------------------------------------------------------
# Warming: the same key, the same live path
# --------------------------------------------------------------------------------------------


def test_warmed_prompts_are_answered_from_cache_after_the_server_stops(tmp_path, chains):
    prompts = write_prompts(
        tmp_path / "p.jsonl",
        '{"prompt": "What is the capital of France?"}',
        '{"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0}',
        '{"messages": [{"role": "system", "content": "Be brief."}, '
        '{"role": "user", "content": "Why?"}], "max_tokens": 20, "seed": 7}',
    )
    with FaultServer(words=8) as own:
        report = warm(chains(own.base_url), prompts)
        answers = {
            "france": own.answer_for(user("What is the capital of France?"), "test-model"),
            "hi": own.answer_for(user("Hi"), "gpt-4o"),
            "why": own.answer_for(user("Why?"), "test-model"),
        }
        chains.close()
    assert (report.warmed, report.failed, report.ok) == (3, 0, True)
    # the server is gone: a fresh chain on the same cache answers every prompt from the cache
    later = chains(own.base_url)
    france = later.complete(user("What is the capital of France?"))
    hi = later.complete(user("Hi"), "gpt-4o", temperature=0)
    why = later.complete(
        [{"role": "system", "content": "Be brief."}, *user("Why?")], max_tokens=20, seed=7
    )
    assert [r.source for r in (france, hi, why)] == ["cache"] * 3
    assert [france.text, hi.text, why.text] == [answers["france"], answers["hi"], answers["why"]]


def test_a_cached_answer_reports_its_age(chains, server, clock):
    warm(chains(server.base_url), [{"prompt": "hello"}])
    chains.close()
    clock.advance(120)
    response = chains("http://127.0.0.1:9/v1").complete(user("hello"))  # nothing listens
    assert response.source == "cache"
    assert response.cache_age == pytest.approx(120.0, abs=1.0)  # plus the retries' backoff


def test_an_entry_older_than_ttl_is_never_served_and_is_warmed_again(chain, server, clock):
    warm(chain, [{"prompt": "hello"}])
    clock.advance(chain.config.cache.ttl)
    server.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):
        chain.complete(user("hello"))
    server.default = Fault.ok()
    server.reset_counts()
    report = warm(chain, [{"prompt": "hello"}])
    assert (report.warmed, report.skipped) == (1, 0)
    assert server.counts["total"] == 1


def test_warm_goes_through_the_streaming_tier_first(chain, server):
    warm(chain, [{"prompt": "hello"}])
    assert server.counts["stream"] == 1
    assert server.requests[0].body["messages"] == user("hello")


def test_the_report_counts_tokens_and_time(chain):
    report = warm(chain, [{"prompt": "a"}, {"prompt": "b"}])
    assert report.tokens > 0
    assert report.seconds >= 0
    assert report.errors == ()


def test_prompts_can_be_given_in_code(chain):
    report = warm(chain, [{"prompt": "a"}, WarmRequest(7, {"messages": user("b")})])
    assert report.warmed == 2
    assert cached_text(chain, user("b")) is not None


def test_bad_prompts_given_in_code_are_reported_by_position(chain):
    report = warm(chain, [{"prompt": "a"}, {"nope": 1}])
    assert (report.warmed, report.invalid) == (1, 1)
    assert str(report.errors[0]) == "<prompts>:2: unknown key 'nope'"


# --------------------------------------------------------------------------------------------
# Skipping, refreshing, resuming
# --------------------------------------------------------------------------------------------


def test_already_cached_prompts_are_skipped(chain, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", *prompt_lines(3))
    warm(chain, prompts)
    server.reset_counts()
    report = warm(chain, prompts)
    assert (report.warmed, report.skipped) == (0, 3)
    assert server.counts["total"] == 0


def test_refresh_asks_again_for_cached_prompts(chain, server, clock):
    warm(chain, [{"prompt": "a"}])
    server.reset_counts()
    clock.advance(10)
    report = warm(chain, [{"prompt": "a"}], refresh=True)
    assert report.warmed == 1
    assert server.counts["total"] == 1
    key = chain.cache_key(user("a"))
    assert chain.cache.get(key).age == 0.0  # rewritten just now


def test_a_repeated_prompt_is_sent_once(chain, server):
    report = warm(chain, [{"prompt": "a"}, {"messages": user("a")}])
    assert (report.warmed, report.skipped) == (1, 1)
    assert server.counts["total"] == 1


def test_an_interrupted_run_resumes_where_it_stopped(chain, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", *prompt_lines(6))
    seen: list[WarmProgress] = []

    def stop_after_two(event: WarmProgress) -> None:
        seen.append(event)
        if len(seen) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        warm(chain, prompts, concurrency=1, progress=stop_after_two)
    assert server.counts["total"] == 2
    server.reset_counts()
    report = warm(chain, prompts, concurrency=1)
    assert (report.warmed, report.skipped) == (4, 2)
    assert server.counts["total"] == 4


def test_answers_in_flight_at_an_interrupt_are_kept(chain, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", *prompt_lines(8))

    def stop_at_once(event: WarmProgress) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        warm(chain, prompts, concurrency=4, progress=stop_at_once)
    sent = server.counts["total"]
    assert 1 <= sent <= 4
    report = warm(chain, prompts)
    assert (report.skipped, report.warmed) == (sent, 8 - sent)


def test_progress_reports_each_prompt_with_running_counts(chain):
    warm(chain, [{"prompt": "a"}])
    events: list[WarmProgress] = []
    warm(chain, [{"prompt": "a"}, {"prompt": "b"}], concurrency=1, progress=events.append)
    assert [(e.done, e.total, e.outcome, e.request.line) for e in events] == [
        (1, 2, "skipped", 1),
        (2, 2, "warmed", 2),
    ]
    assert events[0].note == "already cached"
    assert (events[1].warmed, events[1].skipped, events[1].failed) == (1, 1, 0)
    assert events[1].tokens > 0


# --------------------------------------------------------------------------------------------
# Failures never end the run, and never make the cache worse
# --------------------------------------------------------------------------------------------


def test_invalid_lines_are_reported_and_valid_lines_still_run(chain, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", '{"prompt": "a"}', "{oops", '{"prompt": "b"}')
    report = warm(chain, prompts)
    assert (report.warmed, report.invalid, report.ok) == (2, 1, False)
    assert [(e.file, e.line) for e in report.errors] == [(str(prompts), 2)]


def test_strict_sends_nothing_when_any_line_is_bad(chain, server, tmp_path):
    prompts = write_prompts(tmp_path / "p.jsonl", '{"prompt": "a"}', "{oops", "[1]")
    with pytest.raises(InputFileError) as info:
        warm(chain, prompts, strict=True)
    assert str(info.value).startswith(f"{prompts}:2: not valid JSON")
    assert "(and 1 more bad line(s)); nothing was sent (strict)" in str(info.value)
    assert [e.line for e in info.value.errors] == [2, 3]
    assert server.counts["total"] == 0


def test_a_missing_file_raises_before_anything_is_sent(chain, tmp_path):
    with pytest.raises(InputFileError, match="file not found"):
        warm(chain, tmp_path / "missing.jsonl")


def test_an_api_rejection_fails_only_that_line(chain, server, tmp_path, caplog):
    prompts = write_prompts(tmp_path / "p.jsonl", *prompt_lines(3))
    server.push(Fault.status(400, message="bad temperature"))
    with caplog.at_level(logging.WARNING, logger="fallbackchain.warm"):
        report = warm(chain, prompts, concurrency=1)
    assert (report.warmed, report.failed) == (2, 1)
    (error,) = report.errors
    assert error.line == 1
    assert error.message == "failed: rejected by the API: HTTP 400: bad temperature"
    assert f"{prompts}:1: failed: rejected by the API" in caplog.text


def test_when_every_tier_fails_the_prompt_fails_and_the_run_goes_on(chain, server):
    # a 503 is the route's fault: 3 attempts on the route (whichever tier), then one prompt fails
    server.push(Fault.status(503), times=3)
    report = warm(chain, [{"prompt": "a"}, {"prompt": "b"}], concurrency=1)
    assert (report.warmed, report.failed) == (1, 1)
    assert report.errors[0].message.startswith("failed: all tiers failed after 3 attempt(s)")


def test_an_answer_served_from_the_cache_does_not_count_as_warmed(chain, server):
    warm(chain, [{"prompt": "a"}])
    server.push(Fault.status(503), times=3)
    report = warm(chain, [{"prompt": "a"}], refresh=True)
    assert (report.warmed, report.failed) == (0, 1)
    assert "answered from the cache and nothing was refreshed" in report.errors[0].message


def test_refresh_never_replaces_a_whole_answer_with_a_cut_short_one(chain, server, clock):
    warm(chain, [{"prompt": "a"}])
    before = chain.cache.get(chain.cache_key(user("a")))
    clock.advance(30)
    server.push(Fault.finish("length"), times=1)
    report = warm(chain, [{"prompt": "a"}], refresh=True)
    assert report.failed == 1
    assert "cut short" in report.errors[0].message
    after = chain.cache.get(chain.cache_key(user("a")))
    assert after.completion.choices[0].finish_reason == "stop"
    assert after.stored_at == before.stored_at
    assert after.age == 30.0


def test_a_warm_never_overwrites_an_entry_when_the_answer_is_incomplete(chain, server):
    warm(chain, [{"prompt": "a"}])
    server.default = Fault.early_end(after_chunks=3)  # streams truncate, completions answer
    report = warm(chain, [{"prompt": "a"}], refresh=True)
    assert report.warmed == 1  # answered by the completion tier, a complete answer
    cached = chain.cache.get(chain.cache_key(user("a")))
    assert cached.completion.choices[0].finish_reason == "stop"


# --------------------------------------------------------------------------------------------
# Concurrency, breakers, Retry-After
# --------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_at_most_concurrency_requests_are_in_flight(chain, server):
    server.default = Fault.slow_first_byte(0.15)
    report = warm(chain, [{"prompt": f"q{i}"} for i in range(8)], concurrency=3)
    assert report.warmed == 8
    assert 1 < server.counts["max_active"] <= 3


def test_concurrency_one_sends_one_at_a_time(chain, server):
    server.default = Fault.slow_first_byte(0.05)
    warm(chain, [{"prompt": f"q{i}"} for i in range(3)], concurrency=1)
    assert server.counts["max_active"] == 1


def test_an_outage_pauses_sending_instead_of_hammering(chain_factory, server, clock):
    chain = chain_factory()
    server.default = Fault.status(503)
    reset = chain.config.breaker.reset_timeout
    fail_max = chain.config.breaker.fail_max
    report = warm(
        chain, [{"prompt": f"q{i}"} for i in range(20)], concurrency=4, max_wait=3 * reset
    )
    assert report.failed == 20
    # per tier: fail_max failures open it, plus one attempt per request already in flight;
    # then one probe per tier per reset_timeout (3 pauses), instead of 20 prompts x 6 attempts
    assert server.counts["total"] <= 2 * (fail_max + 4) + 2 * 3
    pauses = [s for s in clock.sleeps if s >= 1.0]
    assert len(pauses) == 3
    assert all(p <= reset for p in pauses)  # the last one ends at max_wait
    assert sum("not sent" in e.message for e in report.errors) >= 15


def test_sending_resumes_after_the_breakers_close(chain, server, clock):
    server.push(Fault.status(503), times=10)  # opens both breakers (fail_max 5 each)
    report = warm(chain, [{"prompt": f"q{i}"} for i in range(6)], concurrency=1)
    reset = chain.config.breaker.reset_timeout
    # each prompt spends the route's budget (3 attempts): q0-q2 fail before both breakers are
    # open (stream 3+2, completion 1+3+1); q3 is tried again after one pause, then all answer
    assert (report.warmed, report.failed) == (3, 3)
    assert [e.line for e in report.errors] == [1, 2, 3]
    # one pause, until the stream breaker (opened first, a backoff earlier) may be probed
    [pause] = [s for s in clock.sleeps if s >= 1.0]
    assert reset - 0.1 <= pause <= reset
    assert chain.breaker_states()["stream"] == "closed"


def test_outage_pauses_are_logged_once(chain, server, caplog):
    server.push(Fault.status(503), times=10)
    with caplog.at_level(logging.WARNING, logger="fallbackchain.warm"):
        warm(chain, [{"prompt": f"q{i}"} for i in range(5)], concurrency=1)
    messages = [r.getMessage() for r in caplog.records if r.name == "fallbackchain.warm"]
    assert sum("every live tier's breaker is open" in m for m in messages) == 1
    assert sum("resuming at full concurrency" in m for m in messages) == 1


def test_retry_after_holds_back_the_next_request(chain, server, clock):
    server.push(Fault.status(429, retry_after=1.5), times=3)
    report = warm(chain, [{"prompt": "a"}, {"prompt": "b"}], concurrency=1)
    assert (report.failed, report.warmed) == (1, 1)
    # the chain honoured it between its own retries on the route (2 waits); warm held "b"
    # back once more
    assert clock.sleeps == [1.5] * 3


def test_in_testing_mode_an_outage_fails_fast_without_waiting(chain, server, clock):
    server.default = Fault.status(503)
    with set_testing(True):
        report = warm(chain, [{"prompt": f"q{i}"} for i in range(10)], concurrency=2)
    assert report.failed == 10
    assert clock.sleeps == []
    assert server.counts["total"] <= 2 * (chain.config.breaker.fail_max + 2)


# --------------------------------------------------------------------------------------------
# Dry run, and arguments
# --------------------------------------------------------------------------------------------


def test_dry_run_sends_nothing_and_lists_what_would_be_sent(chain, server):
    warm(chain, [{"prompt": "cached"}])
    server.reset_counts()
    report = warm(chain, [{"prompt": "cached"}, {"prompt": "new"}], dry_run=True)
    assert server.counts["total"] == 0
    assert (report.warmed, report.skipped) == (0, 1)
    assert [r.messages for r in report.planned] == [user("new")]
    assert cached_text(chain, user("new")) is None


def test_concurrency_must_be_at_least_one(chain):
    with pytest.raises(ValueError, match="concurrency must be an int >= 1"):
        warm(chain, [{"prompt": "a"}], concurrency=0)


def test_a_disabled_cache_is_refused(chain_factory):
    chain = chain_factory(cache__enabled=False)
    with pytest.raises(ValueError, match="cache is disabled"):
        warm(chain, [{"prompt": "a"}])


def test_max_wait_must_not_be_negative(chain):
    with pytest.raises(ValueError, match="max_wait"):
        warm(chain, [{"prompt": "a"}], max_wait=-1)


def test_an_unknown_option_is_a_type_error_before_anything_is_sent(chain, server):
    with pytest.raises(TypeError, match="'concurency'"):
        warm(chain, [{"prompt": "a"}], concurency=2)  # type: ignore[call-arg]
    assert server.counts["total"] == 0


def test_warm_and_awarm_take_the_same_options():
    shared = {"concurrency", "refresh", "strict", "dry_run", "progress", "max_wait", "clock"}
    assert WarmOptions.__optional_keys__ == shared
    for driver in (warm, awarm):
        parameters = inspect.signature(driver).parameters
        assert list(parameters) == ["chain", "prompts", "sleep", "options"], driver


def test_warming_uses_only_the_chains_public_surface():
    """Issue #12: warming read the chain's private ``_clock`` and ``_sleep``; it asks in public."""
    package = Path(fallbackchain.warming.__file__).parent
    for module in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.Attribute):
                continue
            owner = node.value  # `chain.x`, `self.chain.x`, `self._chain.x`
            name = owner.id if isinstance(owner, ast.Name) else getattr(owner, "attr", "")
            if name.endswith("chain"):
                assert not node.attr.startswith("_"), f"{module.name}:{node.lineno}"


# --------------------------------------------------------------------------------------------
# asyncio
# --------------------------------------------------------------------------------------------


@pytest.fixture
def achain(tmp_path: Path, server: FaultServer, clock: FakeClock) -> Any:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test", max_retries=0)
    chain = AsyncFallbackChain(
        make_config(tmp_path, server.base_url),
        client=client,
        clock=clock,
        sleep=clock.async_sleep,
        random=lambda: 0.5,
    )
    loop = asyncio.new_event_loop()
    yield chain, loop
    loop.run_until_complete(chain.aclose())
    loop.run_until_complete(client.close())
    loop.close()


def test_awarm_warms_then_skips(achain, server, tmp_path):
    chain, loop = achain
    prompts = write_prompts(tmp_path / "p.jsonl", *prompt_lines(5), "{bad")
    first = loop.run_until_complete(awarm(chain, prompts, concurrency=2))
    second = loop.run_until_complete(awarm(chain, prompts))
    assert (first.warmed, first.invalid) == (5, 1)
    assert (second.warmed, second.skipped) == (0, 5)
    assert server.counts["total"] == 5
    assert server.counts["max_active"] <= 2


def test_awarm_answers_are_found_by_the_chain_at_run_time(achain, server):
    chain, loop = achain
    loop.run_until_complete(awarm(chain, [{"prompt": "a", "temperature": 0}]))
    server.default = Fault.status(503)
    response = loop.run_until_complete(chain.complete(user("a"), temperature=0))
    assert response.source == "cache"


def test_awarm_fails_only_the_rejected_line(achain, server):
    chain, loop = achain
    server.push(Fault.status(400))
    report = loop.run_until_complete(
        awarm(chain, [{"prompt": "a"}, {"prompt": "b"}], concurrency=1)
    )
    assert (report.warmed, report.failed) == (1, 1)
    assert report.errors[0].line == 1


def test_awarm_pauses_during_an_outage(achain, server, clock):
    chain, loop = achain
    server.push(Fault.status(503), times=10)
    report = loop.run_until_complete(
        awarm(chain, [{"prompt": f"q{i}"} for i in range(6)], concurrency=1)
    )
    assert (report.warmed, report.failed) == (3, 3)  # as in the sync test above
    [pause] = [s for s in clock.sleeps if s >= 1.0]
    reset = chain.config.breaker.reset_timeout
    assert reset - 0.1 <= pause <= reset


def test_cancelling_awarm_keeps_what_was_written(achain, server):
    chain, loop = achain
    events: list[WarmProgress] = []

    async def run_and_cancel() -> None:
        task = asyncio.create_task(
            awarm(
                chain,
                [{"prompt": f"q{i}"} for i in range(6)],
                concurrency=1,
                progress=events.append,
            )
        )
        while len(events) < 2:
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    loop.run_until_complete(run_and_cancel())
    report = loop.run_until_complete(awarm(chain, [{"prompt": f"q{i}"} for i in range(6)]))
    assert report.skipped >= 2
    assert report.skipped + report.warmed == 6


# --------------------------------------------------------------------------------------------
# One validation for the dry run and the real run (issue #11, item 8)
# --------------------------------------------------------------------------------------------


def test_values_given_in_code_are_checked_the_same_way(chain, server):
    report = warm(
        chain,
        [{"prompt": "ok"}, {"prompt": "a", "temperature": float("nan")}, {"prompt": "\udfff"}],
        dry_run=True,
    )
    assert [r.line for r in report.planned] == [1]
    assert [str(e) for e in report.errors] == [
        "<prompts>:2: 'temperature' is out of range (nan): a request can only carry finite numbers",
        "<prompts>:3: 'prompt' contains '\\udfff' at position 0, a lone surrogate: not valid "
        "Unicode, so the request could not be sent",
    ]


def test_a_warm_request_built_in_code_is_checked_too(chain, server):
    bad = WarmRequest(7, {"messages": user("\ud800")}, "mine.jsonl")
    for dry_run in (True, False):
        report = warm(chain, [bad, WarmRequest(8, {"messages": user("fine")})], dry_run=dry_run)
        assert [str(e) for e in report.errors] == [
            "mine.jsonl:7: 'messages[0].content' " + SURROGATE.format(0)
        ]
        assert report.invalid == 1
    assert server.counts["total"] == 1  # only the good request, in the real run


def test_the_dry_run_and_the_real_run_refuse_the_same_lines(chain, server, tmp_path):
    path = write_prompts(
        tmp_path / "p.jsonl", '{"prompt": "fine"}', *(u[0] for u in UNSENDABLE_LINES)
    )
    dry = warm(chain, path, dry_run=True)
    assert server.counts["total"] == 0
    real = warm(chain, path)
    assert dry.errors == real.errors
    assert (dry.invalid, real.invalid) == (len(UNSENDABLE_LINES), len(UNSENDABLE_LINES))
    assert [r.line for r in dry.planned] == [1]
    assert (real.warmed, real.failed) == (1, 0)
    assert server.counts["total"] == 1  # only the good line reached the network


def _run_cli(capsys: pytest.CaptureFixture[str], *argv: Any) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _cli_config(tmp_path: Path, base_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FALLBACKCHAIN_TEST_KEY", "sk-test")
    path = tmp_path / "cfg.toml"
    path.write_text(
        f'[openai]\nbase_url = "{base_url}"\napi_key_env = "FALLBACKCHAIN_TEST_KEY"\n'
        f'model = "test-model"\n[cache]\ndirectory = "{tmp_path / "cache"}"\n',
        encoding="utf-8",
    )
    return path


def test_cli_dry_run_with_a_lone_surrogate_reports_the_line_instead_of_crashing(
    tmp_path, server, capsys, monkeypatch
):
    config = _cli_config(tmp_path, server.base_url, monkeypatch)
    prompts = write_prompts(
        tmp_path / "p.jsonl", '{"prompt": "a \\ud800 b"}', '{"prompt": "x", "temperature": 1e999}'
    )
    code, out, err = _run_cli(capsys, "warm", prompts, "--config", config, "--dry-run")
    assert code == 1
    assert err.splitlines() == [
        f"{prompts}:1: 'prompt' " + SURROGATE.format(2),
        f"{prompts}:2: 'temperature' is out of range (inf): a request can only carry finite numbers",
    ]
    assert out == "dry run: 0 to send, 0 to skip, 0 failed, 2 invalid; nothing was sent\n"
    assert server.counts["total"] == 0


def test_cli_output_escapes_what_the_terminal_cannot_encode(tmp_path, server, capsys, monkeypatch):
    """An ASCII-only stdout, and a file name that is not valid UTF-8 (shown on strict stderr)."""
    config = _cli_config(tmp_path, server.base_url, monkeypatch)
    prompts = write_prompts(
        tmp_path / "bad\udcffname.jsonl", '{"prompt": "caf\u00e9 \u2615"}', "[]"
    )
    stdout = io.TextIOWrapper(io.BytesIO(), encoding="ascii", write_through=True)
    monkeypatch.setattr(sys, "stdout", stdout)
    code, _out, err = _run_cli(capsys, "warm", prompts, "--config", config, "--dry-run")
    assert code == 1
    assert err.splitlines() == [
        f"{tmp_path}/bad\\udcffname.jsonl:2: expected a JSON object, got an array"
    ]
    printed = stdout.buffer.getvalue().decode("ascii").splitlines()  # type: ignore[attr-defined]
    assert printed == [
        f"{tmp_path}/bad\\udcffname.jsonl:1: would send "
        '{"model": "test-model", "messages": [{"role": "user", "content": "caf\\xe9 \\u2615"}]}',
        "dry run: 1 to send, 0 to skip, 0 failed, 1 invalid; nothing was sent",
    ]


def test_cli_progress_lines_escape_what_the_terminal_cannot_encode(
    tmp_path, server, capsys, monkeypatch
):
    config = _cli_config(tmp_path, server.base_url, monkeypatch)
    prompts = write_prompts(tmp_path / "bad\udcffname.jsonl", '{"prompt": "hello"}')
    code, out, err = _run_cli(capsys, "warm", prompts, "--config", config)
    assert code == 0, err
    assert out.startswith("warmed 1, skipped 0, failed 0, invalid 0")
    [progress] = err.splitlines()
    assert progress.startswith(f"[1/1] {tmp_path}/bad\\udcffname.jsonl:1: warmed (")


# --------------------------------------------------------------------------------------------
# The step core both drivers share, driven by hand (every request "answers" at once)
# --------------------------------------------------------------------------------------------


class _Finished:
    """A finished request in flight, as the drivers' futures and tasks are."""

    def __init__(self, value: SendResult) -> None:
        self.value = value

    def result(self) -> SendResult:
        return self.value


ANSWERED = SendResult(True, tokens=1)
RATE_LIMITED = SendResult(
    False,
    message="429",
    attempts=(
        Attempt(
            "primary",
            "429",
            0.1,
            exception=RateLimitedError("429", status_code=429, retry_after=1.5),
            status_code=429,
            retry_after=1.5,
        ),
    ),
)


def _trace_steps(
    chain: FallbackChain,
    clock: FakeClock,
    prompts: list[str],
    results: list[SendResult],
    **settings: Any,
) -> tuple[list[str], Any]:
    """Drive the core by hand: the n-th send finishes with ``results[n]`` (else answered)."""
    requests, errors = parse_prompts(json.dumps({"prompt": p}) for p in prompts)
    run = WarmRun(chain, requests, errors, {"concurrency": 2, **settings})
    outcomes = iter(results)
    trace: list[str] = []
    in_flight: dict[_Finished, Any] = {}
    while (step := run.next_step(len(in_flight))) is not None:
        match step:
            case LookUp(item):
                trace.append(f"look {item.request.line}")
                run.looked_up(item, chain.cache.get(item.key or ""))
            case Send(item):
                trace.append(f"send {item.request.line}")
                in_flight[_Finished(next(outcomes, ANSWERED))] = item
            case Sleep(seconds):
                trace.append(f"pause {seconds:g}")
                clock.advance(seconds)
            case Collect(timeout):
                trace.append(f"collect {timeout}")
                run.collect(in_flight, {next(iter(in_flight))})
    return trace, run.report()


STEP_TABLE = [
    (
        "two at a time: the third waits for the first to finish",
        ["a", "b", "c"],
        {"concurrency": 2},
        [],
        "look 1, send 1, look 2, send 2, look 3, collect None, send 3, collect None, collect None",
        (3, 0, 0),
    ),
    (
        "one at a time",
        ["a", "b"],
        {"concurrency": 1},
        [],
        "look 1, send 1, look 2, collect None, send 2, collect None",
        (2, 0, 0),
    ),
    (
        "a repeated prompt is settled without a lookup",
        ["a", "a"],
        {},
        [],
        "look 1, send 1, collect None",
        (1, 1, 0),
    ),
    (
        "a cached prompt is looked up and skipped",
        ["cached", "b"],
        {},
        [],
        "look 1, look 2, send 2, collect None",
        (1, 1, 0),
    ),
    (
        "refresh sends a cached prompt again",
        ["cached"],
        {"refresh": True},
        [],
        "look 1, send 1, collect None",
        (1, 0, 0),
    ),
    (
        "a dry run looks up and sends nothing",
        ["a", "b"],
        {"dry_run": True},
        [],
        "look 1, look 2",
        (0, 0, 0),
    ),
    (
        "Retry-After holds the next send back: a pause with nothing in flight",
        ["a", "b"],
        {"concurrency": 1},
        [RATE_LIMITED],
        "look 1, send 1, look 2, collect None, pause 1.5, send 2, collect None",
        (1, 0, 1),
    ),
]


@pytest.mark.parametrize(
    ("prompts", "settings", "results", "expected", "counts"),
    [row[1:] for row in STEP_TABLE],
    ids=[row[0] for row in STEP_TABLE],
)
def test_the_step_core_orders_lookups_sends_pauses_and_collects(
    chain, server, clock, prompts, settings, results, expected, counts
):
    warm(chain, [{"prompt": "cached"}])
    server.reset_counts()
    trace, report = _trace_steps(chain, clock, prompts, results, **settings)
    assert ", ".join(trace) == expected
    assert (report.warmed, report.skipped, report.failed) == counts
    assert server.counts["total"] == 0  # the core sends nothing itself: only a driver does


# --------------------------------------------------------------------------------------------
# Responses requests: warmed through chain.responses, under the key its create() reads
# --------------------------------------------------------------------------------------------


def test_warmed_responses_are_answered_by_responses_create_after_an_outage(chain, server, tmp_path):
    prompts = write_prompts(
        tmp_path / "p.jsonl",
        '{"input": "What is the capital of France?", "instructions": "Be brief."}',
        '{"api": "responses", "model": "gpt-4o", "input": [{"role": "user", "content": "Hi"}], '
        '"temperature": 0}',
        '{"prompt": "What is the capital of France?"}',  # chat: its own key, its own send
    )
    report = warm(chain, prompts)
    assert (report.warmed, report.failed, report.ok) == (3, 0, True)
    assert server.route_counts["responses.create"] == 2
    live = server.answer_for(user("What is the capital of France?"), "test-model")
    server.default = Fault.status(503)
    france = chain.responses.create(
        input="What is the capital of France?", instructions="Be brief."
    )
    hi = chain.responses.create(
        model="gpt-4o", input=[{"role": "user", "content": "Hi"}], temperature=0
    )
    assert [trace_of(r).source for r in (france, hi)] == ["cache", "cache"]
    assert france.output_text == live
    assert hi.output_text == server.answer_for(user("Hi"), "gpt-4o")
    assert chain.complete(user("What is the capital of France?")).source == "cache"


def test_a_warmed_response_is_skipped_next_time_and_refreshed_on_request(chain, server):
    line = {"input": "again", "max_output_tokens": 50}
    first = warm(chain, [line])
    second = warm(chain, [line])
    third = warm(chain, [line], refresh=True)
    assert (first.warmed, second.skipped, third.warmed) == (1, 1, 1)
    assert server.route_counts["responses.create"] == 2
    server.default = Fault.status(503)
    refreshed = chain.responses.create(**line)  # the refreshed entry decodes as a Response
    assert trace_of(refreshed).source == "cache"
    assert refreshed.output_text == server.answer_for(user("again"), "test-model")


def test_a_responses_request_cut_short_is_never_warmed(chain, server):
    server.default = Fault.incomplete(after_chunks=2, reason="unstated")  # every attempt
    report = warm(chain, [{"input": "long"}])
    assert (report.warmed, report.failed) == (0, 1)
    assert chain.request_key(RESPONSES, {"input": "long"}) is not None
    assert chain.cache.get(chain.request_key(RESPONSES, {"input": "long"}) or "") is None


def test_awarm_warms_responses_requests_too(achain, server):
    chain, loop = achain
    loop.run_until_complete(awarm(chain, [{"input": "a", "temperature": 0}]))
    server.default = Fault.status(503)
    answer = loop.run_until_complete(chain.responses.create(input="a", temperature=0))
    assert trace_of(answer).source == "cache"


def test_cli_dry_run_shows_a_responses_request_as_it_would_be_sent(
    tmp_path, server, capsys, monkeypatch
):
    config = _cli_config(tmp_path, server.base_url, monkeypatch)
    prompts = write_prompts(
        tmp_path / "p.jsonl",
        '{"input": "Hi", "instructions": "Be brief."}',
        '{"input": "Hi", "conversation": "conv_1"}',
    )
    code, out, err = _run_cli(capsys, "warm", prompts, "--config", config, "--dry-run")
    assert code == 1
    assert out.splitlines()[0] == (
        f'{prompts}:1: would send {{"model": "test-model", "input": "Hi", '
        '"instructions": "Be brief."}'
    )
    assert err.splitlines() == [
        f"{prompts}:2: a 'conversation' request is never cached (the conversation grows with "
        "every turn), so it cannot be warmed; use 'input' or 'previous_response_id'"
    ]
    assert server.counts["total"] == 0
