"""After a fault mid-stream: a drop-in stream continues seamlessly, or its answer diverged.

A drop-in consumer has no ``reset``: what was handed out cannot be taken back. When the chain
resets (a replacement answer follows a failed attempt), an :class:`EventTranslator` holds the
replacement's events back and compares them with what was handed out, field by field (text,
refusal, each tool call's name and arguments):

* while the replacement repeats what was handed out, nothing is yielded;
* once it has repeated **all** of it, what it adds is yielded and the stream goes on as if
  nothing happened: the consumer's accumulated message is exactly the replacement's;
* if it says something else (other text, another tool name, other arguments), or ends before
  it repeated everything, the answer **diverged**: ``on_divergence="raise"`` (default) yields
  nothing more and raises :class:`StreamDivergedError` once the chain has finished;
  ``"buffer"`` never gets there, since it yields nothing of the answer until it is final.

Either way a consumer is never handed two answers glued into one. Both drop-ins follow this
rule: chat's ``Chunker`` and the Responses API's ``ResponsesEventer`` only build their items.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final, Generic, Literal, TypeVar

from .._errors import FallbackChainError
from .._results import ChainEvent, ChainResponse
from ._assembly import Fragment

__all__ = [
    "DIVERGENCE_MODES",
    "Divergence",
    "EventTranslator",
    "ShownCall",
    "ShownMessage",
    "StreamDivergedError",
    "TextKind",
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
class ShownCall:
    """One tool call as shown so far: its id, name, and its arguments in pieces."""

    id: str | None
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class ShownMessage:
    """Choice 0's message as a sequence of events builds it."""

    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    calls: dict[int, ShownCall] = field(default_factory=dict)

    def add(self, event: ChainEvent) -> None:
        if event.type == "delta":
            self.content.append(event.text)
        elif event.type == "refusal":
            self.refusal.append(event.text)
        elif event.type == "tool_call":
            call = self.calls.get(event.index)
            if call is None:
                call = self.calls[event.index] = ShownCall(event.id, event.name or "")
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

    def chars(self) -> int:
        """How many characters of text, refusal and tool-call arguments it holds."""
        pieces = [*self.content, *self.refusal]
        for call in self.calls.values():
            pieces += call.arguments
        return sum(map(len, pieces))


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


TextKind = Literal["content", "refusal"]
"""The two text fields of a message: its content, its refusal (as in :class:`Fragment`)."""

_Item = TypeVar("_Item")


class EventTranslator(ABC, Generic[_Item]):
    """Turns one request's chain events into a drop-in stream's items; applies ``on_divergence``.

    The rule (see the module docstring) is here; a subclass only builds its API's items:
    :meth:`_text`, :meth:`_tool_call` and :meth:`_finish`. What :meth:`_text` and
    :meth:`_tool_call` hand out, they record in ``self._handed``; with ``"buffer"``,
    :meth:`_finish` hands out the whole answer with :meth:`_whole`.
    """

    __slots__ = ("_buffer", "_current", "_diverged", "_handed")

    def __init__(self, divergence: Divergence) -> None:
        self._buffer = divergence == "buffer"
        self._handed = ShownMessage()  # what the consumer has been given
        # The events since the chain's last reset, held back while they repeat what was
        # handed out; None when they are the ones handed out (the common case).
        self._current: ShownMessage | None = None
        self._diverged = False

    @abstractmethod
    def _text(self, text: str, kind: TextKind) -> list[_Item]:
        """The items that hand out ``text`` (maybe ``""``) of the message's ``kind`` field."""

    @abstractmethod
    def _tool_call(
        self, index: int, call_id: str | None, name: str | None, arguments: str
    ) -> list[_Item]:
        """The items that hand out a piece of the tool call at ``index`` (id, name as known)."""

    @abstractmethod
    def _finish(self, response: ChainResponse) -> list[_Item]:
        """The items that finish a stream whose answer did not diverge."""

    def _hand(self, event: ChainEvent) -> list[_Item]:
        if event.type == "tool_call":
            return self._tool_call(event.index, event.id, event.name, event.text)
        if event.type == "refusal":
            return self._text(event.text, "refusal")
        return self._text(event.text, "content")

    def event(self, event: ChainEvent) -> list[_Item]:
        """The items to yield for one chain event (none while buffering, held or diverged)."""
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

    def _extend(self, current: ShownMessage) -> list[_Item]:
        """What ``current`` has beyond the handed message (of which it holds all)."""
        handed = self._handed
        out = self._text("".join(current.content)[sum(map(len, handed.content)) :], "content")
        for index, call in sorted(current.calls.items()):
            sent = handed.calls.get(index)
            shown = sum(map(len, sent.arguments)) if sent is not None else 0
            out += self._tool_call(index, call.id, call.name, "".join(call.arguments)[shown:])
        refusal = "".join(current.refusal)[sum(map(len, handed.refusal)) :]
        return out + self._text(refusal, "refusal")

    def _whole(self, fragments: Iterable[Fragment]) -> list[_Item]:
        """All of a buffered answer, as its endpoint's ``fragments()`` gives it."""
        out: list[_Item] = []
        for fragment in fragments:
            kind = fragment.kind
            if kind == "tool_call":
                out += self._tool_call(fragment.index, fragment.id, fragment.name, fragment.text)
            else:
                out += self._text(fragment.text, kind)
        return out

    def end(self, response: ChainResponse) -> list[_Item]:
        """The items that finish the stream; raises :class:`StreamDivergedError` instead.

        A replacement still held back at the end never repeated all that was handed out: it
        is shorter, so it diverged.
        """
        if self._diverged or self._current is not None:
            self._diverged = True
            raise StreamDivergedError(response, self._handed.chars())
        return self._finish(response)
