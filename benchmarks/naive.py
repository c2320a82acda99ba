"""The baselines the chain is compared with during an outage.

``tutorial_answer`` is the retry loop most tutorials give: three tries, sleeping 1 s and then
2 s between them, with the SDK's own retries left on (``max_retries=2``, its default), so each
try is up to three HTTP requests. ``sdk_answer`` is the SDK alone, ``max_retries=2``.
Neither has a cache, so neither can answer while the API is down.
"""

from __future__ import annotations

import time

import openai
from _common import MODEL, user

TUTORIAL_TRIES = 3
TUTORIAL_SLEEPS = (1.0, 2.0)


def _stream_text(client: openai.OpenAI, prompt: str) -> str:
    parts: list[str] = []
    with client.chat.completions.create(
        model=MODEL,
        messages=user(prompt),  # type: ignore[arg-type]
        stream=True,
    ) as stream:
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
    return "".join(parts)


def tutorial_answer(client: openai.OpenAI, prompt: str) -> str:
    """Three tries, ``time.sleep(1)`` then ``time.sleep(2)``; raises the last error."""
    for attempt in range(TUTORIAL_TRIES):
        try:
            return _stream_text(client, prompt)
        except openai.APIError:
            if attempt == TUTORIAL_TRIES - 1:
                raise
            time.sleep(TUTORIAL_SLEEPS[attempt])
    raise AssertionError("unreachable")


def sdk_answer(client: openai.OpenAI, prompt: str) -> str:
    """One call; the SDK's own retries (``max_retries`` on the client) are all there is."""
    return _stream_text(client, prompt)
