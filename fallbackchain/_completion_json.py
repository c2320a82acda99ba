"""A whole chat completion read from its JSON, as the openai SDK reads it.

Validated with pydantic; when that fails (a compatible server left ``created`` out, say),
built the SDK's lenient way, as ``chat.completions.create()`` would have built it. The live
path (``chain._chat_wire``) and the cache (``cache._rows``, ``cache._jsonl``) both read
answers through here, so an answer the chain accepted live is one its cache can serve back.

What a caller can rely on: :func:`completion_from_json` never refuses a JSON object;
:func:`readable_completion` refuses one that neither validates nor, built leniently, has text
where text goes (:func:`has_text_where_text_goes`).
"""

from __future__ import annotations

from typing import Any

import pydantic
from openai.types.chat import ChatCompletion

__all__ = ["completion_from_json", "has_text_where_text_goes", "readable_completion"]


def completion_from_json(data: dict[str, Any]) -> ChatCompletion:
    """``data`` validated as a ``ChatCompletion``, else built leniently (missing: ``None``)."""
    try:
        return ChatCompletion.model_validate(data)
    except pydantic.ValidationError:
        return _lenient(data)


def readable_completion(data: dict[str, Any]) -> ChatCompletion:
    """:func:`completion_from_json`, for a stored answer: refused unless it is usable.

    Raises the validation's ``pydantic.ValidationError`` (and nothing else) when ``data``
    does not validate and its lenient build fails :func:`has_text_where_text_goes`.
    """
    try:
        return ChatCompletion.model_validate(data)
    except pydantic.ValidationError as exc:
        invalid = exc
    try:
        completion = _lenient(data)
    except (TypeError, ValueError, AttributeError):  # what no answer is made of
        raise invalid from None
    if not has_text_where_text_goes(completion):
        raise invalid
    return completion


def has_text_where_text_goes(completion: ChatCompletion) -> bool:
    """True when every choice's finish reason, content, refusal and tool calls are text.

    Or absent. Tool calls must be a list of objects whose id, function name and arguments
    are text; false when ``choices`` is not a list, or a choice or message not an object.
    Always true of a validated completion; a lenient build can hold anything JSON can.
    """
    choices = completion.choices
    if type(choices) is not list:
        return False
    try:
        for choice in choices:
            message = choice.message
            texts = [choice.finish_reason, message.content, message.refusal]
            calls = message.tool_calls
            if calls is not None and type(calls) is not list:
                return False
            for call in calls or ():
                texts.append(call.id)
                function = getattr(call, "function", None)  # a custom tool call has none
                if function is not None:
                    texts += (function.name, function.arguments)
            if any(text is not None and text.__class__ is not str for text in texts):
                return False
    except (AttributeError, TypeError):  # a choice, message or call that is not an object
        return False
    return True


def _lenient(data: dict[str, Any]) -> ChatCompletion:
    # ``_fields_set`` is construct()'s own parameter: a body's key of that name is not one.
    if "_fields_set" in data:
        data = {key: value for key, value in data.items() if key != "_fields_set"}
    return ChatCompletion.construct(**data)
