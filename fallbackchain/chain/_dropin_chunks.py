"""Chain events into the SDK's ``ChatCompletionChunk`` objects for a chat drop-in stream.

:class:`Chunker` builds the chunks as the SDK streams them; what happens when the chain
replaces an answer (held back, continued, or diverged) is the shared rule of
``_dropin_continuation``. Tool-call ids are the provider's own and differ between attempts:
after a seamless continuation the ids already handed out are kept (the replacement's are
mapped onto them).
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Final

from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

from .._results import ChainResponse
from ._dropin_continuation import Divergence, EventTranslator, ShownCall, TextKind
from ._endpoint import CHAT

__all__ = ["Chunker"]

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


class Chunker(EventTranslator[ChatCompletionChunk]):
    """Turns one request's chain events into SDK chunks, and applies ``on_divergence``.

    Every chunk of a stream shares one ``id`` (``chatcmpl-fc-`` + hex), ``created`` and
    ``model`` (the requested one): they are handed out before the chain knows which upstream
    answer will stand. ``trace_of(stream).completion`` has the upstream's own values (and its
    own tool-call ids: see the module docstring).
    """

    __slots__ = ("_created", "_id", "_model", "_started", "_usage")

    def __init__(self, model: str, *, usage: bool, divergence: Divergence) -> None:
        super().__init__(divergence)
        self._id = f"chatcmpl-fc-{uuid.uuid4().hex}"
        self._created = int(time.time())
        self._model = model
        self._usage = usage
        self._started = False  # the role chunk was yielded

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

    def _text(self, text: str, kind: TextKind) -> list[ChatCompletionChunk]:
        out = self._open()
        if text:
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
            sent = self._handed.calls[index] = ShownCall(call_id, name or "")
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
        out.append(self._delta({"tool_calls": [call]}))
        return out

    def _finish(self, response: ChainResponse) -> list[ChatCompletionChunk]:
        """The role chunk if not yet sent, a buffered answer whole, ``finish_reason``, usage."""
        completion = response.completion
        out = self._open()
        if self._buffer:
            out += self._whole(CHAT.fragments(completion))
        finish_reason = completion.choices[0].finish_reason if completion.choices else "stop"
        out.append(self._delta({}, finish_reason))
        if self._usage:
            usage = completion.usage.model_dump() if completion.usage is not None else None
            out.append(self._chunk([], usage))
        return out
