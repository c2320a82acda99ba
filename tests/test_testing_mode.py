"""set_testing(): users' own tests retry without sleeping."""

from __future__ import annotations

import time

import openai

import fallbackchain
from fallbackchain import FallbackChain, set_testing
from fallbackchain.testing import Fault

from .conftest import make_config, user


def test_set_testing_skips_backoff_sleeps_with_the_real_clock(server, tmp_path):
    server.push(Fault.status(429, retry_after=2), stream=True, times=2)
    client = openai.OpenAI(base_url=server.base_url, api_key="k")
    config = make_config(tmp_path, server.base_url, retry__max_retry_after=5.0)
    with set_testing(True), FallbackChain(config, client=client) as chain:  # real time.sleep
        started = time.monotonic()
        response = chain.complete(user("hi"))
        assert time.monotonic() - started < 1.0
    assert response.source == "stream"
    assert server.counts["stream"] == 3  # every attempt still made
    client.close()


def test_set_testing_is_a_context_manager_that_restores_the_previous_mode():
    assert not fallbackchain.is_testing()
    with set_testing(True):
        assert fallbackchain.is_testing()
    assert not fallbackchain.is_testing()


def test_set_testing_can_be_switched_without_a_with_block():
    set_testing(True)
    try:
        assert fallbackchain.is_testing()
    finally:
        set_testing(False)
    assert not fallbackchain.is_testing()
