"""Chat-completions answers: the whole ``ChatCompletion`` and its stream of chunks.

Pure rendering, no I/O. A :class:`Completion` is built from an
:class:`~fallbackchain.testing.Answer` and the fault that shapes it (``finish``,
``incomplete``); the whole message is rebuilt from the very deltas the stream
sends, so both forms of one answer always agree.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._faults import INCOMPLETE_REASONS, Answer, Fault
from ._text import argument_pieces, dumps, prompt_tokens, split_tokens

__all__ = ["Completion", "Frames", "chat_frames", "chat_interrupt", "completion_for"]

Frames = tuple[list[bytes], list[bool]]
"""SSE frames to send, and per frame whether it carries answer content."""


def _deltas_of(answer: Answer) -> list[dict[str, Any]]:
    """The content chunks' deltas of ``answer``, in the order OpenAI streams them."""
    deltas: list[dict[str, Any]] = [{"content": t} for t in split_tokens(answer.content)]
    for index, call in enumerate(answer.tool_calls):
        header = {"name": call.name, "arguments": ""}
        opening = {"index": index, "id": call.id, "type": "function", "function": header}
        deltas.append({"tool_calls": [opening]})
        for piece in argument_pieces(call.arguments):
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    deltas.extend({"refusal": t} for t in split_tokens(answer.refusal))
    return deltas


def _sse(obj: object) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


@dataclass(slots=True)
class Completion:
    """Everything needed to render one chat completion, streamed or not."""

    request_id: str
    completion_id: str
    created: int
    model: str
    deltas: list[dict[str, Any]]
    """The deltas of the content chunks (text words, tool-call pieces, refusal words)."""
    finish_reason: str
    prompt_tokens: int
    include_usage: bool
    sparse: bool = False
    """Leave out ``object``, ``created`` and ``system_fingerprint`` (``Fault.sparse``)."""

    def role_delta(self) -> dict[str, Any]:
        if any("content" in d for d in self.deltas) or not self.deltas:
            return {"role": "assistant", "content": ""}
        return {"role": "assistant", "content": None}

    def message(self) -> dict[str, Any]:
        """The whole message these deltas stream (so both forms always agree)."""
        content: list[str] = []
        refusal: list[str] = []
        calls: dict[int, dict[str, Any]] = {}
        for delta in self.deltas:
            content.append(delta.get("content", ""))
            refusal.append(delta.get("refusal", ""))
            for call in delta.get("tool_calls", ()):
                name = call["function"].get("name", "")
                slot = calls.setdefault(
                    call["index"],
                    {"id": call.get("id"), "type": "function",
                     "function": {"name": name, "arguments": ""}},
                )  # fmt: skip
                slot["function"]["arguments"] += call["function"].get("arguments", "")
        text, refused = "".join(content), "".join(refusal)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not (calls or refused) else None,
            "refusal": refused or None,
        }
        if calls:
            message["tool_calls"] = [calls[i] for i in sorted(calls)]
        return message

    def usage(self) -> dict[str, int]:
        completion_tokens = len(self.deltas)
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": self.prompt_tokens + completion_tokens,
        }

    def _envelope(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        if self.sparse:
            return {"id": self.completion_id, "model": self.model, "choices": choices}
        return {
            "id": self.completion_id,
            "object": kind,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": choices,
        }

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        obj = self._envelope("chat.completion.chunk", [choice])
        if self.include_usage:
            obj["usage"] = None
        return obj

    def usage_chunk(self) -> dict[str, Any]:
        return self._envelope("chat.completion.chunk", []) | {"usage": self.usage()}

    def full(self) -> dict[str, Any]:
        choice = {
            "index": 0,
            "message": self.message(),
            "logprobs": None,
            "finish_reason": self.finish_reason,
        }
        return self._envelope("chat.completion", [choice]) | {"usage": self.usage()}


def completion_for(
    answer: Answer,
    fault: Fault,
    *,
    payload: Mapping[str, Any],
    model: str,
    messages: Sequence[Any],
    request_id: str,
) -> Completion:
    """The completion that gives ``answer``, as ``fault`` shapes it (``finish``, ``incomplete``)."""
    deltas = _deltas_of(answer)
    finish_reason = answer.finish_reason
    if fault.kind == "finish":
        finish_reason = fault.finish_reason
        if finish_reason == "content_filter":
            deltas = deltas[: len(deltas) // 2]
    if fault.kind == "incomplete" and fault.after_chunks < len(deltas):
        deltas = deltas[: fault.after_chunks]
        finish_reason = INCOMPLETE_REASONS[fault.finish_reason]
    stream_options = payload.get("stream_options")
    return Completion(
        request_id=request_id,
        completion_id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
        created=int(time.time()),
        model=model,
        deltas=deltas,
        finish_reason=finish_reason,
        prompt_tokens=prompt_tokens(messages),
        include_usage=isinstance(stream_options, dict)
        and stream_options.get("include_usage") is True,
        sparse=fault.kind == "sparse",
    )


def chat_frames(completion: Completion) -> Frames:
    """The stream: a role chunk, one chunk per delta, the finish chunk, usage, ``[DONE]``."""
    frames = [_sse(completion.chunk(completion.role_delta()))]
    frames.extend(_sse(completion.chunk(delta)) for delta in completion.deltas)
    frames.append(_sse(completion.chunk({}, completion.finish_reason)))
    if completion.include_usage:
        frames.append(_sse(completion.usage_chunk()))
    frames.append(b"data: [DONE]\n\n")
    content = [False, *(True for _ in completion.deltas)]
    content.extend(False for _ in frames[len(content) :])
    return frames, content


def chat_interrupt(fault: Fault) -> bytes:
    """The frame an ``sse_error`` or ``malformed`` fault sends into a chat stream."""
    if fault.kind == "malformed":
        return b"data: {this is not json\n\n"
    error = {
        "message": fault.message,
        "type": fault.error_type or "server_error",
        "param": None,
        "code": fault.error_code,
    }
    return _sse({"error": error})
