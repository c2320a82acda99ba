"""``chain.chat.completions.parse`` with a pydantic ``response_format`` works as the SDK's (#15).

One function runs against a plain client and against the chain, through a rate limit and a
dropped stream, with the same assertions.
"""

from __future__ import annotations

import json
from typing import Any

import openai
import pydantic
import pytest

from fallbackchain import trace_of
from fallbackchain.testing import Fault, FaultServer

from .conftest import Harness, make_config, user


class Weather(pydantic.BaseModel):
    city: str
    celsius: int


def weather_json(messages: Any, model: str) -> str:
    return json.dumps({"city": "Lisbon", "celsius": 21})


def ask_weather(completions: Any) -> Weather:
    """What an app writes against ``client.chat.completions``; unchanged for the chain."""
    completion = completions.parse(
        model="test-model",
        messages=[{"role": "user", "content": "Weather in Lisbon?"}],
        response_format=Weather,
    )
    parsed = completion.choices[0].message.parsed
    assert isinstance(parsed, Weather)
    return parsed


@pytest.fixture
def json_server():
    with FaultServer(responder=weather_json) as server:
        yield server


def test_parse_through_a_plain_client_and_the_chain_gives_the_same_model(json_server, tmp_path):
    client = openai.OpenAI(base_url=json_server.base_url, api_key="sk-test", max_retries=0)
    expected = ask_weather(client.chat.completions)
    h = Harness(
        "sync", make_config(tmp_path, json_server.base_url), json_server, None, real_time=True
    )
    try:
        json_server.push(Fault.status(429))  # one rate limit: retried, invisible to the app
        assert (
            ask_weather(h.chain.chat.completions) == expected == Weather(city="Lisbon", celsius=21)
        )
        body = json_server.requests[-1].body
        assert body["response_format"]["type"] == "json_schema"
        assert body["response_format"]["json_schema"]["name"] == "Weather"
    finally:
        h.close()
        client.close()


def test_async_parse_and_its_trace(json_server, tmp_path):
    h = Harness(
        "async", make_config(tmp_path, json_server.base_url), json_server, None, real_time=True
    )
    try:
        completion = h.run(
            lambda: h.chain.chat.completions.parse(
                messages=user("Weather?"), response_format=Weather
            )
        )
        assert completion.choices[0].message.parsed == Weather(city="Lisbon", celsius=21)
        assert trace_of(completion).source == "stream"
    finally:
        h.close()


def test_parse_refuses_to_stream(harness, server):
    with pytest.raises(TypeError, match="does not stream"):
        harness.run(
            lambda: harness.chain.chat.completions.parse(
                messages=user("x"), response_format=Weather, stream=True
            )
        )
    assert server.counts["total"] == 0
