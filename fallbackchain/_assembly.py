"""Stream assembly: chunks into a completion, and attempts into one honest event sequence.

Two pure objects, shared by the sync and async drivers:

* :class:`AttemptAssembler` turns one attempt's ``ChatCompletionChunk`` objects into a
  ``ChatCompletion``. It refuses a stream that ended without a ``finish_reason`` (the SDK
  returns such a silently truncated stream as if it were complete) and a chunk that is not a
  chunk. Per chunk it does a few attribute reads and a list append: no pydantic objects.
* :class:`Display` remembers what the consumer has been shown since the last ``reset`` and
  makes sure a retried or fallen-back answer never shows duplicated text: while a new attempt
  repeats text already shown it emits nothing; once it goes further it emits only the new part;
  if it diverges it emits ``reset`` and the replacement. Invariant: the deltas after the last
  reset, joined, equal the final answer's text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from openai.types.chat import ChatCompletion

from ._errors import MalformedChunkError, TruncatedStreamError
from ._results import ChainEvent

__all__ = ["COMPLETE_FINISH_REASONS", "AttemptAssembler", "Display"]

COMPLETE_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "function_call"})
"""Finish reasons of a whole answer, which may be cached (``content_filter`` may not)."""

_NO_EVENTS: tuple[ChainEvent, ...] = ()


@dataclass(slots=True)
class _Choice:
    parts: list[str] = field(default_factory=list)
    role: str | None = None
    finish_reason: str | None = None
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, dict[str, Any]] = field(default_factory=dict)
    function_call: dict[str, Any] | None = None


class AttemptAssembler:
    """Accumulates the chunks of one streamed attempt."""

    __slots__ = ("_choices", "_first", "_zero", "chunks", "content_seen", "usage")

    def __init__(self) -> None:
        self._choices: dict[int, _Choice] = {}
        self._zero: list[str] | None = None  # choice 0's parts, once it exists
        self._first: Any = None
        self.usage: Any = None
        self.chunks = 0
        self.content_seen = False

    def add(self, chunk: Any) -> str | None:
        """Take one chunk; return the new content text of choice 0, if any.

        Raises :class:`MalformedChunkError` for an object that is not a chat completion chunk.
        """
        try:
            choices = chunk.choices
            if self._first is None:
                self._first = chunk
            self.chunks += 1
            usage = chunk.usage
            if usage is not None:
                self.usage = usage
            # The common chunk: one choice, index 0, text and nothing else.
            if len(choices) == 1 and self._zero is not None:
                choice = choices[0]
                delta = choice.delta
                content = delta.content
                if (
                    content
                    and choice.index == 0
                    and choice.finish_reason is None
                    and delta.role is None
                    and delta.tool_calls is None
                    and delta.refusal is None
                    and delta.function_call is None
                ):
                    self._zero.append(content)
                    self.content_seen = True
                    return content  # type: ignore[no-any-return]
            return self._add_choices(choices)
        except (AttributeError, TypeError, KeyError) as exc:
            raise MalformedChunkError(f"not a chat completion chunk: {type(exc).__name__}") from exc

    def _add_choices(self, choices: Any) -> str | None:
        """The general case: any number of choices, roles, tool calls, refusals, finishes."""
        text = None
        for choice in choices:
            index = choice.index
            acc = self._choices.get(index)
            if acc is None:
                acc = self._choices[index] = _Choice()
                if index == 0:
                    self._zero = acc.parts
            delta = choice.delta
            content = delta.content
            if content:
                acc.parts.append(content)
                if index == 0:
                    text = content
                    self.content_seen = True
            if delta.role:
                acc.role = delta.role
            if delta.tool_calls:
                self._add_tool_calls(acc, delta.tool_calls)
                self.content_seen = True
            if getattr(delta, "refusal", None):
                acc.refusal.append(delta.refusal)
                self.content_seen = True
            if getattr(delta, "function_call", None):
                self._add_function_call(acc, delta.function_call)
                self.content_seen = True
            if choice.finish_reason is not None:
                acc.finish_reason = choice.finish_reason
        return text

    @staticmethod
    def _add_tool_calls(acc: _Choice, tool_calls: Any) -> None:
        for call in tool_calls:
            slot = acc.tool_calls.setdefault(
                call.index, {"id": None, "type": "function", "name": "", "arguments": []}
            )
            if call.id:
                slot["id"] = call.id
            if call.type:
                slot["type"] = call.type
            function = call.function
            if function is not None:
                if function.name:
                    slot["name"] += function.name
                if function.arguments:
                    slot["arguments"].append(function.arguments)

    @staticmethod
    def _add_function_call(acc: _Choice, function_call: Any) -> None:
        if acc.function_call is None:
            acc.function_call = {"name": "", "arguments": []}
        if function_call.name:
            acc.function_call["name"] += function_call.name
        if function_call.arguments:
            acc.function_call["arguments"].append(function_call.arguments)

    @property
    def finished(self) -> bool:
        """True when every choice seen has a finish_reason (and there was at least one)."""
        return bool(self._choices) and all(
            c.finish_reason is not None for c in self._choices.values()
        )

    def finish(self, *, model: str) -> ChatCompletion:
        """The assembled completion; :class:`TruncatedStreamError` if the stream was cut short."""
        if not self.finished:
            shown = sum(len(p) for c in self._choices.values() for p in c.parts)
            raise TruncatedStreamError(
                f"stream ended without finish_reason after {self.chunks} chunk(s), "
                f"{shown} character(s)"
            )
        first = self._first
        choices = []
        for index in sorted(self._choices):
            acc = self._choices[index]
            message: dict[str, Any] = {
                "role": acc.role or "assistant",
                "content": "".join(acc.parts) if acc.parts or not acc.tool_calls else None,
            }
            if acc.refusal:
                message["refusal"] = "".join(acc.refusal)
            if acc.tool_calls:
                message["tool_calls"] = [
                    {
                        "id": slot["id"] or f"call_{index}_{i}",
                        "type": slot["type"],
                        "function": {"name": slot["name"], "arguments": "".join(slot["arguments"])},
                    }
                    for i, slot in sorted(acc.tool_calls.items())
                ]
            if acc.function_call is not None:
                message["function_call"] = {
                    "name": acc.function_call["name"],
                    "arguments": "".join(acc.function_call["arguments"]),
                }
            choices.append(
                {
                    "index": index,
                    "message": message,
                    "finish_reason": acc.finish_reason,
                    "logprobs": None,
                }
            )
        data: dict[str, Any] = {
            "id": getattr(first, "id", None) or "chatcmpl-fallbackchain",
            "object": "chat.completion",
            "created": getattr(first, "created", None) or 0,
            "model": getattr(first, "model", None) or model,
            "choices": choices,
        }
        fingerprint = getattr(first, "system_fingerprint", None)
        if fingerprint:
            data["system_fingerprint"] = fingerprint
        if self.usage is not None:
            data["usage"] = self.usage.model_dump() if hasattr(self.usage, "model_dump") else None
        return ChatCompletion.model_validate(data)


def completion_text(completion: ChatCompletion) -> str:
    """The first choice's content, or ``""``."""
    if not completion.choices:
        return ""
    return completion.choices[0].message.content or ""


def check_completion(completion: object) -> ChatCompletion:
    """Validate a non-streamed completion: the right type and a finish_reason on every choice."""
    if not isinstance(completion, ChatCompletion):
        raise MalformedChunkError(f"expected a ChatCompletion, got {type(completion).__name__}")
    try:
        choices = completion.choices
        if not choices or any(c.finish_reason is None for c in choices):
            raise TruncatedStreamError("completion has no finish_reason")
    except AttributeError as exc:
        raise MalformedChunkError("completion body is not a chat completion") from exc
    return completion


class Display:
    """What the consumer has been shown; see the module docstring for the contract."""

    __slots__ = ("_buffer", "_matching", "_pos", "_shown", "_shown_parts")

    def __init__(self) -> None:
        self._shown_parts: list[str] = []
        self._shown: str | None = ""
        self._matching = False
        self._pos = 0
        self._buffer: list[str] = []

    @property
    def shown(self) -> str:
        """All text shown since the last reset."""
        if self._shown is None:
            self._shown = "".join(self._shown_parts)
            self._shown_parts = [self._shown]
        return self._shown

    def new_attempt(self) -> None:
        """A new attempt begins after a failure; its text is first matched to the shown text."""
        self._buffer = []
        self._pos = 0
        self._matching = bool(self.shown)

    def delta(self, text: str, source: str) -> tuple[ChainEvent, ...]:
        """Offer new text of the current attempt; return the events to give the consumer."""
        if not text:
            return _NO_EVENTS
        if not self._matching:
            self._shown_parts.append(text)
            self._shown = None
            return (ChainEvent("delta", text, source),)
        shown = self.shown
        pos = self._pos
        end = pos + len(text)
        if end <= len(shown):
            if shown.startswith(text, pos):
                self._pos = end
                self._buffer.append(text)
                return _NO_EVENTS
        elif text.startswith(shown[pos:]):
            new = text[len(shown) - pos :]
            self._matching = False
            self._shown_parts.append(new)
            self._shown = None
            return (ChainEvent("delta", new, source),)
        return self._replace("".join(self._buffer) + text, source)

    def settle(self, full_text: str, source: str) -> tuple[ChainEvent, ...]:
        """The current attempt succeeded with ``full_text``: close any gap with a reset."""
        if self._matching:
            self._matching = False
            if self._pos == len(self.shown) and full_text == self.shown:
                return _NO_EVENTS
            return self._replace(full_text, source)
        if full_text != self.shown:  # defensive: keep the invariant whatever happened
            return self._replace(full_text, source)
        return _NO_EVENTS

    def whole(self, full_text: str, source: str) -> tuple[ChainEvent, ...]:
        """A non-streamed answer (completion or cache): the events that show it honestly."""
        return self.delta(full_text, source) + self.settle(full_text, source)

    def _replace(self, text: str, source: str) -> tuple[ChainEvent, ...]:
        self._matching = False
        self._shown_parts = [text]
        self._shown = text
        reset = ChainEvent("reset", "", source)
        return (reset, ChainEvent("delta", text, source)) if text else (reset,)
