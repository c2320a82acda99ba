"""The fault server's own tests: a server of its own per test, and the raw SDK as the client.

These tests inspect the server itself (its counts, its log, its rules), so each gets a fresh
one rather than the session's shared server.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx2
import openai
import pytest

from fallbackchain.testing import FaultServer


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(words=12) as srv:
        yield srv


def make_client(server: FaultServer, **kwargs: Any) -> openai.OpenAI:
    """The raw SDK on ``server``, without its own retries, as the chain's tests use it."""
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("timeout", httpx2.Timeout(10.0))
    return openai.OpenAI(base_url=server.base_url, api_key="test", **kwargs)


@pytest.fixture
def client(server: FaultServer) -> Iterator[openai.OpenAI]:
    with make_client(server) as c:
        yield c
