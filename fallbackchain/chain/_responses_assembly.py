"""Responses stream assembly: the SDK's typed events of one generation into its ``Response``.

:class:`ResponseAssembler` is pure (no I/O) and shared by the sync and async drivers. It
follows one *generation*: the events of one ``responses.create(stream=True)`` and, when a
background response is resumed with ``responses.retrieve(id, stream=True,
starting_after=N)``, the events of every later connection to the same response.

What a caller can rely on:

* **Each event once.** :meth:`ResponseAssembler.seen` is true for an event whose
  ``sequence_number`` is at or below the last one taken; :meth:`ResponseAssembler.add`
  ignores such an event (``None``): a resumed connection that replays part of the stream
  shows nothing twice. :attr:`ResponseAssembler.last_sequence` is the ``starting_after`` to
  resume from. A :class:`~fallbackchain.chain.Resumed` marker (put in the stream by the
  resuming stream, see ``_responses_resume``) is recorded in :attr:`ResponseAssembler.resumptions`.
* **What each event shows.** :meth:`ResponseAssembler.add` returns what an event adds to the
  answer in the chat assembly's terms (:data:`~fallbackchain.chain.Piece`): the text of an
  ``output_text`` delta as a ``str``; a function call's start (its ``call_id`` and name) and
  each arguments delta as a ``tool_call`` :class:`~fallbackchain.chain.Fragment` (``index`` is
  the call's position among the function calls); refusal text as a ``refusal`` fragment.
  Reasoning summaries and every other event add nothing to the shown answer (``None``); they
  still count as content and are rebuilt into the ``Response``.
* **Only ``response.completed`` completes.** :meth:`ResponseAssembler.finish` returns the
  final ``Response``: the one the ``response.completed`` event carries, with its ``output``
  rebuilt from the finished items when the event leaves it out. Every other ending is an
  error of the chain's tree, its text the event's code or reason, never the server's
  message (it may echo the request): ``response.incomplete`` is a
  :class:`ResponseIncompleteError` (its ``reason``; the incomplete ``Response`` on
  ``.response``); ``response.failed`` and an ``error`` event are a
  :class:`~fallbackchain.StreamEventError`; a stream that ends without any of them is a
  :class:`~fallbackchain.TruncatedStreamError`; an event that is not what its type says is a
  :class:`~fallbackchain.MalformedChunkError`. The terminal errors are raised by :meth:`add`
  itself, so a driver's ``for`` loop over the SDK stream fails where the stream did.
"""

from __future__ import annotations

from typing import Any, Final

from openai.types.responses import Response

from .._errors import MalformedChunkError, StreamEventError, TruncatedStreamError
from ._assembly import Fragment, Piece
from ._responses_resume import Resumed, mark_resumptions

__all__ = [
    "ANSWERED_INCOMPLETE",
    "RETRYABLE_INCOMPLETE",
    "ResponseAssembler",
    "ResponseIncompleteError",
    "error_code",
]

ANSWERED_INCOMPLETE: Final = frozenset({"max_output_tokens", "max_messages", "content_filter"})
"""Incomplete reasons that are this request's answer, as chat's ``finish_reason`` ``length``
and ``content_filter`` are: the ``Response`` (``status="incomplete"``) is returned as the SDK
returns it, counted as a success, never retried or failed over (another route would cut the
same request, and one caller's small limit must not open every breaker). A
``content_filter`` answer is not cached, as in chat."""

RETRYABLE_INCOMPLETE: Final = frozenset({"steered"})
"""Incomplete reasons another attempt may fix: retried like a broken stream. A reason in
:data:`ANSWERED_INCOMPLETE` is the answer; any other is not retried on the same route."""

_LIFECYCLE: Final = frozenset({"response.created", "response.queued", "response.in_progress"})
_CONTENT_DELTAS: Final = frozenset(
    {
        "response.output_text.delta",
        "response.refusal.delta",
        "response.function_call_arguments.delta",
        "response.reasoning_summary_text.delta",
        "response.reasoning_text.delta",
        "response.custom_tool_call_input.delta",
        "response.audio.delta",
        "response.audio.transcript.delta",
    }
)


class ResponseIncompleteError(TruncatedStreamError):
    """The response ended as ``incomplete`` (``response.incomplete``), not ``completed``.

    ``reason`` is ``response.incomplete_details.reason`` (``"max_output_tokens"``,
    ``"content_filter"``, ...; ``None`` when not given); ``response`` is the incomplete
    ``Response`` (its output rebuilt as far as it went). ``retryable`` is false for a reason
    that would cut the same request again (see :data:`RETRYABLE_INCOMPLETE`).
    """

    def __init__(
        self, reason: str | None, response: Response | None, *, events: int | None = None
    ) -> None:
        after = "" if events is None else f" after {events} event(s)"
        super().__init__(f"response incomplete: {reason or 'no reason given'}{after}")
        self.reason = reason
        self.response = response
        self.retryable = reason is None or reason in RETRYABLE_INCOMPLETE


def error_code(value: object) -> str:
    """A short, content-free code: a word of letters, digits, ``_``, ``-``, ``.``; else ``"?"``."""
    if (
        isinstance(value, str)
        and 0 < len(value) <= 64
        and all(c.isalnum() or c in "_-." for c in value)
    ):
        return value
    return "?"


class ResponseAssembler:
    """Accumulates the events of one generation (across resumed connections)."""

    __slots__ = (
        "_base",
        "_calls",
        "_done",
        "_final",
        "_items",
        "_pieces",
        "content_seen",
        "events",
        "last_sequence",
        "response_id",
        "resumptions",
        "text_chars",
    )

    def __init__(self) -> None:
        self._base: Any = None  # the latest lifecycle snapshot (created / in_progress / ...)
        self._items: dict[int, dict[str, Any]] = {}  # output items as assembled from deltas
        self._done: dict[int, Any] = {}  # output items as their ``done`` event gave them
        # text, refusal and arguments deltas by (output_index, content_index or -1, field)
        self._pieces: dict[tuple[int, int, str], list[str]] = {}
        self._calls: dict[int, int] = {}  # output_index -> position among the function calls
        self._final: Response | None = None
        self.last_sequence: int | None = None
        self.response_id: str | None = None
        self.resumptions: list[Resumed] = []
        self.events = 0
        self.text_chars = 0
        self.content_seen = False

    # --- taking events -----------------------------------------------------------------------

    def seen(self, event: Any) -> bool:
        """True when ``event`` was taken before (its ``sequence_number`` is not beyond the last).

        An event without a sequence number is never considered seen.
        """
        sequence = getattr(event, "sequence_number", None)
        last = self.last_sequence
        return last is not None and isinstance(sequence, int) and sequence <= last

    @property
    def finished(self) -> bool:
        """True once ``response.completed`` was taken (or an answered ``response.incomplete``)."""
        return self._final is not None

    @property
    def background(self) -> bool:
        """True when the response was created in the background (it can be resumed)."""
        return bool(getattr(self._base, "background", None))

    def add(self, event: Any) -> Piece | None:
        """Take one event; return what it adds to the shown answer (see the module docstring).

        Raises the chain's error for a terminal event other than ``response.completed`` and
        :class:`MalformedChunkError` for an event that is not what its type says.
        """
        if isinstance(event, Resumed):
            self.resumptions.append(event)
            return None
        if self.seen(event):
            return None  # a resumed connection replayed it: shown once already
        try:
            kind = event.type
            sequence = getattr(event, "sequence_number", None)
            if isinstance(sequence, int) and (
                self.last_sequence is None or sequence > self.last_sequence
            ):
                self.last_sequence = sequence
            self.events += 1
            if kind in _CONTENT_DELTAS:
                self.content_seen = True
            if kind == "response.output_text.delta":
                delta = event.delta
                self._part(event.output_index, event.content_index, "text", delta)
                self.text_chars += len(delta)
                return delta  # type: ignore[no-any-return]
            return self._add_other(kind, event)
        except (AttributeError, TypeError, KeyError, IndexError) as exc:
            raise MalformedChunkError(
                f"not a Responses stream event: {type(exc).__name__}"
            ) from exc

    def _add_other(self, kind: str, event: Any) -> Piece | None:
        if kind == "response.function_call_arguments.delta":
            fragment = self._call_fragment(event.output_index, event.delta)  # KeyError: no item
            self._piece(event.output_index, -1, "arguments").append(event.delta)
            return (fragment,)
        if kind == "response.refusal.delta":
            self._part(event.output_index, event.content_index, "refusal", event.delta)
            return (Fragment("refusal", event.delta),)
        if kind == "response.reasoning_summary_text.delta":
            summary = self._items[event.output_index].setdefault("summary", [])
            while len(summary) <= event.summary_index:
                summary.append({"type": "summary_text", "text": ""})
            summary[event.summary_index]["text"] += event.delta
            return None
        if kind == "response.output_item.added":
            return self._item_added(event.output_index, event.item)
        if kind == "response.content_part.added":
            content = self._items[event.output_index].setdefault("content", [])
            while len(content) <= event.content_index:
                content.append(None)
            content[event.content_index] = event.part.model_dump(mode="json")
            return None
        if kind == "response.output_item.done":
            self._done[event.output_index] = event.item
            self.content_seen = True
            return None
        if kind in _LIFECYCLE:
            self._lifecycle(event.response)
            return None
        if kind == "response.completed":
            self._complete(event.response)
            return None
        if kind == "response.incomplete":
            response = self._lifecycle(event.response)
            details = getattr(response, "incomplete_details", None)
            reason = getattr(details, "reason", None)
            if reason in ANSWERED_INCOMPLETE:
                rebuilt = self._rebuilt(response)
                if not isinstance(rebuilt, Response):
                    raise MalformedChunkError("response.incomplete did not carry a response")
                self._final = rebuilt  # the answer to this request, cut where it asked
                return None
            raise ResponseIncompleteError(
                error_code(reason) if reason is not None else None,
                self._rebuilt(response),
                events=self.events,
            )
        if kind == "response.failed":
            response = self._lifecycle(event.response)
            error = getattr(response, "error", None)
            raise StreamEventError(f"response.failed: {error_code(getattr(error, 'code', None))}")
        if kind == "error":
            raise StreamEventError(f"SSE error event: {error_code(getattr(event, 'code', None))}")
        return None

    def _piece(self, output_index: int, content_index: int, field: str) -> list[str]:
        """Where the deltas of one field go (joined once, when the output is rebuilt)."""
        key = (output_index, content_index, field)
        pieces = self._pieces.get(key)
        if pieces is None:
            pieces = self._pieces[key] = []
        return pieces

    def _part(self, output_index: int, content_index: int, field: str, delta: str) -> None:
        pieces = self._pieces.get((output_index, content_index, field))
        if pieces is not None:  # the common case: the part exists and has text already
            pieces.append(delta)
            return
        content = self._items[output_index].setdefault("content", [])
        while len(content) <= content_index:
            content.append(None)
        if content[content_index] is None:  # a delta without content_part.added: start it
            kind = "output_text" if field == "text" else "refusal"
            part: dict[str, Any] = {"type": kind, field: ""}
            if kind == "output_text":
                part["annotations"] = []
            content[content_index] = part
        self._piece(output_index, content_index, field).append(delta)

    def _join_pieces(self) -> None:
        """Put the deltas gathered so far into the assembled items."""
        for (output_index, content_index, field), pieces in self._pieces.items():
            item = self._items[output_index]
            target = item if content_index < 0 else item["content"][content_index]
            target[field] = (target.get(field) or "") + "".join(pieces)
        self._pieces.clear()

    def _item_added(self, output_index: int, item: Any) -> Piece | None:
        data = item.model_dump(mode="json")
        self._items[output_index] = data
        if data.get("type") != "function_call":
            return None
        self.content_seen = True
        self._calls[output_index] = len(self._calls)
        return (self._call_fragment(output_index, data.get("arguments") or ""),)

    def _call_fragment(self, output_index: int, text: str) -> Fragment:
        item = self._items[output_index]
        index = self._calls.get(output_index)
        if index is None:  # arguments for an item that was not a function call when added
            index = self._calls[output_index] = len(self._calls)
        return Fragment(
            "tool_call",
            text,
            index,
            item.get("call_id") or item.get("id"),
            item.get("name"),
        )

    def _lifecycle(self, response: Any) -> Any:
        """Take a lifecycle snapshot; one generation keeps one response id."""
        response_id = getattr(response, "id", None)
        if self.response_id is None:
            self.response_id = response_id
        elif response_id is not None and response_id != self.response_id:
            raise MalformedChunkError("the response id changed in the middle of a stream")
        self._base = response
        return response

    def _complete(self, response: Any) -> None:
        self._lifecycle(response)
        status = getattr(response, "status", None)
        if status not in (None, "completed"):
            raise MalformedChunkError(f"response.completed with status {error_code(status)}")
        rebuilt = self._rebuilt(response)
        if not isinstance(rebuilt, Response):
            raise MalformedChunkError("response.completed did not carry a response")
        self._final = rebuilt

    def _rebuilt(self, response: Any) -> Response | None:
        """``response`` with its output filled from the events when it came without one."""
        if not isinstance(response, Response):
            return None
        output = getattr(response, "output", None)
        if output or not (self._done or self._items):
            return response
        self._join_pieces()
        items: list[Any] = []
        for index in sorted(self._done.keys() | self._items.keys()):
            done = self._done.get(index)
            items.append(done.model_dump(mode="json") if done is not None else self._items[index])
        data = response.model_dump(mode="json")
        data["output"] = [item for item in items if item is not None]
        try:
            return Response.model_validate(data)
        except ValueError as exc:
            raise MalformedChunkError("the streamed output items do not form a response") from exc

    # --- the end -----------------------------------------------------------------------------

    def finish(self, *, model: str | None = None) -> Response:
        """The final ``Response``; :class:`TruncatedStreamError` when it did not complete.

        ``model`` (the request's) is unused: a ``Response`` always names its model.
        """
        if self._final is None:
            raise TruncatedStreamError(
                f"stream ended without response.completed after {self.events} event(s), "
                f"{self.text_chars} character(s)"
            )
        mark_resumptions(self._final, self.resumptions)
        return self._final
