"""Secrets never appear in logs, reprs, errors or the cache; prompts only at DEBUG."""

from __future__ import annotations

import logging

import openai
import pytest

from fallbackchain import AllTiersFailedError, FallbackChain
from fallbackchain.testing import Fault

from .conftest import make_config, user

SECRET = "sk-test-VERY-SECRET-value-42"
PROMPT = "my private medical question"


@pytest.fixture
def chain(server, tmp_path, clock, monkeypatch):
    monkeypatch.setenv("FALLBACKCHAIN_TEST_KEY", SECRET)
    config = make_config(tmp_path, server.base_url)
    c = FallbackChain(config, clock=clock, sleep=clock.sleep)  # builds its own client from env
    yield c
    c.close()


def run_failing_and_succeeding(chain, server):
    chain.complete(user(PROMPT))
    server.default = Fault.status(503)
    chain.complete(user(PROMPT))  # from cache
    with pytest.raises(AllTiersFailedError) as info:
        chain.complete(user(PROMPT + " two"))
    return info.value


def test_the_api_key_appears_nowhere(chain, server, caplog, tmp_path):
    caplog.set_level(logging.DEBUG)
    error = run_failing_and_succeeding(chain, server)
    assert SECRET not in caplog.text
    assert SECRET not in str(error) and SECRET not in repr(error)
    assert all(SECRET not in repr(a) for a in error.attempts)
    assert SECRET not in repr(chain)
    for path in (tmp_path / "cache").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_the_key_is_sent_to_the_api(chain, server):
    chain.complete(user("hi"))
    assert server.requests[-1].headers["authorization"] == f"Bearer {SECRET}"


def test_prompts_are_logged_only_at_debug(chain, server, caplog):
    caplog.set_level(logging.DEBUG)
    error = run_failing_and_succeeding(chain, server)
    above_debug = [r for r in caplog.records if r.levelno > logging.DEBUG]
    assert above_debug  # fallbacks were logged at INFO
    assert all(PROMPT not in r.getMessage() for r in above_debug)
    assert any(PROMPT in r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    assert PROMPT not in str(error)


def test_the_prompt_is_not_in_the_cache_key(chain):
    key = chain.cache_key(user(PROMPT))
    assert PROMPT not in key and key.startswith("fc1-")


def test_a_missing_key_variable_is_a_clear_config_error(tmp_path, server, monkeypatch):
    from fallbackchain import ConfigError

    monkeypatch.delenv("FALLBACKCHAIN_TEST_KEY", raising=False)
    with pytest.raises(ConfigError, match="FALLBACKCHAIN_TEST_KEY is not set"):
        FallbackChain(make_config(tmp_path, server.base_url))


def test_an_injected_client_keeps_its_own_key(server, tmp_path):
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-injected")
    with FallbackChain(make_config(tmp_path, server.base_url), client=client) as chain:
        chain.complete(user("hi"))
    assert server.requests[-1].headers["authorization"] == "Bearer sk-injected"
    client.close()
