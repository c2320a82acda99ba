"""Chain events into SDK chunks for a drop-in stream, and what happens when an answer changes.

A drop-in consumer has no ``reset``: chunks handed out cannot be taken back. When the chain
resets (a replacement answer follows a failed attempt), :class:`Chunker` holds the
replacement's events back and compares them with what was handed out, field by field (text,
refusal, each tool call's name and arguments):

* while the replacement repeats what was handed out, nothing is yielded;
* once it has repeated **all** of it, what it adds is yielded and the stream goes on as if
  nothing happened: the consumer's accumulated message is exactly the replacement's. Tool-call
  ids are the provider's own and differ between attempts: the ids already handed out are kept
  (the replacement's are mapped onto them);
* if it says something else (other text, another tool name, other arguments), or ends before
  it repeated everything, the answer **diverged**: ``on_divergence="raise"`` (default) yields
  nothing more and raises :class:`StreamDivergedError` once the chain has finished;
  ``"buffer"`` never gets there, since it yields nothing until the answer is final.

Either way a consumer is never handed two answers glued into one.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

from .._errors import FallbackChainError
from .._results import ChainEvent, ChainResponse

__all__ = [
    "DIVERGENCE_MODES",
    "Chunker",
    "Divergence",
    "ShownMessage",
    "StreamDivergedError",
    "Verdict",
    "check_divergence",
    "compare_shown",
]

Divergence = Literal["raise", "buffer"]
"""What a drop-in stream does when the chain replaces an answer it already yielded a part of."""

DIVERGENCE_MODES: Final = ("raise", "buffer")


def check_divergence(on_divergence: object) -> Divergence:
    """``on_divergence`` as given, or ``ValueError`` naming the allowed values."""
    if on_divergence == "raise":
        return "raise"
    if on_divergence == "buffer":
        return "buffer"
    raise ValueError(f"on_divergence must be one of {DIVERGENCE_MODES}, got {on_divergence!r}")


class StreamDivergedError(FallbackChainError):
    """A drop-in stream's answer was replaced by a different one after part of it was yielded.

    Raised (with ``on_divergence="raise"``) once the chain has finished, in place of the chunks
    that would have glued a second answer onto the first. A replacement that only continues
    what was yielded (same text, same tool names, arguments extending those yielded) is not a
    divergence: the stream simply goes on. ``response`` is the replacement (``response.text``,
    ``.source``, ``.completion``, ``.attempts``); ``shown_chars`` is how many characters of
    the abandoned answer (text, refusal, tool-call arguments) the consumer was given.
    """

    def __init__(self, response: ChainResponse, shown_chars: int) -> None:
        super().__init__(
            f"the answer changed after {shown_chars} character(s) were streamed: the "
            f"replacement from {response.source!r} differs and is in .response"
        )
        self.response = response
        self.shown_chars = shown_chars


@dataclass(slots=True)
class _Call:
    id: str | None
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ShownMessage:
    """Choice 0's message as a sequence of events builds it."""

    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    calls: dict[int, _Call] = field(default_factory=dict)

    def add(self, event: ChainEvent) -> None:
        if event.type == "delta":
            self.content.append(event.text)
        elif event.type == "refusal":
            self.refusal.append(event.text)
        elif event.type == "tool_call":
            call = self.calls.get(event.index)
            if call is None:
                call = self.calls[event.index] = _Call(event.id, event.name or "")
            else:  # as known so far: the latest event's win
                call.id, call.name = event.id or call.id, event.name or call.name
            call.arguments.append(event.text)

    def fields(self) -> dict[tuple[str, int], str]:
        """Every field as text, by ``("content"|"refusal", 0)`` or ``("name"|"arguments", i)``."""
        out = {("content", 0): "".join(self.content), ("refusal", 0): "".join(self.refusal)}
        for index, call in self.calls.items():
            out["name", index] = call.name
            out["arguments", index] = "".join(call.arguments)
        return out


Verdict = Literal["behind", "caught", "diverged"]


def compare_shown(handed: ShownMessage, current: ShownMessage) -> Verdict:
    """Whether ``current`` (a replacement so far) repeats or continues ``handed``.

    ``"caught"``: every field handed out is a prefix of the replacement's; ``"behind"``: none
    contradicts it yet, but some is not repeated whole; ``"diverged"``: one says otherwise.
    """
    verdict: Literal["behind", "caught"] = "caught"
    now = current.fields()
    for key, shown in handed.fields().items():
        said = now.get(key, "")
        if said.startswith(shown):
            continue
        if not shown.startswith(said):
            return "diverged"
        verdict = "behind"
    return verdict


_new = object.__new__
_set = object.__setattr__
# Every field of each model, unset (None: all of these default to None).
_CHUNK_FIELDS: Final = dict.fromkeys(ChatCompletionChunk.model_fields)
_CHOICE_FIELDS: Final = dict.fromkeys(Choice.model_fields)
_DELTA_FIELDS: Final = dict.fromkeys(ChoiceDelta.model_fields)
_CHUNK_SET: Final = frozenset(("id", "object", "created", "model", "choices", "usage"))
_CHOICE_SET: Final = frozenset(("index", "delta", "finish_reason", "logprobs"))


def _built(cls: type[Any], fields: dict[str, Any], fields_set: frozenset[str]) -> Any:
    """An instance of the SDK model ``cls`` from already-valid ``fields``, not re-validated.

    What pydantic's ``model_construct`` does, flat: the same ``__dict__``, fields set, extras
    (none: the SDK's models allow extras) and private state as ``model_validate`` gives.
    """
    model = _new(cls)
    _set(model, "__dict__", fields)
    _set(model, "__pydantic_extra__", {})
    _set(model, "__pydantic_fields_set__", set(fields_set))
    _set(model, "__pydantic_private__", None)
    return model


class Chunker:
    """Turns one request's chain events into SDK chunks, and applies ``on_divergence``.

    Every chunk of a stream shares one ``id`` (``chatcmpl-fc-`` + hex), ``created`` and
    ``model`` (the requested one): they are handed out before the chain knows which upstream
    answer will stand. ``trace_of(stream).completion`` has the upstream's own values (and its
    own tool-call ids: see the module docstring).
    """

    __slots__ = (
        "_buffer",
        "_created",
        "_current",
        "_diverged",
        "_handed",
        "_id",
        "_model",
        "_shown",
        "_started",
        "_usage",
    )

    def __init__(self, model: str, *, usage: bool, divergence: Divergence) -> None:
        self._id = f"chatcmpl-fc-{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._model = model
        self._usage = usage
        self._buffer = divergence == "buffer"
        self._started = False  # the role chunk was yielded
        self._shown = 0  # characters yielded: content, refusal, tool-call arguments
        self._handed = ShownMessage()  # what the consumer has been given
        # The events since the chain's last reset, held back while they repeat what was
        # handed out; None when they are the ones handed out (the common case).
        self._current: ShownMessage | None = None
        self._diverged = False

    def _chunk(self, choices: list[dict[str, Any]], usage: Any = None) -> ChatCompletionChunk:
        return ChatCompletionChunk.model_validate(
            {
                "id": self._id,
                "object": "chat.completion.chunk",
                "created": self._created,
                "model": self._model,
                "choices": choices,
                "usage": usage,
            }
        )

    def _delta(
        self, delta: dict[str, Any], finish_reason: str | None = None
    ) -> ChatCompletionChunk:
        return self._chunk(
            [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
        )

    def _open(self) -> list[ChatCompletionChunk]:
        """The role chunk, before anything else."""
        if self._started:
            return []
        self._started = True
        return [self._delta({"role": "assistant", "content": ""})]

    def _text_chunk(self, kind: str, text: str) -> ChatCompletionChunk:
        """``self._delta({kind: text})``, built without validation: one per chunk of text.

        Every value is already of its field's type (a str, an int, the ids made here), so
        the chunk equals the validated one (tests/test_dropin_chunks.py checks it).
        """
        delta = _built(ChoiceDelta, {**_DELTA_FIELDS, kind: text}, frozenset((kind,)))
        choice = _built(Choice, {**_CHOICE_FIELDS, "index": 0, "delta": delta}, _CHOICE_SET)
        fields = {
            **_CHUNK_FIELDS,
            "id": self._id,
            "object": "chat.completion.chunk",
            "created": self._created,
            "model": self._model,
            "choices": [choice],
        }
        chunk: ChatCompletionChunk = _built(ChatCompletionChunk, fields, _CHUNK_SET)
        return chunk

    def _text(self, text: str, kind: str = "content") -> list[ChatCompletionChunk]:
        out = self._open()
        if text:
            self._shown += len(text)
            (self._handed.content if kind == "content" else self._handed.refusal).append(text)
            out.append(self._text_chunk(kind, text))
        return out

    def _tool_call(
        self, index: int, call_id: str | None, name: str | None, arguments: str
    ) -> list[ChatCompletionChunk]:
        """One piece of a tool call, shaped as the SDK streams it."""
        out = self._open()
        function: dict[str, Any] = {"arguments": arguments}
        call: dict[str, Any] = {"index": index, "function": function}
        sent = self._handed.calls.get(index)
        if sent is None:  # the call's first chunk: who and what
            call.update(id=call_id, type="function")
            function["name"] = name or ""
            sent = self._handed.calls[index] = _Call(call_id, name or "")
        else:  # later ones append; an id or a name that grew is sent as the SDK would
            if sent.id is None and call_id:  # an id handed out stays (see the module doc)
                call["id"] = sent.id = call_id
            if name and name != sent.name:
                known = sent.name
                function["name"] = name[len(known) :] if name.startswith(known) else name
                sent.name = name
            if not arguments and len(call) == 2 and len(function) == 1:
                return out  # nothing new to say
        sent.arguments.append(arguments)
        self._shown += len(arguments)
        out.append(self._delta({"tool_calls": [call]}))
        return out

    def _hand(self, event: ChainEvent) -> list[ChatCompletionChunk]:
        if event.type == "tool_call":
            return self._tool_call(event.index, event.id, event.name, event.text)
        if event.type == "refusal":
            return self._text(event.text, "refusal")
        return self._text(event.text)

    def event(self, event: ChainEvent) -> list[ChatCompletionChunk]:
        """The chunks to yield for one chain event (none while buffering, held or diverged)."""
        if self._buffer or self._diverged:
            return []
        current = self._current
        if event.type == "reset":
            # Nothing handed out yet: the replacement simply streams instead.
            handed = self._handed
            if handed.content or handed.refusal or handed.calls:
                self._current = ShownMessage()
            return []
        if current is None:
            return self._hand(event)
        current.add(event)
        verdict = compare_shown(self._handed, current)
        if verdict == "diverged":
            self._diverged = True
        if verdict != "caught":
            return []
        self._current = None  # the replacement repeated all: hand out what it adds
        return self._extend(current)

    def _extend(self, current: ShownMessage) -> list[ChatCompletionChunk]:
        """What ``current`` has beyond the handed message (of which it holds all)."""
        handed = self._handed
        out = self._text("".join(current.content)[sum(map(len, handed.content)) :])
        for index, call in sorted(current.calls.items()):
            sent = handed.calls.get(index)
            shown = sum(map(len, sent.arguments)) if sent is not None else 0
            out += self._tool_call(index, call.id, call.name, "".join(call.arguments)[shown:])
        return out + self._text(
            "".join(current.refusal)[sum(map(len, handed.refusal)) :], "refusal"
        )

    def _whole(self, response: ChainResponse) -> list[ChatCompletionChunk]:
        """All of a buffered answer: its text, each tool call whole, its refusal."""
        out = self._text(response.text)
        completion = response.completion
        if not completion.choices:
            return out
        message = completion.choices[0].message
        for index, call in enumerate(message.tool_calls or ()):
            function = getattr(call, "function", None)  # custom (non-function) tools have none
            out += self._tool_call(
                index,
                call.id,
                getattr(function, "name", None),
                getattr(function, "arguments", "") or "",
            )
        if message.refusal:
            out += self._text(message.refusal, "refusal")
        return out

    def end(self, response: ChainResponse) -> list[ChatCompletionChunk]:
        """The chunks that finish the stream; raises :class:`StreamDivergedError` instead.

        A replacement still held back at the end never repeated all that was handed out: it
        is shorter, so it diverged.
        """
        if self._diverged or self._current is not None:
            self._diverged = True
            raise StreamDivergedError(response, self._shown)
        completion = response.completion
        out = self._whole(response) if self._buffer else self._open()
        finish_reason = completion.choices[0].finish_reason if completion.choices else "stop"
        out.append(self._delta({}, finish_reason))
        if self._usage:
            usage = completion.usage.model_dump() if completion.usage is not None else None
            out.append(self._chunk([], usage))
        return out
