"""Stream a fallback chain to HTTP clients as server-sent events (Starlette; FastAPI alike).

Run (see README.md beside this file)::

    FALLBACKCHAIN_CONFIG=config/test.toml FALLBACKCHAIN_TEST_KEY=any \
        uvicorn examples.fastapi_sse.app:app --port 8080

``POST /chat`` with ``{"messages": [{"role": "user", "content": "Hi"}]}`` answers with
``text/event-stream``::

    event: delta    data: {"text": "Hel", "source": "stream"}    append to what is shown
    event: reset    data: {"text": "", "source": "backup"}       discard what is shown
    event: tool_call  data: {"text": "{\"ci", "index": 0, "id": "call_1", "name": "f", ...}
    event: refusal  data: {"text": "I can't", "source": "stream"}  append to the refusal
    event: done     data: {"source": "stream", "attempts": [...], "cache_age": null}
    event: error    data: {"error": "AllTiersFailedError", "message": "..."}

The deltas after the last ``reset``, joined, are the whole answer. A client that disconnects
stops the chain's stream at once (neutral for the breakers: neither success nor failure).
``GET /health`` shows each tier's breaker and how many streams are open.

The chain is built once, in the app's lifespan, from the TOML file named by
``$FALLBACKCHAIN_CONFIG`` (default ``config/fallbackchain.toml``), and closed on shutdown.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

import anyio
import openai
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fallbackchain import AsyncFallbackChain, ChainResponse, FallbackChainError

CONFIG_ENV = "FALLBACKCHAIN_CONFIG"
DEFAULT_CONFIG = "config/fallbackchain.toml"
MAX_MESSAGE_CHARS = 300

logger = logging.getLogger("fallbackchain.example")


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event; ``json.dumps`` never emits a raw newline, so one data line."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def summary(response: ChainResponse) -> dict[str, Any]:
    """The ``done`` payload: who answered and how. Attempt errors are short, prompt-free texts."""
    return {
        "source": response.source,
        "cache_age": response.cache_age,
        "attempts": [
            {
                "tier": a.tier,
                "error": a.error,
                "error_type": a.error_type,
                "status_code": a.status_code,
                "duration": round(a.duration, 4),
            }
            for a in response.attempts
        ],
    }


def error_event(exc: Exception) -> str:
    """An ``error`` event: the class name and a short text that never quotes the request."""
    if isinstance(exc, FallbackChainError):  # the chain's messages never hold prompts or keys
        message = str(exc)
    elif isinstance(exc, openai.APIStatusError):  # the caller's own mistake (400, 401, 404, ...)
        message = f"the upstream API rejected the request (HTTP {exc.status_code})"
    else:
        message = "internal error"
    if len(message) > MAX_MESSAGE_CHARS:
        message = message[: MAX_MESSAGE_CHARS - 1] + "…"
    return sse("error", {"error": type(exc).__name__, "message": message})


async def chat_events(
    chain: AsyncFallbackChain, messages: Sequence[Any], state: dict[str, int]
) -> AsyncGenerator[str, None]:
    """The chain's stream as SSE text. Closing this generator closes the chain's stream."""
    state["active_streams"] += 1
    try:
        try:
            async with chain.stream(messages) as stream:
                async for event in stream:
                    data: dict[str, Any] = {"text": event.text, "source": event.source}
                    if event.type == "tool_call":  # which call, and its id and name so far
                        data.update(index=event.index, id=event.id, name=event.name)
                    yield sse(event.type, data)
                response = stream.response
        except Exception as exc:  # CancelledError and GeneratorExit pass: they are not errors
            if not isinstance(exc, FallbackChainError | openai.APIStatusError):
                logger.exception("chat stream failed")
            yield error_event(exc)
            return
        yield sse("done", summary(response))
    finally:
        state["active_streams"] -= 1


class EventStream(StreamingResponse):
    """An SSE response that stops as soon as the client goes, and always closes its generator.

    Starlette's ``StreamingResponse`` notices a disconnect only on some servers before the next
    chunk is sent, and leaves a generator suspended at ``yield`` to the garbage collector; here
    a disconnect cancels the stream at once (even mid-stall) and the generator, and so the
    chain's stream, is closed before the response returns.
    """

    media_type = "text/event-stream"

    def __init__(self, events: AsyncGenerator[str, None]) -> None:
        super().__init__(events, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._events = events

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            async with anyio.create_task_group() as group:

                async def stop_on_disconnect() -> None:
                    await self.listen_for_disconnect(receive)
                    group.cancel_scope.cancel()

                group.start_soon(stop_on_disconnect)
                with suppress(OSError):  # the client went away while a chunk was being sent
                    await self.stream_response(send)
                group.cancel_scope.cancel()
        finally:
            with anyio.CancelScope(shield=True):
                await self._events.aclose()


def bad_request(message: str) -> Response:
    return JSONResponse({"error": "BadRequest", "message": message}, status_code=400)


async def chat(request: Request) -> Response:
    try:
        body = await request.json()
    except ValueError:
        return bad_request("the body must be JSON")
    messages = body.get("messages") if isinstance(body, dict) else None
    if not isinstance(messages, list) or not messages:
        return bad_request('expected {"messages": [...]} with at least one message')
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return bad_request("each message must be an object with a string 'role'")
    chain: AsyncFallbackChain = request.app.state.chain
    return EventStream(chat_events(chain, messages, request.app.state.streams))


async def health(request: Request) -> Response:
    chain: AsyncFallbackChain = request.app.state.chain
    breakers = {
        name: {"state": gate.state, "failures": gate.fail_counter}
        for name, gate in chain.breakers.items()
    }
    return JSONResponse(
        {"breakers": breakers, "active_streams": request.app.state.streams["active_streams"]}
    )


def create_app(config_path: str | None = None, **chain_options: Any) -> Starlette:
    """The ASGI app. ``chain_options`` go to the chain (``listeners=[...]``, say)."""

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        path = config_path or os.environ.get(CONFIG_ENV, DEFAULT_CONFIG)
        async with AsyncFallbackChain.from_config(path, **chain_options) as chain:
            app.state.chain = chain
            app.state.streams = {"active_streams": 0}
            yield

    return Starlette(
        routes=[
            Route("/chat", chat, methods=["POST"]),
            Route("/health", health, methods=["GET"]),
        ],
        lifespan=lifespan,
    )


app = create_app()
