"""The Responses API through a chain, against the local fault server. No API key, no network.

Run:  python examples/responses.py

It starts ``fallbackchain.testing.FaultServer`` on a free loopback port and shows, in order:
a streamed response; a background response whose stream drops mid-answer and is resumed
where it stopped (one POST, one GET: no event twice, no second generation); a foreground
stream dropped mid-answer and repaired by a retry without repeating text; and a full outage
answered from the cache.
"""

from __future__ import annotations

import tempfile
from typing import Any

import openai

from fallbackchain import (
    BreakerConfig,
    CacheConfig,
    ChainConfig,
    FallbackChain,
    OpenAIConfig,
    RetryConfig,
    trace_of,
)
from fallbackchain.testing import Fault, FaultServer

QUESTION = "What keeps an app answering during an outage?"


def show(chain: FallbackChain, server: FaultServer, title: str, **kwargs: Any) -> None:
    print(f"\n== {title}")
    before = dict(server.route_counts)
    with chain.responses.create(input=QUESTION, stream=True, **kwargs) as stream:
        for event in stream:  # the SDK's own typed events
            if event.type == "response.output_text.delta":
                print(event.delta, end="", flush=True)
            elif event.type == "response.completed":
                final = event.response  # the upstream's own Response (its id, its usage)
    trace = trace_of(stream)
    assert trace is not None
    tries = "; ".join(f"{a.tier}: {a.error or 'ok'}" for a in trace.attempts)
    sent = {k: v - before.get(k, 0) for k, v in server.route_counts.items()}
    sent = {k: v for k, v in sent.items() if v}
    print(f"\n   source={trace.source}  status={final.status}  attempts=[{tries}]")
    print(f"   requests: {sent or 'none'}")


def main() -> None:
    with FaultServer(words=16) as server, tempfile.TemporaryDirectory() as cache_dir:
        config = ChainConfig(
            openai=OpenAIConfig(base_url=server.base_url, model="demo-model"),
            retry=RetryConfig(base_delay=0.05, max_delay=0.2),
            breaker=BreakerConfig(fail_max=3, reset_timeout=5.0),
            cache=CacheConfig(directory=cache_dir),
        )
        client = openai.OpenAI(base_url=server.base_url, api_key="no-key-needed")
        with FallbackChain(config, client=client) as chain:
            show(chain, server, "a streamed response")

            server.push(Fault.drop(after_chunks=6), stream=True, api="responses")
            show(chain, server, "background stream dropped mid-answer: resumed", background=True)

            server.push(Fault.drop(after_chunks=6), stream=True, api="responses")
            show(chain, server, "foreground stream dropped mid-answer: retried, nothing repeated")

            server.default = Fault.status(503)
            show(chain, server, "full outage: answered from the cache")
        client.close()


if __name__ == "__main__":
    main()
