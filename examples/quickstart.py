"""Quickstart: a chain against the project's local fault server. No API key, no network.

Run:  python examples/quickstart.py      (or: make demo)

It starts ``fallbackchain.testing.FaultServer`` on a free loopback port and shows, in order:
a healthy stream, a stream dropped mid-answer and recovered without repeating text, a rate
limit honoured, and a full outage answered from the cache: the breakers open, and then the
server is not touched at all.
"""

from __future__ import annotations

import logging
import tempfile
import time

import openai

from fallbackchain import (
    BreakerConfig,
    CacheConfig,
    ChainConfig,
    FallbackChain,
    OpenAIConfig,
    RetryConfig,
)
from fallbackchain.testing import Fault, FaultServer

QUESTION = [{"role": "user", "content": "What keeps a chat app answering during an outage?"}]


def show(chain: FallbackChain, title: str) -> None:
    print(f"\n== {title}")
    started = time.perf_counter()
    with chain.stream(QUESTION) as stream:
        for event in stream:
            if event.type == "reset":
                print(" [reset]", end="")
            elif event.type == "delta":  # (tool_call and refusal events carry other parts)
                print(event.text, end="", flush=True)
        response = stream.response
    took = (time.perf_counter() - started) * 1000
    tries = ", ".join(f"{a.tier}:{a.error or 'ok'}" for a in response.attempts)
    print(f"\n   source={response.source}  {took:.1f} ms  attempts=[{tries}]")


def main() -> None:
    logging.basicConfig(level=logging.WARNING)
    with FaultServer(words=24) as server, tempfile.TemporaryDirectory() as cache_dir:
        config = ChainConfig(
            openai=OpenAIConfig(base_url=server.base_url, model="demo-model"),
            retry=RetryConfig(base_delay=0.05, max_delay=0.2, max_retry_after=2.0),
            breaker=BreakerConfig(fail_max=3, reset_timeout=5.0),
            cache=CacheConfig(directory=cache_dir),
        )
        client = openai.OpenAI(base_url=server.base_url, api_key="no-key-needed")
        with FallbackChain(config, client=client) as chain:
            show(chain, "healthy streaming")

            server.push(Fault.drop(after_chunks=8), stream=True)
            show(chain, "connection dropped mid-stream: retried, no text repeated")

            server.push(Fault.status(429, retry_after=0.5), stream=True)
            show(chain, "rate limited with Retry-After: 0.5 s honoured")

            server.default = Fault.status(503)
            # A 503 describes the model: the route's retry budget (3 attempts, whichever tier)
            # is spent once per request, and each tier's breaker counts what it saw.
            show(chain, "full outage: the stream tier fails 3 times, the cache answers")
            print(f"   breakers: {chain.breaker_states()}")
            show(chain, "outage continues: stream breaker open, the completion tier fails too")
            print(f"   breakers: {chain.breaker_states()}")
            before = server.counts["total"]
            show(chain, "outage continues: breakers open, cache answers, server untouched")
            print(f"   upstream requests during this answer: {server.counts['total'] - before}")
        client.close()


if __name__ == "__main__":
    main()
