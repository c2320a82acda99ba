"""`fallbackchain demo` tells the resilience story truthfully; `status` shows what is in effect."""

from __future__ import annotations

import io
import json
import time

import pytest

from fallbackchain._backends import gate_store
from fallbackchain._config_file import load_config
from fallbackchain.breaker import BreakerGate
from fallbackchain.cli import main
from fallbackchain.testing import run_demo

from .redis_server import RedisServer, require_redis_package, require_redis_server


@pytest.fixture(scope="module")
def story(tmp_path_factory):
    record = tmp_path_factory.mktemp("demo") / "events.jsonl"
    out = io.StringIO()
    started = time.monotonic()
    result = run_demo(out, record=record)
    return result, out.getvalue(), record, time.monotonic() - started


@pytest.mark.slow  # the whole demo (the story fixture)
def test_the_demo_runs_in_under_30_seconds(story):
    assert story[3] < 30


@pytest.mark.slow  # the whole demo (the story fixture)
def test_each_chapter_is_answered_by_the_tier_the_story_says(story):
    result = story[0]
    assert result.sources == {
        "healthy": ["stream"],
        "drop": ["stream"],
        "rate_limit": ["stream"],
        "stream_broken": ["completion"],
        "provider_down": ["backup", "backup"],
        "all_down": ["cache"] * 6,
        "recovered": ["stream"],
    }


@pytest.mark.slow  # the whole demo (the story fixture)
def test_no_text_is_shown_twice_and_open_breakers_leave_upstream_untouched(story):
    result = story[0]
    assert result.chain.duplicated == 0
    assert result.open_breaker_answers >= 3
    assert result.upstream_during_open_breakers == 0


@pytest.mark.slow  # the whole demo (the story fixture)
def test_the_replayed_tutorial_loop_does_worse_on_the_same_faults(story):
    result = story[0]
    ours, theirs = result.chain, result.tutorial
    assert theirs.upstream_calls > 2 * ours.upstream_calls
    assert theirs.duplicated > 0
    assert (ours.truncated_accepted, theirs.truncated_accepted) == (0, 1)
    assert ours.failures == 0
    assert theirs.failures > 0
    assert theirs.waited > 10 * ours.waited


@pytest.mark.slow  # the whole demo (the story fixture)
def test_a_dropped_background_responses_stream_is_resumed_not_generated_again(story):
    result, out = story[0], story[1]
    assert "== Responses API: a background stream dropped mid-answer is resumed" in out
    # one generation (one POST, billed once), resumed by one GET where it stopped
    assert (result.chain.resumed_posts, result.resumed_retrievals) == (1, 1)
    assert result.chain.resumed_repeated == 0  # each event shown once
    assert "resumed after event" in result.resumed_after
    assert "no new request" in result.resumed_after
    # the tutorial loop, on the same drop, asks again from the start and shows it twice
    assert result.tutorial.resumed_posts == 2
    assert result.tutorial.resumed_repeated > 0
    assert "Responses stream dropped mid-answer: generations billed" in out
    rows = [json.loads(line) for line in story[2].read_text().splitlines()]
    [started] = [r for r in rows if r["phase"] == "resumed" and r["event"] == "RequestStarted"]
    assert started["api"] == "responses"


@pytest.mark.slow  # the whole demo (the story fixture)
def test_the_summary_table_is_printed_without_colour_off_a_terminal(story):
    out = story[1]
    assert "== Summary" in out
    assert "answers served" in out and "13/13" in out
    assert "\033[" not in out


@pytest.mark.slow  # the whole demo (the story fixture)
def test_record_writes_every_event_as_json_lines(story):
    rows = [json.loads(line) for line in story[2].read_text().splitlines()]
    kinds = {row["event"] for row in rows}
    assert {"RequestStarted", "AttemptEnded", "FallbackTaken", "CacheEvent", "ChainEvent"} <= kinds
    drop = [r for r in rows if r["phase"] == "drop" and r["event"] == "ChainEvent"]
    assert drop and all(r["type"] == "delta" for r in drop)  # continued, not restarted


@pytest.mark.slow  # the whole demo
def test_demo_command_exits_zero(capsys):
    assert main(["demo"]) == 0
    assert "== Summary" in capsys.readouterr().out


def write_config(tmp_path, extra=""):
    path = tmp_path / "c.toml"
    path.write_text(
        f'[openai]\napi_key_env = "FC_STATUS_KEY"\n[cache]\ndirectory = "{tmp_path / "cache"}"\n'
        + extra
    )
    return path


def test_status_with_memory_breakers_says_they_are_per_process(tmp_path, capsys):
    assert main(["status", "--config", str(write_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "stream: kept in each process" in out
    assert "no cache yet (nothing stored there)" in out  # and none created by looking
    assert not (tmp_path / "cache").exists() and not any(tmp_path.glob("**/cache.db"))
    # true for both APIs: the same breakers, one cache holding both kinds of answer
    assert "chat and Responses requests share them" in out
    assert "chat completions and Responses answers" in out
    assert "[openai]" in out and "FC_STATUS_KEY" in out


def test_status_masks_passwords_in_the_config_it_prints(tmp_path, capsys):
    path = write_config(tmp_path, '[breaker]\nredis_url = "redis://:hunter2@127.0.0.1:1/0"\n')
    assert main(["status", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "hunter2" not in out
    assert "redis://:***@127.0.0.1:1/0" in out


def test_status_reads_shared_breaker_states_from_redis(tmp_path, capsys):
    require_redis_package()
    require_redis_server()
    with RedisServer() as redis_server:
        path = write_config(
            tmp_path,
            f'[breaker]\nstorage = "redis"\nredis_url = "{redis_server.url}"\n'
            'namespace = "status-test"\nfail_max = 2\n',
        )
        config = load_config(path)
        gate = BreakerGate("stream", fail_max=2, reset_timeout=30, store=gate_store(config, "stream"))
        for _ in range(2):
            gate.acquire().failure()
        assert main(["status", "--config", str(path)]) == 0
        out = capsys.readouterr().out
        assert "stream: open (failures 2)" in out
        assert "completion: closed (failures 0)" in out


def test_status_on_a_bad_config_is_one_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.toml"
    path.write_text("[retry]\nmax_attempts = 0\n")
    assert main(["status", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "retry.max_attempts" in err and str(path) in err
    assert "Traceback" not in err


@pytest.mark.slow  # the whole demo
def test_the_test_bed_runs_the_demo_too(capsys):
    from fallbackchain.testing.__main__ import main as testing_main

    assert testing_main(["demo"]) == 0
    assert "Everything down" in capsys.readouterr().out
