"""Multi-fallback: other models and providers, each behind its own breaker, before the cache.

A second FaultServer plays the backup provider. Every test runs sync and async.
"""

from __future__ import annotations

import time

import openai
import pytest

from fallbackchain import AllTiersFailedError, ConfigError, FallbackConfig, load_config
from fallbackchain.testing import Fault

from .conftest import text_after_last_reset, user

BACKUP = FallbackConfig(name="backup", model="backup-model", base_url="http://127.0.0.1:1/v1")


@pytest.fixture
def chain_with_backup(harness_factory, backup):
    def make(*entries: FallbackConfig, **overrides):
        entries = entries or (BACKUP,)
        servers = {e.name: backup for e in entries}
        return harness_factory(fallbacks=entries, fallback_servers=servers, **overrides)

    return make


def test_order_is_the_primary_route_within_its_budget_then_the_fallback(
    chain_with_backup, server, backup
):
    h = chain_with_backup()
    server.default = Fault.status(503)
    events, response = h.ask("hello")
    assert response.source == "backup"
    # one budget for the primary route (stream and completion tiers together, #13)
    assert [a.tier for a in response.attempts] == ["stream"] * 3 + ["backup"]
    assert server.counts["completion"] == 0
    assert response.completion.model == "backup-model"
    assert response.completion.usage is not None
    assert response.text == backup.answer_for(user("hello"), "backup-model")
    assert text_after_last_reset(events) == response.text
    assert backup.requests[-1].body["model"] == "backup-model"


def test_a_non_streaming_fallback_is_asked_for_a_plain_completion(
    chain_with_backup, server, backup
):
    h = chain_with_backup(
        FallbackConfig(
            name="backup", model="backup-model", stream=False, base_url="http://127.0.0.1:1/v1"
        )
    )
    server.default = Fault.status(503)
    _, response = h.ask("hello")
    assert response.source == "backup"
    assert (backup.counts["stream"], backup.counts["completion"]) == (0, 1)


def test_each_fallback_has_its_own_breaker(chain_with_backup, server, backup):
    h = chain_with_backup()
    assert set(h.chain.breaker_states()) == {"stream", "completion", "backup"}
    server.default = Fault.status(503)
    backup.default = Fault.status(503)
    for _ in range(4):  # the completion tier takes the route's tries once stream's is open
        with pytest.raises(AllTiersFailedError):
            h.ask("x")
    assert h.chain.breaker_states() == {"stream": "open", "completion": "open", "backup": "open"}


def test_fallback_thresholds_can_be_overridden(chain_with_backup, server, backup):
    h = chain_with_backup(
        FallbackConfig(name="backup", model="m", fail_max=1, base_url="http://127.0.0.1:1/v1")
    )
    server.default = Fault.status(503)
    backup.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):
        h.ask("x")
    assert h.chain.breaker_states()["backup"] == "open"
    assert h.chain.breaker_states()["stream"] == "closed"  # 3 failures < fail_max 5


@pytest.mark.slow  # about a second of real-time timeouts per mode
def test_a_silent_primary_fails_over_at_once(chain_with_backup, server, backup):
    h = chain_with_backup(
        openai__first_token_timeout=0.3,
        openai__idle_timeout=0.3,
        openai__timeout=0.5,
        real_time=True,
    )
    server.default = Fault.slow_first_byte(seconds=3.0)
    started = time.monotonic()
    _, response = h.ask("hello")
    assert response.source == "backup"
    assert time.monotonic() - started < 2.0
    # one request to the silent model: its completion tier is not asked while a route lives
    assert (server.counts["stream"], server.counts["completion"]) == (1, 0)


def test_context_length_goes_to_the_next_fallback_with_a_larger_window(
    chain_with_backup, server, backup
):
    small = FallbackConfig(
        name="small", model="small-model", context_window=8_000, base_url="http://127.0.0.1:1/v1"
    )
    big = FallbackConfig(
        name="big", model="big-model", context_window=128_000, base_url="http://127.0.0.1:1/v1"
    )
    h = chain_with_backup(small, big, openai__context_window=16_000)
    server.default = Fault.status(400, error_code="context_length_exceeded")
    _, response = h.ask("a very long prompt")
    assert response.source == "big"
    assert server.counts["total"] == 1  # not retried, not sent to the same model's completion
    assert [b.body["model"] for b in backup.requests] == ["big-model"]
    assert h.chain.breaker_states() == {
        "stream": "closed",
        "completion": "closed",
        "small": "closed",
        "big": "closed",
    }
    assert h.chain.breakers["stream"].fail_counter == 0


def test_context_length_propagates_when_no_fallback_is_larger(chain_with_backup, server, backup):
    h = chain_with_backup(
        FallbackConfig(
            name="backup", model="m", context_window=8_000, base_url="http://127.0.0.1:1/v1"
        ),
        openai__context_window=16_000,
    )
    server.default = Fault.status(400, error_code="context_length_exceeded")
    with pytest.raises(openai.BadRequestError) as info:
        h.ask("long")
    assert info.value.code == "context_length_exceeded"
    assert backup.counts["total"] == 0


def test_a_content_policy_rejection_propagates_at_once_and_is_never_served_from_cache(
    chain_with_backup, server, backup
):
    h = chain_with_backup()
    h.ask("hello")  # cached
    server.push(
        Fault.status(
            400,
            error_code="content_policy_violation",
            message="Your request was rejected by the safety system.",
        )
    )
    with pytest.raises(openai.BadRequestError) as info:
        h.ask("hello")
    assert "safety system" in info.value.message
    assert backup.counts["total"] == 0
    assert server.counts["total"] == 2


def test_mid_stream_failure_continued_on_another_model_resets_first(
    chain_with_backup, server, backup
):
    h = chain_with_backup()
    server.push(Fault.drop(after_chunks=4), stream=True)
    server.push(Fault.status(503), times=5)
    events, response = h.ask("hello")
    assert response.source == "backup"
    types = [e.type for e in events]
    assert "reset" in types
    assert text_after_last_reset(events) == response.text
    shown_before_reset = "".join(e.text for e in events[: types.index("reset")])
    assert shown_before_reset and not response.text.startswith(shown_before_reset)


def test_a_flapping_primary_is_probed_once_per_reset_timeout_then_takes_traffic_back(
    chain_with_backup, server, backup, clock
):
    h = chain_with_backup()
    reset = h.chain.config.breaker.reset_timeout
    server.default = Fault.status(503)
    for _ in range(4):
        h.ask("hello")  # backup answers while the primary's failures open its breakers
    assert h.chain.breaker_states()["stream"] == "open"
    assert h.chain.breaker_states()["completion"] == "open"
    server.reset_counts()
    for _ in range(5):
        _, response = h.ask("hello")
        assert response.source == "backup"
    assert server.counts["total"] == 0  # untouched while open
    clock.advance(reset + 0.1)
    h.ask("hello")
    assert server.counts["stream"] == 1  # one probe (it failed: still down)
    assert h.chain.breaker_states()["stream"] == "open"
    server.default = Fault.ok()
    clock.advance(reset + 0.1)
    _, response = h.ask("hello")
    assert response.source == "stream"  # back within one reset_timeout of recovering
    assert h.chain.breaker_states()["stream"] == "closed"


def test_a_fallbacks_answer_is_cached_under_the_same_key(chain_with_backup, server, backup):
    h = chain_with_backup()
    server.default = Fault.status(503)
    _, live = h.ask("hello")
    assert live.source == "backup"
    backup.default = Fault.status(503)
    _, cached = h.ask("hello")
    assert cached.source == "cache"
    assert cached.text == live.text


def test_fallbacks_load_from_toml(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[[fallbacks]]\nname = "backup"\nmodel = "gpt-4.1-mini"\n'
        'base_url = "http://127.0.0.1:8001/v1"\napi_key_env = "BACKUP_API_KEY"\n'
        "stream = false\ncontext_window = 128000\n"
    )
    (entry,) = load_config(path).fallbacks
    assert (entry.name, entry.model, entry.stream, entry.context_window) == (
        "backup",
        "gpt-4.1-mini",
        False,
        128000,
    )


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ('[[fallbacks]]\nname = "b"\n', "fallbacks[0].model"),
        ('[[fallbacks]]\nmodel = "m"\n', "fallbacks[0].name"),
        (
            '[[fallbacks]]\nname = "b"\nmodel = "m"\n[[fallbacks]]\nname = "b"\nmodel = "n"\n',
            "fallbacks[1].name",
        ),
        ('[[fallbacks]]\nname = "cache"\nmodel = "m"\n', "fallbacks[0].name"),
        ('[[fallbacks]]\nname = "b"\nmodel = "m"\nbase_url = "ftp://x"\n', "fallbacks[0].base_url"),
        ('[[fallbacks]]\nname = "b"\nmodel = "m"\ncolour = "red"\n', "fallbacks[0].colour"),
        (
            '[[fallbacks]]\nname = "b"\nmodel = "m"\ncontext_window = -1\n',
            "fallbacks[0].context_window",
        ),
        ('[fallbacks]\nname = "b"\n', "fallbacks"),
    ],
)
def test_bad_fallback_entries_name_the_entry_and_key(tmp_path, body, key):
    path = tmp_path / "c.toml"
    path.write_text(body)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == key
    assert str(path) in str(info.value)


def test_a_fallback_key_variable_that_is_missing_is_a_clear_error(monkeypatch):
    from fallbackchain import ChainConfig, FallbackChain, OpenAIConfig

    monkeypatch.setenv("PRIMARY_KEY", "x")
    monkeypatch.delenv("BACKUP_API_KEY", raising=False)
    config = ChainConfig(
        openai=OpenAIConfig(api_key_env="PRIMARY_KEY"),
        fallbacks=(FallbackConfig(name="b", model="m", api_key_env="BACKUP_API_KEY"),),
    )
    with pytest.raises(ConfigError, match="BACKUP_API_KEY is not set"):
        FallbackChain(config)


def test_an_exhausted_quota_skips_only_that_providers_tiers(chain_with_backup, server, backup):
    h = chain_with_backup()
    server.push(Fault.status(429, error_code="insufficient_quota", error_type="insufficient_quota"))
    _, response = h.ask("hello")
    assert response.source == "backup"
    assert server.counts["total"] == 1  # the primary's completion tier was skipped too
    assert [a.tier for a in response.attempts] == ["stream", "backup"]
