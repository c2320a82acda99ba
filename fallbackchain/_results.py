"""What a request gives back: stream events, attempts and the final response (all frozen)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

# Attempt lives with the errors that carry it (AllTiersFailedError.attempts), so that this
# module depends on _errors and never the other way round; it is re-exported here.
from ._errors import Attempt

if TYPE_CHECKING:
    from openai.types import CompletionUsage
    from openai.types.chat import ChatCompletion

__all__ = ["Attempt", "ChainEvent", "ChainResponse", "EventType", "Source"]

EventType = Literal["delta", "reset", "tool_call", "refusal"]
Source = str
"""``"stream"``, ``"completion"`` or ``"cache"`` (fallback tiers use their configured name)."""


@dataclass(frozen=True, slots=True, init=False)
class ChainEvent:
    """One event of a chain stream.

    ``type == "delta"``: ``text`` is new answer text, to append to what was shown.
    ``type == "tool_call"``: a piece of the tool call at position ``index`` of
    ``message.tool_calls``: ``id`` and ``name`` are the call's (as known so far; the latest
    event's win) and ``text`` is a fragment of its JSON arguments, to append. The first event
    of a call may carry ``text == ""``: the call has started and its arguments are coming.
    ``type == "refusal"``: ``text`` is new refusal text, to append to ``message.refusal``.
    ``type == "reset"``: discard everything shown so far (text, tool calls, refusal); the
    events that follow replace it (``text`` is empty).

    After the last reset the events rebuild the final message: the deltas, joined, equal
    ``response.text``; the refusal events, joined, its ``refusal``; the tool-call events,
    grouped by ``index``, its ``tool_calls`` (ids, names and arguments). A retried or
    fallen-back answer never duplicates or mixes them: repeated text is matched and not shown
    again, but tool calls and refusals are never matched (another attempt gives other ids and
    arguments), so an attempt after one that showed any of them starts with a ``reset``.
    """

    type: EventType
    text: str
    source: Source
    index: int = 0
    id: str | None = None
    name: str | None = None

    def __init__(
        self,
        type: EventType,
        text: str,
        source: Source,
        *,
        index: int = 0,
        id: str | None = None,
        name: str | None = None,
    ) -> None:
        # One event per chunk on the hot path: the slots' own setters cost about half of the
        # generated frozen __init__ (an object.__setattr__ per field).
        _set_type(self, type)
        _set_text(self, text)
        _set_source(self, source)
        _set_index(self, index)
        _set_id(self, id)
        _set_name(self, name)


def _setter(name: str) -> Callable[[ChainEvent, Any], None]:
    setter: Callable[[ChainEvent, Any], None] = ChainEvent.__dict__[name].__set__
    return setter


_set_type, _set_text, _set_source, _set_index, _set_id, _set_name = (
    _setter(name) for name in ("type", "text", "source", "index", "id", "name")
)


@dataclass(frozen=True, slots=True)
class ChainResponse:
    """The whole answer to one request, whichever tier gave it.

    ``completion`` is an openai ``ChatCompletion`` (for a streamed answer, assembled from the
    chunks). ``text`` is the first choice's content (``""`` for a pure tool call). ``source`` is
    the tier that answered; ``cache_age`` is the age in seconds of a cached answer, else ``None``.

    An answer from the cache bills nothing: its ``completion.usage`` counts zero tokens, and
    the usage reported when it was first answered is ``stored_usage`` (else ``None``).
    """

    text: str
    source: Source
    completion: ChatCompletion
    attempts: tuple[Attempt, ...]
    cache_age: float | None = None
    stored_usage: CompletionUsage | None = None

    @property
    def from_cache(self) -> bool:
        """True when the answer came from the fallback cache."""
        return self.source == "cache"
