"""Chain events into the openai SDK's typed Responses stream events (sans I/O).

:class:`ResponsesEventer` turns one request's :class:`~fallbackchain.ChainEvent` values into
the events ``responses.create(stream=True)`` yields: ``response.created`` and
``response.in_progress``; per message ``response.output_item.added``,
``response.content_part.added``, ``response.output_text.delta`` (and
``response.refusal.delta`` in a refusal part); per function call
``response.output_item.added`` (its ``call_id`` and ``name``) then
``response.function_call_arguments.delta``; then each item's ``done`` events; every other
output item of the answer (reasoning, ...) as ``output_item.added`` / ``output_item.done``;
and last ``response.completed`` carrying the answer's real ``Response`` (``response.incomplete``
for an answer cut where the request asked, as the SDK's stream ends).

Every event before ``response.completed`` carries one ``resp_fc…`` response id and the
requested model, and ``fc…`` item ids: they are handed out before the chain knows which
upstream answer will stand. Sequence numbers count from 0 with no gap.

After a fault mid-stream the continuation rule is the chat drop-in's
(``_dropin_continuation``): a replacement is held back while it repeats what was handed out,
then only what it adds is yielded; one that says something else diverges (``"raise"``:
nothing more, then :class:`~fallbackchain.StreamDivergedError` at the end; ``"buffer"``:
nothing but the opening events until the answer is final).
"""

from __future__ import annotations

import functools
import time
import typing
import uuid
from typing import Any, Final, Literal

from openai.types.responses import (
    Response,
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseIncompleteEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseRefusalDeltaEvent,
    ResponseRefusalDoneEvent,
    ResponseStreamEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)
from pydantic import BaseModel

from .._results import ChainEvent, ChainResponse
from ._dropin_continuation import Divergence, EventTranslator, TextKind
from ._responses_endpoint import RESPONSES

__all__ = ["ResponsesEventer"]

# A message part's kind, by the message field it shows. The part's text field is named as
# its kind, and so is that text in the part's done event.
_PART: Final[dict[TextKind, Literal["text", "refusal"]]] = {"content": "text", "refusal": "refusal"}
_DELTA: Final[dict[str, type[BaseModel]]] = {
    "text": ResponseTextDeltaEvent,
    "refusal": ResponseRefusalDeltaEvent,
}
_DONE: Final[dict[str, type[BaseModel]]] = {
    "text": ResponseTextDoneEvent,
    "refusal": ResponseRefusalDoneEvent,
}


@functools.cache
def _type_of(cls: type[BaseModel]) -> str:
    """The ``type`` every event of class ``cls`` has (the one value of its ``Literal``)."""
    (value,) = typing.get_args(cls.model_fields["type"].annotation)
    return str(value)


class ResponsesEventer(EventTranslator[ResponseStreamEvent]):
    """Turns one request's chain events into Responses stream events; applies divergence.

    The continuation rule is the chat drop-in's (``_dropin_continuation``); this class only
    builds the events.
    """

    __slots__ = (
        "_calls",
        "_created",
        "_id",
        "_items",
        "_message",
        "_model",
        "_parts",
        "_pieces",
        "_seq",
        "_started",
    )

    def __init__(self, model: str, *, divergence: Divergence) -> None:
        super().__init__(divergence)
        self._id = f"resp_fc{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._model = model
        self._seq = 0
        self._started = False
        self._items: list[dict[str, Any]] = []  # the yielded output items, by output_index
        self._message: int | None = None  # output_index of the message being written
        self._parts: dict[str, int] = {}  # the message's part ("text", "refusal") -> index
        self._calls: dict[int, int] = {}  # chain tool-call index -> output_index
        # The deltas of each text, refusal or arguments field, joined once when its item is
        # done (adding to the field's string would copy it at every delta).
        self._pieces: dict[tuple[int, int, str], list[str]] = {}

    def _event(self, cls: type[BaseModel], **fields: Any) -> Any:
        """An event of class ``cls`` (its ``type`` is the class's own), numbered next."""
        fields["type"] = _type_of(cls)
        fields["sequence_number"] = self._seq
        self._seq += 1
        return cls.model_validate(fields)

    def _placeholder(self) -> dict[str, Any]:
        return {
            "id": self._id,
            "object": "response",
            "created_at": self._created,
            "model": self._model,
            "output": [],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "status": "in_progress",
        }

    def open(self) -> list[Any]:
        """``response.created`` and ``response.in_progress``, once, before anything else."""
        if self._started:
            return []
        self._started = True
        return [
            self._event(ResponseCreatedEvent, response=self._placeholder()),
            self._event(ResponseInProgressEvent, response=self._placeholder()),
        ]

    def _added(self, item: dict[str, Any]) -> Any:
        self._items.append(item)
        return self._event(
            ResponseOutputItemAddedEvent,
            output_index=len(self._items) - 1,
            item=item,
        )

    def _part(self, kind: Literal["text", "refusal"]) -> list[Any]:
        """Open the message (and its part of this kind) if needed."""
        out = []
        if self._message is None:
            self._parts = {}
            item: dict[str, Any] = {
                "id": f"msg_fc{uuid.uuid4().hex}",
                "type": "message",
                "role": "assistant",
                "status": "in_progress",
                "content": [],
            }
            out.append(self._added(item))
            self._message = len(self._items) - 1
        if kind not in self._parts:
            item = self._items[self._message]
            part: dict[str, Any] = (
                {"type": "output_text", "text": "", "annotations": []}
                if kind == "text"
                else {"type": "refusal", "refusal": ""}
            )
            item["content"].append(part)
            self._parts[kind] = len(item["content"]) - 1
            out.append(
                self._event(
                    ResponseContentPartAddedEvent,
                    item_id=item["id"],
                    output_index=self._message,
                    content_index=self._parts[kind],
                    part=dict(part),
                )
            )
        return out

    def _text(self, text: str, kind: TextKind) -> list[Any]:
        if not text:
            return []
        part = _PART[kind]
        out = self._part(part)
        assert self._message is not None
        item = self._items[self._message]
        index = self._parts[part]
        (self._handed.content if kind == "content" else self._handed.refusal).append(text)
        self._pieces.setdefault((self._message, index, part), []).append(text)
        extra: dict[str, Any] = {"logprobs": []} if part == "text" else {}
        at = {"item_id": item["id"], "output_index": self._message, "content_index": index}
        out.append(self._event(_DELTA[part], delta=text, **at, **extra))
        return out

    def _tool_call(
        self, index: int, call_id: str | None, name: str | None, arguments: str
    ) -> list[Any]:
        out = []
        at = self._calls.get(index)
        if at is None:
            self._message = None  # text after a call goes in a new message, as the API does
            item: dict[str, Any] = {
                "id": f"fc_fc{uuid.uuid4().hex}",
                "type": "function_call",
                "call_id": call_id or f"call_fc_{index}",
                "name": name or "",
                "arguments": "",
                "status": "in_progress",
            }
            out.append(self._added(item))
            at = self._calls[index] = len(self._items) - 1
        self._handed.add(ChainEvent("tool_call", arguments, "", index=index, id=call_id, name=name))
        if arguments:
            item = self._items[at]
            self._pieces.setdefault((at, -1, "arguments"), []).append(arguments)
            out.append(
                self._event(
                    ResponseFunctionCallArgumentsDeltaEvent,
                    item_id=item["id"],
                    output_index=at,
                    delta=arguments,
                )
            )
        return out

    def event(self, event: ChainEvent) -> list[Any]:
        """As the rule's, after ``response.created`` and ``response.in_progress`` (once)."""
        return self.open() + super().event(event)

    def _joined(self, output_index: int) -> dict[str, Any]:
        """The item at ``output_index`` with its deltas joined into its fields."""
        item = self._items[output_index]
        for (at, index, field), pieces in list(self._pieces.items()):
            if at == output_index:
                target = item if index < 0 else item["content"][index]
                target[field] += "".join(pieces)  # a part's field is named as its kind
                del self._pieces[(at, index, field)]
        return item

    def _done(self, output_index: int) -> list[Any]:
        item = self._joined(output_index)
        item["status"] = "completed"
        out = []
        if item["type"] == "message":
            for index, part in enumerate(item["content"]):
                at = {"item_id": item["id"], "output_index": output_index, "content_index": index}
                kind = "text" if part["type"] == "output_text" else "refusal"
                extra: dict[str, Any] = {"logprobs": []} if kind == "text" else {}
                out.append(self._event(_DONE[kind], **{kind: part[kind]}, **at, **extra))
                out.append(self._event(ResponseContentPartDoneEvent, part=part, **at))
        elif item["type"] == "function_call":
            out.append(
                self._event(
                    ResponseFunctionCallArgumentsDoneEvent,
                    item_id=item["id"],
                    output_index=output_index,
                    arguments=item["arguments"],
                    name=item["name"],
                )
            )
        out.append(
            self._event(
                ResponseOutputItemDoneEvent,
                output_index=output_index,
                item=item,
            )
        )
        return out

    def _finish(self, response: ChainResponse) -> list[Any]:
        """Each item's ``done`` events, the answer's other items, then its own end."""
        answer: Response = response.completion  # type: ignore[assignment]
        out = self.open()
        if self._buffer:
            out += self._whole(RESPONSES.fragments(answer))
        for index in range(len(self._items)):
            out += self._done(index)
        for item in answer.output:  # what the events did not show: reasoning, searches, ...
            if item.type in ("message", "function_call"):
                continue
            data = item.model_dump(mode="json")
            out.append(self._added(data))
            out.append(
                self._event(
                    ResponseOutputItemDoneEvent,
                    output_index=len(self._items) - 1,
                    item=data,
                )
            )
        # the answer's own end: ``incomplete`` when it was cut where the request asked
        last = ResponseIncompleteEvent if answer.status == "incomplete" else ResponseCompletedEvent
        out.append(self._event(last, response=answer))
        return out
