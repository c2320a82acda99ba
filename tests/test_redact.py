"""One masking function for every URL shown, and bounded, masked reprs of config values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fallbackchain._redact import (
    brief_repr,
    describe_value,
    is_env_var_name,
    looks_like_secret,
    mask_url,
    redact,
)


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://user:hunter2@cache.internal:6379/0", "redis://user:***@cache.internal:6379/0"),
        ("redis://:hunter2@127.0.0.1:1/0", "redis://:***@127.0.0.1:1/0"),
        ("https://sk-abc123@api.example.com/v1", "https://***@api.example.com/v1"),
        (
            "https://res.openai.azure.com/openai?api-version=2024-02-01&api-key=abc123",
            "https://res.openai.azure.com/openai?api-version=2024-02-01&api-key=***",
        ),
        ("rediss://h:6380/0?password=pw&ssl_cert_reqs=none", "rediss://h:6380/0?password=***&ssl_cert_reqs=none"),
        ("https://h/v1?API_KEY=a&Key=b&TOKEN=c&access_token=d", "https://h/v1?API_KEY=***&Key=***&TOKEN=***&access_token=***"),
        ("https://h/v1?sig=a&secret=b&Password=c&X-Amz-Signature=d", "https://h/v1?sig=***&secret=***&Password=***&X-Amz-Signature=***"),
        ("https://h/v1?api%2Dkey=zz", "https://h/v1?api%2Dkey=***"),
        ("https://h/cb#access_token=zz&state=1", "https://h/cb#access_token=***&state=1"),
        ("https://h/v1?x=sk-proj-abcdef", "https://h/v1?x=***"),
        ("redis://:p?ss#w@h/0", "redis://:***@h/0"),  # "?" and "#" unencoded in a password
        ("redis://:p/ss@h/0", "redis://:***@h/0"),  # "/" too
        ("unix://:pw@/run/redis.sock?db=0&password=pw2", "unix://:***@/run/redis.sock?db=0&password=***"),
        ("user:pw@host:6379", "user:***@host:6379"),  # no scheme
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("http://127.0.0.1:11434/v1?api-version=1", "http://127.0.0.1:11434/v1?api-version=1"),
        ("http://[::1", "http://[::1"),
        ("", ""),
    ],
)
def test_mask_url(url, shown):
    assert mask_url(url) == shown


secret_text = st.text(
    alphabet=st.characters(codec="ascii", categories=["L", "N"]), min_size=8, max_size=30
).map(lambda s: "Zq" + s)  # never a substring of the fixed parts of the URLs below


@given(
    password=secret_text,
    name=st.sampled_from(["password", "api-key", "API_KEY", "key", "token", "access_token", "sig", "Secret"]),
    host=st.sampled_from(["h", "cache.internal:6379", "127.0.0.1:1"]),
    scheme=st.sampled_from(["https", "redis", "rediss", "unix", "http"]),
)
def test_a_password_or_credential_parameter_never_survives(password, name, host, scheme):
    for url in (
        f"{scheme}://user:{password}@{host}/0",
        f"{scheme}://:{password}@{host}/0",
        f"{scheme}://{host}/v1?a=1&{name}={password}&b=2",
        f"{scheme}://{host}/v1?{name}={password}#frag",
    ):
        assert password not in mask_url(url), url


@given(st.text())
def test_mask_url_never_raises_and_keeps_plain_text(text):
    shown = mask_url(text)
    assert isinstance(shown, str)
    if "@" not in text and "?" not in text and "#" not in text and not looks_like_secret(text):
        assert shown == text


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("sk-proj-abc", True),
        ("sk_live_abc", True),
        ("AIzaSyD-abc", True),
        ("ghp_abc", True),
        ("a3f9c2e1b4d5a6f7e8d9c0b1a2f3e4d5", True),  # an Azure key: 32 hex digits
        ("Zx8kQ2mP9wLr4Tn6Yb3VcJ7f", True),
        ("OPENAI_API_KEY", False),
        ("AZURE_OPENAI_API_KEY_PRODUCTION_EASTUS2", False),
        ("MyVeryLongEnvironmentVariableName", False),
        ("gpt-4o-mini-2024-07-18", False),
        ("llama3.1:8b-instruct-q4_K_M", False),
        ("https://api.openai.com/v1", False),
    ],
)
def test_looks_like_secret(text, secret):
    assert looks_like_secret(text) is secret


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("OPENAI_API_KEY", True),
        ("_key2", True),
        ("sk-proj-abc", False),
        ("2KEY", False),
        ("MY KEY", False),
        ("a3f9c2e1b4d5a6f7e8d9c0b1a2f3e4d5", False),
        ("", False),
    ],
)
def test_is_env_var_name(text, ok):
    assert is_env_var_name(text) is ok


def test_redact_masks_by_name_by_shape_and_in_urls_at_any_depth_it_shows():
    value = {"password": "hunter2", "a": ["sk-live-x", {"url": "redis://:pw@h/0"}], "n": 1}
    assert redact(value) == {"password": "***", "a": ["***", {"url": "redis://:***@h/0"}], "n": 1}
    assert redact("x", name="openai.api_key") == "***"
    assert redact("OPENAI_API_KEY", name="openai.api_key_env") == "OPENAI_API_KEY"


def test_brief_repr_is_bounded_and_never_raises():
    assert brief_repr(10**400) == "<integer of about 401 digits>"
    assert brief_repr(-(10**5000)) == "<negative integer of about 5001 digits>"  # beyond int->str limit
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    assert len(brief_repr(deep)) < 40
    assert len(brief_repr("x" * 10_000)) < 100

    class Broken:
        def __repr__(self) -> str:
            raise RuntimeError

    assert brief_repr(Broken()).startswith("<Broken")


def test_describe_value_masks_then_bounds():
    assert describe_value({"token": "abc"}) == "{'token': '***'}"
    assert describe_value("redis://u:pw@h/0") == "'redis://u:***@h/0'"
