"""The SSE example (examples/fastapi_sse/app.py), run for real: uvicorn on a free loopback port in
a thread, its async chain against the fault server, and a real HTTP client reading the events."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import socket
import threading
import time
from pathlib import Path

import httpx2
import pytest
import uvicorn

from fallbackchain.testing import Fault

from .conftest import user

APP_FILE = Path(__file__).resolve().parent.parent / "examples" / "fastapi_sse" / "app.py"
PROMPT = "what is my order status"

CONFIG = """
[openai]
base_url = "{base_url}"
api_key_env = "FALLBACKCHAIN_TEST_KEY"
model = "test-model"
timeout = 5.0
first_token_timeout = 2.0
idle_timeout = 2.0

[retry]
max_attempts = 2
base_delay = 0.01
max_delay = 0.05
deadline = 10.0

[breaker]
fail_max = 5
reset_timeout = 30.0

[cache]
directory = "{cache}"

[[fallbacks]]
name = "backup"
model = "backup-model"
"""


def load_example():
    spec = importlib.util.spec_from_file_location("fastapi_sse_example", APP_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class RunningApp:
    """The example's ``app`` served by uvicorn in a thread, with an HTTP client pointed at it."""

    def __init__(self, app):
        self.sock = sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        config = uvicorn.Config(app, lifespan="on", log_level="warning",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]},
                                       daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            assert self.thread.is_alive(), "the app failed to start"
            assert time.monotonic() < deadline, "the app did not start in 10 s"
            time.sleep(0.01)
        self.client = httpx2.Client(base_url=self.url, timeout=10)

    def chat(self, messages):
        """POST /chat and read the whole SSE stream: ``[(event, data), ...]``."""
        with self.client.stream("POST", "/chat", json={"messages": messages}) as response:
            assert response.status_code == 200
            assert response.headers["content-type"].startswith("text/event-stream")
            return [(e.event, json.loads(e.data)) for e in httpx2.EventSource(response)]

    def health(self):
        return self.client.get("/health").json()

    def stop(self):
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()
        assert not self.thread.is_alive()


@pytest.fixture
def example(server, tmp_path, monkeypatch):
    config = tmp_path / "chain.toml"
    config.write_text(CONFIG.format(base_url=server.base_url, cache=tmp_path / "cache"))
    monkeypatch.setenv("FALLBACKCHAIN_CONFIG", str(config))
    monkeypatch.setenv("FALLBACKCHAIN_TEST_KEY", "sk-test-example")
    running = RunningApp(load_example().app)
    yield running
    running.stop()


def text_after_last_reset(events):
    parts = []
    for name, data in events:
        if name == "reset":
            parts = []
        elif name == "delta":
            parts.append(data["text"])
    return "".join(parts)


def test_the_deltas_are_the_answer_and_done_names_the_source(example, server):
    events = example.chat(user(PROMPT))
    names = [name for name, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"delta"} and len(names) > 5
    assert text_after_last_reset(events) == server.answer_for(user(PROMPT), "test-model")
    assert all(data["source"] == "stream" for name, data in events if name == "delta")
    done = events[-1][1]
    assert done["source"] == "stream" and done["cache_age"] is None
    assert [(a["tier"], a["error"]) for a in done["attempts"]] == [("stream", None)]


def test_a_mid_stream_drop_is_retried_without_duplicating_text(example, server):
    server.push(Fault.drop(after_chunks=3), stream=True)
    events = example.chat(user(PROMPT))
    assert "reset" not in [name for name, _ in events]
    deltas = "".join(data["text"] for name, data in events if name == "delta")
    assert deltas == server.answer_for(user(PROMPT), "test-model")
    done = events[-1][1]
    assert [(a["tier"], a["error_type"]) for a in done["attempts"]] == [
        ("stream", "UpstreamConnectionError"), ("stream", None)]


def test_a_different_replacement_answer_starts_with_a_reset(example, server):
    server.push(Fault.drop(after_chunks=3), stream=True, times=2)
    server.push(Fault.status(503), stream=False, times=2)
    events = example.chat(user(PROMPT))
    assert [name for name, _ in events].count("reset") == 1
    assert text_after_last_reset(events) == server.answer_for(user(PROMPT), "backup-model")
    done = events[-1][1]
    assert done["source"] == "backup"
    assert [a["tier"] for a in done["attempts"]] == [
        "stream", "stream", "completion", "completion", "backup"]


@pytest.mark.slow
def test_closing_the_client_early_stops_the_chain_and_leaves_the_breakers_at_zero(example, server):
    server.push(Fault.stall(after_chunks=3, seconds=10), stream=True)  # stays open mid-answer
    with example.client.stream("POST", "/chat", json={"messages": user(PROMPT)}) as response:
        first = next(iter(httpx2.EventSource(response)))
        assert first.event == "delta"
    started = time.monotonic()
    while example.health()["active_streams"]:
        assert time.monotonic() - started < 1.5, "the chain kept streaming after the client left"
        time.sleep(0.02)
    assert server.wait_idle(2.0)  # the upstream connection was closed too
    assert example.health()["breakers"] == {
        tier: {"state": "closed", "failures": 0} for tier in ("stream", "completion", "backup")
    }
    assert server.counts["total"] == 1  # not retried: closing early is not a failure


def test_an_outage_with_nothing_cached_ends_with_an_error_event(example, server):
    server.default = Fault.status(503)
    events = example.chat(user(PROMPT))
    name, data = events[-1]
    assert name == "error" and data["error"] == "AllTiersFailedError"
    assert "503" in data["message"] and PROMPT not in data["message"]
    assert "done" not in [n for n, _ in events]


def test_the_cache_answers_a_repeated_request_during_an_outage(example, server):
    example.chat(user(PROMPT))
    server.default = Fault.status(503)
    events = example.chat(user(PROMPT))
    assert text_after_last_reset(events) == server.answer_for(user(PROMPT), "test-model")
    done = events[-1][1]
    assert done["source"] == "cache" and done["cache_age"] is not None


def test_a_body_without_messages_is_rejected_before_any_stream(example, server):
    response = example.client.post("/chat", json={"prompt": "hi"})
    assert response.status_code == 400
    assert response.json()["error"] == "BadRequest"
    assert server.counts["total"] == 0


def test_a_disconnect_while_a_chunk_is_being_sent_closes_the_events_at_once():
    # Driven through the ASGI interface itself: the client vanishes while the server is stuck
    # sending a chunk, so the event generator is suspended at ``yield``, not awaiting upstream.
    event_stream = load_example().EventStream
    closed = []
    sending = asyncio.Event()

    async def events():
        try:
            while True:
                yield "event: delta\ndata: {}\n\n"
        finally:
            closed.append(True)

    async def send(message):
        if message["type"] == "http.response.body":
            sending.set()
            await asyncio.Event().wait()  # a client that stopped reading

    async def receive():
        await sending.wait()
        return {"type": "http.disconnect"}

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    asyncio.run(asyncio.wait_for(event_stream(events())(scope, receive, send), 5))
    assert closed == [True]
