"""Stream assembly: chunks into a completion, and attempts into one honest event sequence.

Two pure objects, shared by the sync and async drivers:

* :class:`AttemptAssembler` turns one attempt's chunks, the JSON objects the provider sent
  (dicts, as ``ChatEndpoint.create`` streams them), into a ``ChatCompletion``. It refuses a
  stream that ended without a ``finish_reason`` (the SDK returns such a silently truncated
  stream as if it were complete) and a chunk that is not a chunk. Per chunk it does a few
  key reads and a list append: no pydantic objects; one ``ChatCompletion`` is validated at
  the end.
* :class:`Display` remembers what the consumer has been shown since the last ``reset`` and
  makes sure a retried or fallen-back answer never shows duplicated text: while a new attempt
  repeats text already shown it emits nothing; once it goes further it emits only the new part;
  if it diverges it emits ``reset`` and the replacement. Tool calls and refusals stream as
  their own events and are never matched: an attempt after one that showed any of them starts
  with ``reset``. Invariant: the events after the last reset rebuild the final message (text,
  refusal, tool calls); it is checked when the attempt has answered, and restored with a reset if
  anything differs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from openai.types.chat import ChatCompletion

from .._completion_json import has_text_where_text_goes
from .._errors import MalformedChunkError, TruncatedStreamError
from .._results import ChainEvent

__all__ = [
    "COMPLETE_FINISH_REASONS",
    "AttemptAssembler",
    "Display",
    "Fragment",
    "Piece",
    "Shown",
    "check_completion",
    "completion_text",
    "whole_fragments",
]

COMPLETE_FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "function_call"})
"""Finish reasons of a whole answer, which may be cached (``content_filter`` may not)."""

_NO_EVENTS: tuple[ChainEvent, ...] = ()


@dataclass(frozen=True, slots=True)
class Fragment:
    """A piece of choice 0's message that is not plain text, or text that came with one.

    ``kind`` ``"tool_call"``: ``text`` is an arguments fragment of the call at ``index``,
    whose ``id`` and ``name`` are as known so far; ``"refusal"`` and ``"content"``: text.
    """

    kind: Literal["content", "refusal", "tool_call"]
    text: str
    index: int = 0
    id: str | None = None
    name: str | None = None


Piece = str | tuple[Fragment, ...]
"""What one chunk adds to choice 0: its text (the common case) or its fragments."""


# Plain classes, not dataclasses: import time (CONTRIBUTING.md).


class _Choice:
    __slots__ = ("finish_reason", "function_call", "parts", "refusal", "role", "tool_calls")

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.role: str | None = None
        self.finish_reason: str | None = None
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.function_call: dict[str, Any] | None = None


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

    def add(self, chunk: Any) -> Piece | None:
        """Take one chunk (a JSON object as sent); return what it adds to choice 0, if anything.

        A chunk of text only gives its text (a ``str``); one with tool-call pieces or refusal
        text gives a tuple of :class:`Fragment` (any text first). Optional keys may be absent
        or ``null`` alike.

        Raises :class:`MalformedChunkError` for a value that is not a chat completion chunk
        (not an object, no ``choices`` list, a choice without ``delta``, a text that is not
        a string).
        """
        try:
            choices = chunk["choices"]
            if self._first is None:
                self._first = chunk
            self.chunks += 1
            usage = chunk.get("usage")
            if usage is not None:
                self.usage = usage
            # The common chunk: one choice, index 0, text and nothing else.
            if len(choices) == 1 and self._zero is not None:
                choice = choices[0]
                delta = choice["delta"]
                content = delta.get("content")
                if (
                    content
                    and content.__class__ is str
                    and choice["index"] == 0
                    and choice.get("finish_reason") is None
                    and delta.get("role") is None
                    and delta.get("tool_calls") is None
                    and delta.get("refusal") is None
                    and delta.get("function_call") is None
                ):
                    self._zero.append(content)
                    self.content_seen = True
                    return content
            return self._add_choices(choices)
        except (AttributeError, TypeError, KeyError, IndexError) as exc:
            raise MalformedChunkError(f"not a chat completion chunk: {type(exc).__name__}") from exc

    def _add_choices(self, choices: Any) -> Piece | None:
        """The general case: any number of choices, roles, tool calls, refusals, finishes."""
        text = None
        fragments: list[Fragment] = []
        for choice in choices:
            index = choice["index"]
            acc = self._choices.get(index)
            if acc is None:
                acc = self._choices[index] = _Choice()
                if index == 0:
                    self._zero = acc.parts
            delta = choice["delta"]
            content = _text(delta.get("content"))
            if content:
                acc.parts.append(content)
                if index == 0:
                    text = content
                    self.content_seen = True
            role = delta.get("role")
            if role:
                acc.role = role
            tool_calls = delta.get("tool_calls")
            if tool_calls:
                calls = self._add_tool_calls(acc, tool_calls)
                if index == 0:
                    fragments.extend(
                        Fragment("tool_call", arguments, i, acc.tool_calls[i]["id"] or
                                 f"call_0_{i}", acc.tool_calls[i]["name"])
                        for i, arguments in calls
                    )
                self.content_seen = True
            refusal = _text(delta.get("refusal"))
            if refusal:
                acc.refusal.append(refusal)
                if index == 0:
                    fragments.append(Fragment("refusal", refusal))
                self.content_seen = True
            function_call = delta.get("function_call")
            if function_call:
                self._add_function_call(acc, function_call)
                self.content_seen = True
            finish_reason = choice.get("finish_reason")
            if finish_reason is not None:
                acc.finish_reason = finish_reason
        if fragments:
            if text:
                fragments.insert(0, Fragment("content", text))
            return tuple(fragments)
        return text

    @staticmethod
    def _add_tool_calls(acc: _Choice, tool_calls: Any) -> list[tuple[int, str]]:
        """Add the pieces; return each call's ``(index, arguments fragment)``, in order."""
        added = []
        for call in tool_calls:
            index = call.get("index")
            if index is None:
                index = _call_index(acc.tool_calls, call)
            slot = acc.tool_calls.setdefault(
                index, {"id": None, "type": "function", "name": "", "arguments": []}
            )
            if call.get("id"):
                slot["id"] = call["id"]
            if call.get("type"):
                slot["type"] = call["type"]
            function = call.get("function")
            arguments = ""
            if function is not None:
                name = _text(function.get("name"))
                if name:
                    slot["name"] += name
                arguments = _text(function.get("arguments")) or ""
                if arguments:
                    slot["arguments"].append(arguments)
            added.append((index, arguments))
        return added

    @staticmethod
    def _add_function_call(acc: _Choice, function_call: Any) -> None:
        if acc.function_call is None:
            acc.function_call = {"name": "", "arguments": []}
        name = _text(function_call.get("name"))
        if name:
            acc.function_call["name"] += name
        arguments = _text(function_call.get("arguments"))
        if arguments:
            acc.function_call["arguments"].append(arguments)

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
            "id": first.get("id") or "chatcmpl-fallbackchain",
            "object": "chat.completion",
            "created": first.get("created") or 0,
            "model": first.get("model") or model,
            "choices": choices,
        }
        fingerprint = first.get("system_fingerprint")
        if fingerprint:
            data["system_fingerprint"] = fingerprint
        if self.usage is not None:
            data["usage"] = self.usage
        try:
            return ChatCompletion.model_validate(data)
        except ValueError as exc:  # pydantic's ValidationError: a value of the wrong type
            raise MalformedChunkError(
                f"the chunks do not make a chat completion: {exc.__class__.__name__}"
            ) from None


def _call_index(calls: dict[int, dict[str, Any]], call: Mapping[str, Any]) -> int:
    """The position of a streamed tool-call piece sent without ``index`` (Gemini omits it).

    A piece with the ``id`` of a call already seen belongs to that call; one with a new
    ``id`` (or a function name and no ``id``) starts the next call; one with neither goes on
    with the latest call (its arguments continue).
    """
    id = call.get("id")
    if id is not None:
        for index, slot in calls.items():
            if slot["id"] == id:
                return index
    function = call.get("function") or {}
    if id is not None or function.get("name") or not calls:
        return max(calls, default=-1) + 1
    return max(calls)


def _text(value: Any) -> str | None:
    """``value`` if it is text (or absent); a chunk's text of another type is malformed."""
    if value is None or value.__class__ is str:
        return value
    raise TypeError("not text")


def completion_text(completion: ChatCompletion) -> str:
    """The first choice's content, or ``""``."""
    if not completion.choices:
        return ""
    return completion.choices[0].message.content or ""


def check_completion(completion: object) -> ChatCompletion:
    """Validate a non-streamed completion: the right type and a finish_reason on every choice.

    A completion built leniently (one that did not validate, read as the SDK reads it) must
    still have text where text goes: content, refusal, tool-call names and arguments.
    """
    if not isinstance(completion, ChatCompletion):
        raise MalformedChunkError(f"expected a ChatCompletion, got {type(completion).__name__}")
    try:
        choices = completion.choices
        if not choices or any(c.finish_reason is None for c in choices):
            raise TruncatedStreamError("completion has no finish_reason")
    except (AttributeError, TypeError) as exc:
        raise MalformedChunkError("completion body is not a chat completion") from exc
    if not has_text_where_text_goes(completion):
        raise MalformedChunkError("completion body is not a chat completion")
    return completion


_Message = tuple[str, str, list[tuple[str | None, str, str]]]

Shown = ChatCompletion | str | tuple[Fragment, ...]
"""A whole answer as :class:`Display` takes it: a chat completion (its choice 0), text only,
or any API's answer as its fragments (see ``Endpoint.fragments``)."""


def _message(completion: Shown) -> _Message:
    """Choice 0's text, refusal and tool calls ``(id, name, arguments)``, for comparison.

    A string is an answer of text only; fragments are read as :func:`whole_fragments` gives.
    """
    calls: list[tuple[str | None, str, str]] = []
    if isinstance(completion, str):
        return completion, "", calls
    if isinstance(completion, tuple):
        if len(completion) == 1 and completion[0].kind == "content":  # text only: the usual
            return completion[0].text, "", calls
        text = "".join(f.text for f in completion if f.kind == "content")
        refusal = "".join(f.text for f in completion if f.kind == "refusal")
        calls.extend((f.id, f.name or "", f.text) for f in completion if f.kind == "tool_call")
        return text, refusal, calls
    if not completion.choices:
        return "", "", calls
    message = completion.choices[0].message
    for call in message.tool_calls or ():
        function = getattr(call, "function", None)  # custom (non-function) tools have none
        name = getattr(function, "name", "") or ""
        calls.append((call.id, name, getattr(function, "arguments", "") or ""))
    return message.content or "", message.refusal or "", calls


def whole_fragments(completion: Shown) -> tuple[Fragment, ...]:
    """All of choice 0's message as fragments: text, each tool call whole, refusal."""
    if isinstance(completion, tuple):
        return completion
    text, refusal, calls = _message(completion)
    if not (calls or refusal):  # text only: the usual answer
        return (Fragment("content", text),) if text else ()
    fragments = [Fragment("content", text)] if text else []
    fragments.extend(
        Fragment("tool_call", arguments, i, call_id, name)
        for i, (call_id, name, arguments) in enumerate(calls)
    )
    if refusal:
        fragments.append(Fragment("refusal", refusal))
    return tuple(fragments)


class _ShownCall:
    __slots__ = ("arguments", "id", "name")

    def __init__(self, id: str | None, name: str | None) -> None:
        self.id = id
        self.name = name
        self.arguments: list[str] = []


class Display:
    """What the consumer has been shown; see the module docstring for the contract."""

    __slots__ = (
        "_buffer",
        "_calls",
        "_matching",
        "_pos",
        "_refusal",
        "_shown_parts",
        "_stale",
        "plain",
        "record_text",
    )

    def __init__(self) -> None:
        # Text shown since the last reset, in pieces; joined (in place) when read. The list
        # is never replaced, so ``record_text`` (its bound ``append``) stays valid.
        self._shown_parts: list[str] = []
        self.record_text = self._shown_parts.append
        """In :attr:`plain` mode, a driver may record shown text with this and build the
        ``delta`` event itself: exactly what :meth:`delta` does for a ``str`` piece then."""
        self.plain = True
        """New text goes straight to the consumer (no earlier answer to match, nothing stale)."""
        self._matching = False
        self._pos = 0
        self._buffer: list[str] = []
        self._calls: dict[int, _ShownCall] = {}  # tool calls shown since the last reset
        self._refusal: list[str] = []  # refusal text shown since the last reset
        self._stale = False  # a failed attempt's tool calls or refusal are shown

    @property
    def shown(self) -> str:
        """All text shown since the last reset."""
        parts = self._shown_parts
        if len(parts) == 1:
            return parts[0]
        text = "".join(parts)
        parts[:] = [text]
        return text

    def new_attempt(self) -> None:
        """A new attempt begins after a failure; its text is first matched to the shown text.

        When tool calls or refusal text were shown, they cannot be continued by another
        attempt (its ids and arguments differ): its first event will be a reset.
        """
        self._buffer = []
        self._pos = 0
        if self._calls or self._refusal:
            self._stale = True
            self._matching = False
        else:
            self._matching = bool(self.shown)
        self.plain = not (self._matching or self._stale)

    def delta(self, piece: Piece, source: str) -> tuple[ChainEvent, ...]:
        """Offer what a chunk of the current attempt added; return the events to show."""
        if not piece:
            return _NO_EVENTS
        if isinstance(piece, str):
            if not self.plain:
                return self._text(piece, source)
            # The common case, inline: new text of the first attempt, shown as it comes.
            self._shown_parts.append(piece)
            return (ChainEvent("delta", piece, source),)
        events: list[ChainEvent] = []
        for fragment in piece:
            if fragment.kind == "content":
                events.extend(self._text(fragment.text, source))
            else:
                events.extend(self._other(fragment, source))
        return tuple(events)

    def _text(self, text: str, source: str) -> tuple[ChainEvent, ...]:
        if not text:
            return _NO_EVENTS
        if self._stale:
            return self._replace(text, source)
        if not self._matching:
            self._shown_parts.append(text)
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
            self.plain = True  # not stale either: checked first
            self._shown_parts.append(new)
            return (ChainEvent("delta", new, source),)
        return self._replace("".join(self._buffer) + text, source)

    def _other(self, fragment: Fragment, source: str) -> tuple[ChainEvent, ...]:
        """A tool-call or refusal fragment: never matched, shown as it comes."""
        lead = _NO_EVENTS
        if self._stale:
            lead = self._replace("", source)
        elif self._matching:
            self._matching = False
            self.plain = True
            if self._pos < len(self.shown):  # this answer's text is shorter: it diverged
                lead = self._replace("".join(self._buffer), source)
        if fragment.kind == "refusal":
            self._refusal.append(fragment.text)
            return (*lead, ChainEvent("refusal", fragment.text, source))
        call = self._calls.get(fragment.index)
        if call is None:
            call = self._calls[fragment.index] = _ShownCall(fragment.id, fragment.name)
        else:
            call.id, call.name = fragment.id, fragment.name
        call.arguments.append(fragment.text)
        event = ChainEvent(
            "tool_call",
            fragment.text,
            source,
            index=fragment.index,
            id=fragment.id,
            name=fragment.name,
        )
        return (*lead, event)

    def answered(self, completion: Shown, source: str) -> tuple[ChainEvent, ...]:
        """The current attempt succeeded with ``completion`` (or this text): close any gap.

        When the events since the last reset do not rebuild its choice 0 exactly, this
        returns a reset and the whole answer.
        """
        self._matching = False
        self.plain = not self._stale
        if self._stale or self._rebuilt() != _message(completion):
            return self._replace_whole(completion, source)
        return _NO_EVENTS

    def whole(self, completion: Shown, source: str) -> tuple[ChainEvent, ...]:
        """A non-streamed answer (completion or cache): the events that show it honestly."""
        return self.delta(whole_fragments(completion), source) + self.answered(completion, source)

    def _rebuilt(self) -> _Message:
        """What the events since the last reset rebuild, in :func:`_message`'s form."""
        calls = [
            (call.id, call.name or "", "".join(call.arguments))
            for _, call in sorted(self._calls.items())
        ] if self._calls else []
        return self.shown, "".join(self._refusal), calls

    def _replace(self, text: str, source: str) -> tuple[ChainEvent, ...]:
        self._matching = False
        self._stale = False
        self.plain = True
        self._calls = {}
        self._refusal = []
        self._shown_parts[:] = [text]
        reset = ChainEvent("reset", "", source)
        return (reset, ChainEvent("delta", text, source)) if text else (reset,)

    def _replace_whole(self, completion: Shown, source: str) -> tuple[ChainEvent, ...]:
        events = self._replace("", source)
        return events + self.delta(whole_fragments(completion), source)
