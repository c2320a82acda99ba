"""The drop-in overloads as a user meets them, checked by ``mypy --strict`` (never executed).

``stream=True`` gives a drop-in stream of ``ChatCompletionChunk``; ``stream=False`` or no
``stream`` gives a ``ChatCompletion``; a plain ``bool`` gives the union.
"""

from __future__ import annotations

from typing import assert_type

import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam

from fallbackchain import (
    AsyncDropInStream,
    AsyncFallbackChain,
    ChainResponse,
    DropInStream,
    FallbackChain,
    StreamDivergedError,
    trace_of,
)

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def sync_use(chain: FallbackChain, flag: bool) -> str:
    completions = chain.chat.completions
    completion = completions.create(model="m", messages=MESSAGES)
    assert_type(completion, ChatCompletion)
    assert_type(completions.create(messages=MESSAGES, stream=False), ChatCompletion)
    stream = completions.create(model="m", messages=MESSAGES, stream=True, temperature=0)
    assert_type(stream, DropInStream)
    with stream:
        for chunk in stream:
            assert_type(chunk, ChatCompletionChunk)
    assert_type(
        completions.create(messages=MESSAGES, stream=True, on_divergence="buffer"), DropInStream
    )
    assert_type(completions.create(messages=MESSAGES, stream=flag), ChatCompletion | DropInStream)
    trace = trace_of(completion)
    assert_type(trace, ChainResponse | None)
    raw = completions.with_raw_response.create(messages=MESSAGES)
    assert isinstance(raw.parse(), ChatCompletion)
    try:
        completions.create(messages=MESSAGES, n=2)
    except openai.RateLimitError as limited:  # the drop-in's AllTiersFailedError is one too
        status: int = limited.status_code
        return str(status)
    try:
        pass
    except StreamDivergedError as exc:
        replacement: ChainResponse = exc.response
        return replacement.text
    return completion.choices[0].message.content or ""


async def async_use(chain: AsyncFallbackChain) -> list[ChatCompletionChunk]:
    completions = chain.chat.completions
    assert_type(await completions.create(messages=MESSAGES), ChatCompletion)
    stream = await completions.create(messages=MESSAGES, stream=True)
    assert_type(stream, AsyncDropInStream)
    async with stream:
        chunks = [chunk async for chunk in stream]
    await stream.close()
    raw = await completions.with_raw_response.create(messages=MESSAGES, stream=True)
    assert isinstance(raw.parse(), AsyncDropInStream)
    return chunks
