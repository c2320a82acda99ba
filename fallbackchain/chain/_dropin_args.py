"""A drop-in call's arguments, checked and split before anything is sent (sans I/O).

``create()`` and ``parse()``, sync and async, plan their call here: which keyword arguments
the SDK or the chain takes, what reaches the chain, and for a stream the feed whose
:class:`Chunker` will turn its events into chunks. The four public methods only do the I/O.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import openai
from openai.types.chat import ChatCompletionChunk, ParsedChatCompletion

from .._config import ChainConfig
from .._results import ChainResponse
from ._call_options import CallKeywords
from ._dropin_chunks import Chunker
from ._dropin_continuation import check_divergence
from ._dropin_errors import SdkErrors
from ._dropin_stream import with_trace
from ._sdk_stream import StreamFeed

__all__ = ["CHAIN_OPTIONS", "DropInCall", "check_keywords", "plan_create", "plan_parse"]

CHAIN_OPTIONS: Final = frozenset(CallKeywords.__optional_keys__)
"""The chain's own per-call options: passed to the chain, never sent to a provider."""


@functools.cache
def _parameters(sdk_method: Callable[..., Any]) -> frozenset[str]:
    return frozenset(inspect.signature(sdk_method).parameters) - {"self"}


def check_keywords(kwargs: Mapping[str, Any], sdk_method: Callable[..., Any]) -> None:
    """Refuse, as the SDK does, a name neither ``sdk_method`` nor the chain's options take.

    ``sdk_method`` is the installed SDK's own (``Completions.create``, ``Responses.create``),
    so a parameter a newer SDK adds is accepted without a change here.
    """
    unknown = sorted(set(kwargs) - _parameters(sdk_method) - CHAIN_OPTIONS)
    if unknown:
        raise TypeError(
            f"create() got unexpected keyword argument(s): {', '.join(map(repr, unknown))}"
        )


def _take_messages(kwargs: dict[str, Any], method: str) -> tuple[list[Any], str | None]:
    """``messages`` (required, keyword only, as the SDK's) and ``model``, out of ``kwargs``."""
    if "messages" not in kwargs:
        raise TypeError(f"{method}() missing 1 required keyword-only argument: 'messages'")
    messages: Iterable[Any] = kwargs.pop("messages")
    if isinstance(messages, str | bytes | Mapping) or not isinstance(messages, Iterable):
        # the SDK would send it and get a 400; nothing is sent for a call that cannot be right
        kind = type(messages).__name__
        raise TypeError(f"{method}(): 'messages' must be a list of messages, not {kind}")
    model: str | None = kwargs.pop("model", None)
    return list(messages), model


@dataclass(frozen=True, slots=True)
class DropInCall:
    """One planned drop-in call: what to pass to the chain's ``stream()`` or ``complete()``.

    ``feed`` is ``None`` for a whole completion; ``errors`` wraps the I/O so that an
    ``AllTiersFailedError`` is also the SDK's error; ``parse_as`` is ``parse()``'s
    ``(response_format, tools)``.
    """

    args: tuple[list[Any], str | None]  # messages, model
    params: dict[str, Any]
    feed: StreamFeed[ChatCompletionChunk] | None
    errors: SdkErrors
    parse_as: tuple[Any, Any] | None = None

    def parsed(self, response: ChainResponse) -> ParsedChatCompletion[Any]:
        """``parse()``'s answer, parsed as the SDK does; :func:`trace_of` finds ``response``."""
        from openai import omit  # noqa: PLC0415
        from openai.lib._parsing import parse_chat_completion  # noqa: PLC0415

        response_format, tools = self.parse_as or (None, None)
        completion: ParsedChatCompletion[Any] = parse_chat_completion(
            response_format=omit if response_format is None else response_format,
            input_tools=omit if tools is None else tools,
            chat_completion=response.completion,
        )
        return with_trace(completion, response)


def plan_create(config: ChainConfig, kwargs: dict[str, Any]) -> DropInCall:
    """``create(**kwargs)``'s call. Raises ``TypeError``/``ValueError`` for what must not be sent.

    ``n`` (several choices) is passed on for a whole completion; a stream carries one choice,
    so ``n > 1`` with ``stream=True`` is refused, naming the option.
    """
    args = _take_messages(kwargs, "create")
    stream = kwargs.pop("stream", None)
    divergence = check_divergence(kwargs.pop("on_divergence", "raise"))
    check_keywords(kwargs, openai.resources.chat.Completions.create)
    # The chain asks each streaming tier for usage itself; a whole completion must not get it.
    wants_usage = kwargs.pop("stream_options", None)
    errors = SdkErrors(str(config.openai.base_url))
    if not stream:
        return DropInCall(args, kwargs, None, errors)
    n = kwargs.get("n")
    if n is not None and n != 1:
        raise ValueError(
            f"n={n!r}: a drop-in stream carries one choice; ask for several choices (n) "
            "without stream=True"
        )
    usage = isinstance(wants_usage, Mapping) and wants_usage.get("include_usage") is True
    chunker = Chunker(args[1] or config.openai.model, usage=usage, divergence=divergence)
    return DropInCall(args, kwargs, StreamFeed(chunker, errors), errors)


def plan_parse(config: ChainConfig, kwargs: dict[str, Any], response_format: Any) -> DropInCall:
    """``parse(response_format=..., **kwargs)``'s call, made by the SDK's own helpers.

    They live in a private module of the SDK (``openai.lib._parsing``): using them keeps the
    request and the parsing exactly the SDK's, which is the point of a drop-in.
    """
    from openai.lib._parsing import (  # noqa: PLC0415 - only parse() needs them
        type_to_response_format_param,
        validate_input_tools,
    )

    args = _take_messages(kwargs, "parse")
    if kwargs.pop("stream", None):
        raise TypeError("parse() does not stream; use create(stream=True)")
    tools = kwargs.get("tools")
    if tools is not None:
        validate_input_tools(tools)
    if response_format is not None:
        kwargs["response_format"] = type_to_response_format_param(response_format)
    check_keywords(kwargs, openai.resources.chat.Completions.create)
    errors = SdkErrors(str(config.openai.base_url))
    return DropInCall(args, kwargs, None, errors, (response_format, tools))
