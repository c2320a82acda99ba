"""A drop-in call's arguments, checked and split before anything is sent (sans I/O).

``create()`` and ``parse()``, sync and async, plan their call here: which keyword arguments
the SDK or the chain takes, what reaches the chain, and for a stream the :class:`ChunkFeed`
that will turn its events into chunks. The four public methods only do the I/O.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import openai
from openai.types.chat import ParsedChatCompletion

from .._config import ChainConfig
from .._results import ChainResponse
from ._dropin_chunks import Chunker, check_divergence
from ._dropin_errors import SdkErrors
from ._dropin_stream import ChunkFeed, with_trace

__all__ = ["DropInCall", "parsed", "plan_create", "plan_parse"]

_CHAIN_OPTIONS: Final = frozenset({"deadline", "max_attempts", "cache", "fallbacks"})
"""The chain's own per-call options: passed to the chain, never sent to a provider."""


@functools.cache
def _sdk_params() -> frozenset[str]:
    """The keyword arguments the installed SDK's ``chat.completions.create`` takes."""
    signature = inspect.signature(openai.resources.chat.Completions.create)
    return frozenset(signature.parameters) - {"self"}


def _check_kwargs(kwargs: Mapping[str, Any]) -> None:
    """Refuse names neither the SDK's ``create()`` nor the chain's own options."""
    unknown = sorted(set(kwargs) - _sdk_params() - _CHAIN_OPTIONS)
    if unknown:
        raise TypeError(
            f"create() got unexpected keyword argument(s): {', '.join(map(repr, unknown))}"
        )


@dataclass(frozen=True, slots=True)
class DropInCall:
    """One planned drop-in call: what to pass to the chain's ``stream()`` or ``complete()``.

    ``feed`` is ``None`` for a whole completion; ``errors`` wraps the I/O so that an
    ``AllTiersFailedError`` is also the SDK's error.
    """

    args: tuple[list[Any], str | None]  # messages, model
    params: dict[str, Any]
    feed: ChunkFeed | None
    errors: SdkErrors


def plan_create(
    config: ChainConfig,
    kwargs: dict[str, Any],
    *,
    messages: Iterable[Any],
    model: str | None,
    stream: bool | None,
    on_divergence: object,
) -> DropInCall:
    """``create()``'s call. Raises ``TypeError``/``ValueError`` for what must not be sent.

    ``n`` (several choices) is passed on for a whole completion; a stream carries one choice,
    so ``n > 1`` with ``stream=True`` is refused, naming the option.
    """
    divergence = check_divergence(on_divergence)
    _check_kwargs(kwargs)
    # The chain asks each streaming tier for usage itself; a whole completion must not get it.
    wants_usage = kwargs.pop("stream_options", None)
    base_url = str(config.openai.base_url)
    if not stream:
        return DropInCall((list(messages), model), kwargs, None, SdkErrors(base_url))
    n = kwargs.get("n")
    if n is not None and n != 1:
        raise ValueError(
            f"n={n!r}: a drop-in stream carries one choice; ask for several choices (n) "
            "without stream=True"
        )
    usage = isinstance(wants_usage, Mapping) and wants_usage.get("include_usage") is True
    chunker = Chunker(model or config.openai.model, usage=usage, divergence=divergence)
    return DropInCall(
        (list(messages), model), kwargs, ChunkFeed(chunker, base_url), SdkErrors(base_url)
    )


def plan_parse(
    config: ChainConfig,
    kwargs: dict[str, Any],
    *,
    messages: Iterable[Any],
    model: str | None,
    response_format: Any,
    tools: Any,
) -> DropInCall:
    """``parse()``'s call, its parameters made by the SDK's own helpers.

    They live in a private module of the SDK (``openai.lib._parsing``): using them keeps the
    request and the parsing exactly the SDK's, which is the point of a drop-in.
    """
    from openai.lib._parsing import (  # noqa: PLC0415 - only parse() needs them
        type_to_response_format_param,
        validate_input_tools,
    )

    if kwargs.get("stream"):
        raise TypeError("parse() does not stream; use create(stream=True)")
    params = {k: v for k, v in kwargs.items() if k != "stream"}
    if tools is not None:
        validate_input_tools(tools)
        params["tools"] = tools
    if response_format is not None:
        params["response_format"] = type_to_response_format_param(response_format)
    _check_kwargs(params)
    return DropInCall((list(messages), model), params, None, SdkErrors(str(config.openai.base_url)))


def parsed(response: ChainResponse, response_format: Any, tools: Any) -> ParsedChatCompletion[Any]:
    """The answer parsed as the SDK's ``parse()`` does; :func:`trace_of` finds ``response``."""
    from openai import omit  # noqa: PLC0415
    from openai.lib._parsing import parse_chat_completion  # noqa: PLC0415

    completion: ParsedChatCompletion[Any] = parse_chat_completion(
        response_format=omit if response_format is None else response_format,
        input_tools=omit if tools is None else tools,
        chat_completion=response.completion,
    )
    return with_trace(completion, response)
