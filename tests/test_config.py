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


# -- issue #11 item 7: values that used to crash, and every problem in one pass ----------------


def write_bytes(tmp_path, data):
    path = tmp_path / "c.toml"
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[retry]\nmax_attempts = " + "9" * 400 + "\n", "retry.max_attempts"),
        ("[openai]\ntimeout = " + "9" * 400 + "\n", "openai.timeout"),
        ("[cache]\nttl = -" + "9" * 400 + "\n", "cache.ttl"),
        ("[[fallbacks]]\nname = 'b'\nmodel = 'm'\nfail_max = " + "9" * 400 + "\n", "fallbacks[0].fail_max"),
    ],
)
def test_a_400_digit_integer_is_a_config_error(tmp_path, text, key):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key
    assert "digits" in str(info.value)  # described, not printed in full
    assert "9" * 100 not in str(info.value)


def test_an_integer_beyond_the_interpreters_digit_limit_is_a_config_error(tmp_path):
    path = write(tmp_path, "[retry]\n\nmax_attempts = " + "9" * 5000 + "\n")
    with pytest.raises(ConfigError, match="too many digits") as info:
        load_config(path)
    assert info.value.line == 3


@pytest.mark.parametrize("depth", [50, 400, 3000])
def test_deeply_nested_arrays_are_a_config_error(tmp_path, depth):
    text = "[retry]\nmax_attempts = " + "[" * depth + "1" + "]" * depth + "\n"
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert len(str(info.value)) < 400


def test_deeply_nested_inline_tables_are_a_config_error(tmp_path):
    text = "x = " + "{a = " * 2000 + "1" + "}" * 2000 + "\n"
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(write(tmp_path, text))


def test_a_byte_order_mark_is_named_with_the_fix(tmp_path):
    path = write_bytes(tmp_path, b"\xef\xbb\xbf[retry]\nmax_attempts = 2\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "byte-order mark" in message
    assert "without a BOM" in message
    assert "Invalid statement" not in message
    assert info.value.line == 1


def test_utf16_text_is_named(tmp_path):
    path = write_bytes(tmp_path, "[retry]\n".encode("utf-16"))
    with pytest.raises(ConfigError, match="UTF-16"):
        load_config(path)


def test_non_utf8_bytes_name_the_line(tmp_path):
    path = write_bytes(tmp_path, b"[openai]\nmodel = 'gpt'\nbase_url = '\xff'\n")
    with pytest.raises(ConfigError, match=r"not UTF-8.*0xff.*line 3") as info:
        load_config(path)
    assert info.value.line == 3


def test_a_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="is a directory") as info:
        load_config(tmp_path)
    assert info.value.file == str(tmp_path)


def test_every_problem_is_reported_in_one_pass_in_file_order(tmp_path):
    path = write(
        tmp_path,
        "[retry]\n"
        "max_atempts = 3\n"  # line 2
        "deadline = 0\n"  # line 3
        "[openai]\n"
        "timeout = 'slow'\n"  # line 5
        "[breaker]\n"
        "storage = 'disk'\n"  # line 7
        "[cach]\n",  # line 8
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert [(e.key, e.line) for e in error.errors] == [
        ("retry.max_atempts", 2),
        ("retry.deadline", 3),
        ("openai.timeout", 5),
        ("breaker.storage", 7),
        ("cach", 8),
    ]
    message = str(error)
    assert message.startswith(f"{path}: 5 problems in the config:")
    for problem in error.errors:
        assert str(problem) in message
        assert problem.file == str(path)
    assert (error.key, error.line) == ("retry.max_atempts", 2)  # the first one's
    assert "must be > 0 and <= 86400" in message
    assert "must be one of 'memory' or 'redis'" in message
    assert "must be a number, not a string" in message


def test_a_single_error_lists_itself():
    with pytest.raises(ConfigError) as info:
        ChainConfig(retry=RetryConfig(max_attempts=0))
    assert info.value.errors == [info.value]
    assert info.value.line is None


@pytest.mark.parametrize(
    ("text", "suggestion"),
    [
        ("[retry]\nmax_atempts = 3\n", "did you mean 'max_attempts'?"),
        ("[openai]\nfirst_token_timout = 3\n", "did you mean 'first_token_timeout'?"),
        ("[retries]\nmax_attempts = 3\n", "did you mean [retry]?"),
        ("[[fallbacks]]\nname = 'b'\nmodel = 'm'\nstreem = true\n", "did you mean 'stream'?"),
    ],
)
def test_unknown_keys_and_sections_suggest_the_closest_name(tmp_path, text, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert suggestion in str(info.value)


def test_source_is_not_a_section_a_file_may_set(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown section \[source\]"):
        load_config(write(tmp_path, "source = 'elsewhere.toml'\n"))


def test_lines_are_found_for_keys_in_arrays_of_tables_and_dotted_keys(tmp_path):
    path = write(
        tmp_path,
        "[[fallbacks]]\nname = 'a'\nmodel = 'm'\n\n"
        "[[fallbacks]]\nname = 'b'\nmodel = 'm'\ntimeout = -1\n\n"
        "[[fallbacks]]\nname = 'c'\n",  # model missing: the entry's header line
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert [(e.key, e.line) for e in info.value.errors] == [
        ("fallbacks[1].timeout", 8),
        ("fallbacks[2].model", 10),
    ]
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "retry.max_attempts = 0\n"))
    assert info.value.line == 1


def test_a_file_and_code_are_checked_by_the_same_declarations(tmp_path):
    from fallbackchain import OpenAIConfig

    with pytest.raises(ConfigError) as from_code:
        ChainConfig(openai=OpenAIConfig(timeout=float("nan")))
    with pytest.raises(ConfigError) as from_file:
        load_config(write(tmp_path, "[openai]\ntimeout = nan\n"))
    assert from_code.value.key == from_file.value.key == "openai.timeout"
    assert "finite" in str(from_code.value) and "finite" in str(from_file.value)


def test_a_config_built_in_code_gets_checked_values():
    from fallbackchain import FallbackConfig, OpenAIConfig

    config = ChainConfig(
        openai=OpenAIConfig(timeout=5),  # an int where seconds are a float
        fallbacks=[FallbackConfig(name="b", model="m")],  # a list where a tuple is expected
    )
    assert isinstance(config.openai.timeout, float)
    assert isinstance(config.fallbacks, tuple)


# -- issue #11 item 3: secrets never shown ----------------------------------------------------


@pytest.mark.parametrize(
    "pasted",
    [
        "sk-proj-Zq9xT3BlbkFJabc123def456",
        "a3f9c2e1b4d5a6f7e8d9c0b1a2f3e4d5",  # an Azure key: valid as a name, but a key
        "ghp_Zq9xT3BlbkFJabc123def456ghi",
        "my key",
    ],
)
def test_an_api_key_pasted_into_api_key_env_is_refused_without_echo(tmp_path, pasted):
    for text in (
        f"[openai]\napi_key_env = '{pasted}'\n",
        f"[[fallbacks]]\nname = 'b'\nmodel = 'm'\napi_key_env = '{pasted}'\n",
    ):
        with pytest.raises(ConfigError) as info:
            load_config(write(tmp_path, text))
        message = str(info.value)
        assert pasted not in message
        assert "(got '***'; line" in message
        assert "NAME of the environment variable" in message
        assert info.value.value == "***"
        assert pasted not in repr(info.value.errors)


def test_an_api_key_pasted_in_code_is_refused_without_echo():
    from fallbackchain import OpenAIConfig

    key = "sk-proj-Zq9xT3BlbkFJabc123def456"
    with pytest.raises(ConfigError) as info:
        ChainConfig(openai=OpenAIConfig(api_key_env=key))
    assert key not in str(info.value)
    assert key not in repr(OpenAIConfig(api_key_env=key))


@pytest.mark.parametrize(
    ("text", "secrets"),
    [
        ("[openai]\nbase_url = 'ftp://user:hunter2@h/v1'\n", ["hunter2"]),
        ("[openai]\nbase_url = 'api.example.com/v1?api-key=AZ9secret'\n", ["AZ9secret"]),
        ("[[fallbacks]]\nname = 'b'\nmodel = 'm'\nbase_url = 'ftp://u:hunter2@h/?token=T0k'\n", ["hunter2", "T0k"]),
        ("[breaker]\nredis_url = 'http://:hunter2@h:6379/0?password=pw2'\n", ["hunter2", "pw2"]),
        ("[openai]\napi_key = 'sk-proj-Zq9xT3BlbkFJabc123def456'\n", ["sk-proj-"]),  # unknown key
        ("[openai]\npassword = 'hunter2'\n", ["hunter2"]),
        ("[openai]\nextra = {password = 'hunter2', token = ['T0k']}\n", ["hunter2", "T0k"]),
    ],
)
def test_config_errors_never_show_credentials(tmp_path, text, secrets):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    shown = str(info.value) + repr(info.value.value)
    for secret in secrets:
        assert secret not in shown
    assert "***" in shown


def test_config_reprs_mask_urls():
    from fallbackchain import BreakerConfig, FallbackConfig, OpenAIConfig

    config = ChainConfig(
        openai=OpenAIConfig(base_url="https://u:hunter2@h/v1?api-key=AZ9secret"),
        breaker=BreakerConfig(redis_url="redis://:pw1@h:6379/0?password=pw2"),
        fallbacks=(FallbackConfig(name="b", model="m", base_url="https://h/v1?token=T0k"),),
    )
    for shown in (repr(config), repr(config.routes()), str(config)):
        for secret in ("hunter2", "AZ9secret", "pw1", "pw2", "T0k"):
            assert secret not in shown
    assert "api-key=***" in repr(config)


# -- issue #13: per-route settings, resolved in one place -------------------------------------


def test_per_route_settings_parse_and_default_to_unset(tmp_path):
    cfg = load_config(
        write(
            tmp_path,
            "[openai]\nstream_usage = false\n[retry]\nhedge_after = 1.5\n"
            "[[fallbacks]]\nname = 'local'\nmodel = 'llama'\n"
            "timeout = 60\nfirst_token_timeout = 30\nidle_timeout = 20\nmax_attempts = 1\n"
            "stream_usage = true\nhedge_after = 0\n",
        )
    )
    assert cfg.openai.stream_usage is False
    assert cfg.retry.hedge_after == 1.5
    (local,) = cfg.fallbacks
    assert (local.timeout, local.first_token_timeout, local.idle_timeout) == (60.0, 30.0, 20.0)
    assert (local.max_attempts, local.stream_usage, local.hedge_after) == (1, True, 0.0)
    default = ChainConfig()
    assert default.openai.stream_usage is True
    assert default.retry.hedge_after is None


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[[fallbacks]]\nname = 'primary'\nmodel = 'm'\n", "fallbacks[0].name"),
        ("[[fallbacks]]\nname = 'b'\nmodel = 'm'\ntimeout = 0\n", "fallbacks[0].timeout"),
        ("[[fallbacks]]\nname = 'b'\nmodel = 'm'\nmax_attempts = 0\n", "fallbacks[0].max_attempts"),
        ("[[fallbacks]]\nname = 'b'\nmodel = 'm'\nstream_usage = 1\n", "fallbacks[0].stream_usage"),
        ("[[fallbacks]]\nname = 'b'\nmodel = 'm'\nhedge_after = -1\n", "fallbacks[0].hedge_after"),
        ("[retry]\nhedge_after = inf\n", "retry.hedge_after"),
        ("[openai]\nstream_usage = 'no'\n", "openai.stream_usage"),
    ],
)
def test_bad_per_route_settings_are_config_errors(tmp_path, text, key):
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    assert info.value.key == key


def test_routes_resolve_every_value_primary_first():
    from fallbackchain import BreakerConfig, FallbackConfig, OpenAIConfig, RouteConfig

    config = ChainConfig(
        openai=OpenAIConfig(
            base_url="https://primary/v1", api_key_env="P_KEY", model="big", timeout=30,
            first_token_timeout=10, idle_timeout=5, context_window=128_000, stream_usage=True,
        ),
        retry=RetryConfig(max_attempts=3, hedge_after=2.0),
        breaker=BreakerConfig(fail_max=5, reset_timeout=30),
        fallbacks=(
            FallbackConfig(name="same", model="small"),  # everything inherited
            FallbackConfig(
                name="local", model="llama", base_url="http://local/v1", api_key_env="L_KEY",
                stream=False, context_window=8192, fail_max=2, reset_timeout=5, timeout=60,
                first_token_timeout=40, idle_timeout=15, max_attempts=1, stream_usage=False,
                hedge_after=0,  # 0: this route never hedges
            ),
        ),
    )
    primary, same, local = config.routes()
    assert primary == RouteConfig(
        name="primary", model="big", base_url="https://primary/v1", api_key_env="P_KEY",
        streaming=True, timeout=30.0, first_token_timeout=10.0, idle_timeout=5.0,
        max_attempts=3, hedge_after=2.0, stream_usage=True, context_window=128_000,
        fail_max=5, reset_timeout=30.0,
    )
    assert same == RouteConfig(
        name="same", model="small", base_url="https://primary/v1", api_key_env="P_KEY",
        streaming=True, timeout=30.0, first_token_timeout=10.0, idle_timeout=5.0,
        max_attempts=3, hedge_after=2.0, stream_usage=True, context_window=0,
        fail_max=5, reset_timeout=30.0,
    )
    assert local == RouteConfig(
        name="local", model="llama", base_url="http://local/v1", api_key_env="L_KEY",
        streaming=False, timeout=60.0, first_token_timeout=40.0, idle_timeout=15.0,
        max_attempts=1, hedge_after=None, stream_usage=False, context_window=8192,
        fail_max=2, reset_timeout=5.0,
    )
    assert primary.tiers == (("stream", True), ("completion", False))
    assert same.tiers == (("same", True),)
    assert local.tiers == (("local", False),)
    assert ChainConfig().routes()[0].hedge_after is None  # hedging is opt-in
    assert ChainConfig(retry=RetryConfig(hedge_after=0)).routes()[0].hedge_after is None


def test_a_route_config_is_frozen():
    import dataclasses

    route = ChainConfig().routes()[0]
    with pytest.raises(dataclasses.FrozenInstanceError):
        route.timeout = 1.0  # type: ignore[misc]


def test_a_fallback_resolves_its_per_route_overrides():
    from fallbackchain import FallbackConfig

    primary = ChainConfig().openai
    resolved = FallbackConfig(name="b", model="m", first_token_timeout=40, stream_usage=False).resolved(primary)
    assert (resolved.first_token_timeout, resolved.timeout, resolved.stream_usage) == (40.0, 30.0, False)


def test_an_unchecked_openai_config_never_echoes_a_pasted_key(monkeypatch):
    from fallbackchain import OpenAIConfig

    key = "sk-proj-Zq9xT3BlbkFJabc123def456"
    monkeypatch.delenv(key, raising=False)
    with pytest.raises(ConfigError) as info:
        OpenAIConfig(api_key_env=key).api_key()
    assert key not in str(info.value)
    assert "environment variable *** is not set" in str(info.value)
