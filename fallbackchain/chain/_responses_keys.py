"""Cache keys of Responses API requests (``responses.create``).

A key follows :func:`fallbackchain.cache.cache_key`'s canonical JSON rules (sorted keys,
``1.0`` is ``1``, ``True`` is not ``1``, pydantic models as the SDK sends them, omitted values
dropped, a value with no JSON form a ``TypeError``) over the model, the ``input`` and every
answer-shaping parameter: ``instructions``, ``tools``, ``tool_choice``, ``text`` (the output
format), ``reasoning``, ``temperature``, ``top_p``, ``max_output_tokens``, ``include``,
``truncation``, ``prompt``, ... Unknown parameters count as answer-shaping. Transport options
(``stream``, ``stream_options``, ``background``, ``store``, ``timeout``, ``extra_headers``,
``metadata``, ``user``, ``service_tier``, ...) do not change it.

Keys live beside chat keys in the same cache and can never equal one: the request is keyed as
a one-item "message" list ``[{"api": "responses", "input": ...}]``, which has no ``role`` and
so is no chat request the API accepts.

Server-side state (the decision, see :func:`responses_cache_key`):

* ``previous_response_id``: keyed **by the id**, with the new input. A stored response never
  changes, so one id and one input always continue the same conversation: its answer may be
  served again in an outage.
* ``conversation``: **not cached** (neither read nor written). A conversation grows with
  every response, so the same id and input mean a different context each time: a stored
  answer could belong to an earlier state of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import openai

from ..cache import cache_key

__all__ = ["RESPONSES_TRANSPORT_PARAMS", "responses_cache_key"]

RESPONSES_TRANSPORT_PARAMS: Final = frozenset(
    {
        "background",  # how the answer is delivered, not what it is
        "include_obfuscation",
    }
)
"""Responses-only options that cannot change the answer (beside the chat ones the cache's
``cache_key`` already leaves out: ``stream``, ``store``, ``metadata``, ``timeout``, ...)."""


def _given(value: object) -> bool:
    return value is not None and not isinstance(value, openai.NotGiven | openai.Omit)


def responses_cache_key(model: str, params: Mapping[str, Any]) -> str | None:
    """The cache key of one ``responses.create`` request, or ``None`` when it is not cached.

    ``params`` are the request's keyword arguments except ``model`` (``input`` included).
    ``None`` for a request in a ``conversation`` (see the module docstring): the chain then
    neither reads nor writes the cache for it. Raises ``TypeError`` for a value with no JSON
    form, as :func:`~fallbackchain.cache.cache_key` does.
    """
    if _given(params.get("conversation")):
        return None
    shaping = {
        name: value
        for name, value in params.items()
        if name not in RESPONSES_TRANSPORT_PARAMS and name not in ("input", "conversation")
    }
    request = {"api": "responses", "input": params.get("input")}
    return cache_key(model, [request], shaping)
