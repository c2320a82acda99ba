"""The Responses drop-in overloads as a user meets them, checked by ``mypy --strict``.

``stream=True`` gives a drop-in stream of the SDK's typed events; ``stream=False`` or no
``stream`` gives a ``Response``; a plain ``bool`` gives the union. Never executed.
"""

from __future__ import annotations

from typing import assert_type

from openai.types.responses import Response, ResponseStreamEvent

from fallbackchain import (
    AsyncFallbackChain,
    AsyncResponsesDropInStream,
    ChainResponse,
    FallbackChain,
    ResponsesDropInStream,
    trace_of,
)


def sync_use(chain: FallbackChain, flag: bool) -> str:
    responses = chain.responses
    response = responses.create(model="m", input="hi")
    assert_type(response, Response)
    assert_type(responses.create(input="hi", stream=False), Response)
    stream = responses.create(input="hi", stream=True, background=True, deadline=5.0)
    assert_type(stream, ResponsesDropInStream)
    with stream:
        for event in stream:
            assert_type(event, ResponseStreamEvent)
    assert_type(
        responses.create(input="hi", stream=True, on_divergence="buffer"), ResponsesDropInStream
    )
    assert_type(responses.create(input="hi", stream=flag), Response | ResponsesDropInStream)
    assert_type(trace_of(response), ChainResponse | None)
    return response.output_text


async def async_use(chain: AsyncFallbackChain) -> list[ResponseStreamEvent]:
    response = await chain.responses.create(input="hi")
    assert_type(response, Response)
    stream = await chain.responses.create(input="hi", stream=True)
    assert_type(stream, AsyncResponsesDropInStream)
    async with stream:
        return [event async for event in stream]
