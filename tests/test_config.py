"""Config loading: defaults, the shipped files, and clear errors naming file, key and value."""

from __future__ import annotations

from pathlib import Path

import pytest

from fallbackchain import ChainConfig, ConfigError, RetryConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return path


def test_shipped_production_config_equals_the_built_in_defaults():
    assert load_config(ROOT / "config" / "fallbackchain.toml") == ChainConfig()


def test_shipped_test_profile_loads():
    cfg = load_config(ROOT / "config" / "test.toml")
    assert cfg.retry.base_delay < ChainConfig().retry.base_delay


def test_missing_keys_take_defaults(tmp_path):
    cfg = load_config(write(tmp_path, "[retry]\nmax_attempts = 2\n"))
    assert cfg.retry.max_attempts == 2
    assert cfg.breaker == ChainConfig().breaker


def test_integers_are_accepted_for_float_keys(tmp_path):
    assert load_config(write(tmp_path, "[openai]\ntimeout = 5\n")).openai.timeout == 5.0


@pytest.mark.parametrize(
    ("text", "key", "value"),
    [
        ("[retry]\nmax_attempts = 0\n", "retry.max_attempts", "0"),
        ("[retry]\nmax_attempts = 'three'\n", "retry.max_attempts", "'three'"),
        ("[retry]\nmax_atempts = 3\n", "retry.max_atempts", "3"),
        ("[openai]\ntimeout = -1.0\n", "openai.timeout", "-1.0"),
        ("[breaker]\nfail_max = true\n", "breaker.fail_max", "True"),
        ("[cache]\nttl = 0\n", "cache.ttl", "0"),
        ("[openai]\nbase_url = 'ftp://x'\n", "openai.base_url", "'ftp://x'"),
        ("[openai]\nmodel = ''\n", "openai.model", "''"),
        ("[retry]\nbase_delay = 9.0\nmax_delay = 1.0\n", "retry.base_delay", "9.0"),
    ],
)
def test_bad_values_name_file_key_and_value(tmp_path, text, key, value):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    assert repr(key) in message
    assert value in message
    assert info.value.key == key


def test_unknown_section_is_named(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section \[retries\]"):
        load_config(write(tmp_path, "[retries]\nmax_attempts = 3\n"))


def test_invalid_toml_names_the_file_and_line(tmp_path):
    path = write(tmp_path, "[retry]\nmax_attempts = = 3\n")
    with pytest.raises(ConfigError, match=r"invalid TOML.*line 2") as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")


def test_config_built_in_code_is_validated_too():
    with pytest.raises(ConfigError, match=r"retry\.deadline"):
        ChainConfig(retry=RetryConfig(deadline=0))


def test_missing_api_key_names_the_variable_not_a_value(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"OPENAI_API_KEY is not set"):
        ChainConfig().openai.api_key()


def test_config_error_is_a_value_error_and_a_fallbackchain_error():
    from fallbackchain import FallbackChainError

    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, FallbackChainError)


def test_shipped_multi_provider_example_loads():
    cfg = load_config(ROOT / "config" / "multi-provider.toml")
    (local,) = cfg.fallbacks
    assert (local.name, local.fail_max, local.resolved(cfg.openai).base_url) == (
        "local", 3, "http://127.0.0.1:11434/v1")
