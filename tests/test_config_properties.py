"""Property tests: whatever a config file or mapping holds, the result is a config or a ConfigError.

Never another exception, never a message without the file, never a planted secret echoed.
"""

from __future__ import annotations

import dataclasses
import string
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fallbackchain import (
    BreakerConfig,
    CacheConfig,
    ChainConfig,
    ConfigError,
    FallbackConfig,
    OpenAIConfig,
    RetryConfig,
    load_config,
)
from fallbackchain._config_file import config_from_mapping

SECRET = "sk-proj-Zq9xPLANTEDsecret0123456789"
FILE = "generated.toml"

SECTIONS = {
    "openai": OpenAIConfig,
    "retry": RetryConfig,
    "breaker": BreakerConfig,
    "cache": CacheConfig,
}
FALLBACK_KEYS = [f.name for f in dataclasses.fields(FallbackConfig)]

# What tomllib can produce, nested; plus the edges that used to crash.
scalars = st.one_of(
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**300, max_value=10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.just(SECRET),
    st.just(f"https://u:{SECRET}@h/v1?api-key={SECRET}"),
    st.datetimes(),
    st.dates(),
    st.times(),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=20,
)


def deep_list(depth: int) -> object:
    value: object = 1
    for _ in range(depth):
        value = [value]
    return value


def section_body(keys: list[str]) -> st.SearchStrategy[dict[str, object]]:
    known = st.sampled_from(keys)
    return st.dictionaries(known | st.text(max_size=12), values, max_size=6)


sections = st.fixed_dictionaries(
    {},
    optional={
        **{name: section_body([f.name for f in dataclasses.fields(cls)]) | values for name, cls in SECTIONS.items()},
        "fallbacks": st.lists(section_body(FALLBACK_KEYS) | values, max_size=3) | values,
    },
)
documents = st.one_of(
    sections,
    st.dictionaries(st.text(max_size=10), values, max_size=4),
    sections.map(lambda d: {**d, "retry": {"max_attempts": deep_list(500)}}),
)


def check(config_or_error: ChainConfig | ConfigError) -> None:
    if isinstance(config_or_error, ConfigError):
        message = str(config_or_error)
        assert FILE in message
        assert SECRET not in message
        assert SECRET not in repr(config_or_error.value)
        assert config_or_error.errors
        for problem in config_or_error.errors:
            assert SECRET not in str(problem)
    else:
        assert SECRET not in repr(config_or_error)
        config_or_error.routes()


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(documents)
def test_any_parsed_document_gives_a_config_or_a_config_error(data):
    try:
        result: ChainConfig | ConfigError = config_from_mapping(data, file=FILE)
    except ConfigError as exc:
        result = exc
    check(result)


toml_lines = st.one_of(
    st.sampled_from(
        [
            "[openai]", "[retry]", "[breaker]", "[cache]", "[[fallbacks]]", "[fallbacks]",
            "name = 'b'", "model = 'm'", "max_attempts = 3", "timeout = 5", "timeout = -1",
            "hedge_after = 1.5", "stream_usage = false", f"api_key_env = '{SECRET}'",
            f"base_url = 'ftp://u:{SECRET}@h'", "x = [[[[[[1]]]]]]", "ttl = 1e999",
            "fail_max = " + "9" * 400, "a.b.c = 1", "max_attempts = \"\"\"", "\ufeff",
            "retry.deadline = 0", "[retry.sub]", "max_attempts = 2024-01-01",
        ]
    ),
    st.text(alphabet=string.printable, max_size=40),
)


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(toml_lines, max_size=12), st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "latin-1"]))
def test_any_file_gives_a_config_or_a_config_error(lines, encoding):
    text = "\n".join(lines)
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / FILE
        try:
            path.write_bytes(text.encode(encoding, errors="replace"))
        except UnicodeError:
            return
        try:
            result: ChainConfig | ConfigError = load_config(path)
        except ConfigError as exc:
            result = exc
        check(result)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_a_config_or_a_config_error(data):
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / FILE
        path.write_bytes(data)
        try:
            result: ChainConfig | ConfigError = load_config(path)
        except ConfigError as exc:
            result = exc
        check(result)


def test_the_strategies_reach_valid_configs_too():
    """The properties above are not vacuous: a generated document can be valid."""
    data = {"retry": {"max_attempts": 2}, "fallbacks": [{"name": "b", "model": "m"}]}
    assert config_from_mapping(data, file=FILE).retry.max_attempts == 2
