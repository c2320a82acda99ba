"""The Responses API answers: a ``Response`` object and its typed stream events.

Pure rendering, no I/O: :class:`ResponseScript` holds everything one response is made
of (ids, the :class:`~fallbackchain.testing.Answer`, the echoed request fields, how it
ends), and :func:`render` turns it into the SSE events the API streams, each with its
``sequence_number``, plus the final ``Response`` those events build. The same script
always renders the same events, which is what lets a retrieval with
``starting_after=N`` resume a stream exactly where it stopped.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from ._faults import Answer, Fault, ToolCall
from ._text import argument_pieces, dumps, split_tokens

__all__ = [
    "RESPONSE_SHAPING_KINDS",
    "Rendered",
    "ResponseScript",
    "ResponseStore",
    "error_event",
    "input_messages",
    "queued",
    "render",
    "sse_event",
]

RESPONSE_SHAPING_KINDS: Final = frozenset({"failed", "incomplete", "finish"})
"""Fault kinds that change the response itself (its output and final status), not the wire."""

_ECHOED: Final = (
    "instructions",
    "max_output_tokens",
    "max_tool_calls",
    "previous_response_id",
    "prompt_cache_key",
    "safety_identifier",
    "user",
)


def input_messages(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The chat-style messages a Responses request amounts to, for the responder.

    ``instructions`` become a ``system`` message; ``input`` as a string becomes one
    ``user`` message, as a list contributes its items that have a ``role``.
    """
    messages: list[dict[str, Any]] = []
    instructions = payload.get("instructions")
    if isinstance(instructions, str):
        messages.append({"role": "system", "content": instructions})
    given = payload.get("input")
    if isinstance(given, str):
        messages.append({"role": "user", "content": given})
    elif isinstance(given, list):
        messages.extend(
            {"role": item["role"], "content": item.get("content")}
            for item in given
            if isinstance(item, Mapping) and isinstance(item.get("role"), str)
        )
    return messages


def sse_event(event: Mapping[str, Any]) -> bytes:
    """One event as the Responses API frames it: an ``event:`` line and a ``data:`` line."""
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + dumps(event) + b"\n\n"


@dataclass(frozen=True, slots=True)
class ResponseScript:
    """Everything one response is made of; rendering it is deterministic."""

    model: str
    answer: Answer
    request: Mapping[str, Any]
    """The create request's body: the fields a ``Response`` echoes are read from it."""
    prompt_tokens: int
    ending: Fault = field(default_factory=Fault.ok)
    """The fault that shapes the answer (``failed``, ``incomplete``, ``finish``), else ok."""
    response_id: str = field(default_factory=lambda: f"resp_{uuid.uuid4().hex}")
    created_at: int = field(default_factory=lambda: int(time.time()))

    @property
    def background(self) -> bool:
        return self.request.get("background") is True

    def item_id(self, prefix: str, index: int) -> str:
        digest = hashlib.sha256(f"{self.response_id}\0{index}".encode()).hexdigest()
        return f"{prefix}_{digest[:32]}"

    def response(
        self,
        status: str,
        output: Sequence[Mapping[str, Any]] = (),
        *,
        output_tokens: int | None = None,
        error: Mapping[str, Any] | None = None,
        incomplete_reason: str | None = None,
    ) -> dict[str, Any]:
        """The ``Response`` object at one moment of its life."""
        request = self.request
        usage = None
        if output_tokens is not None:
            usage = {
                "input_tokens": self.prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": self.prompt_tokens + output_tokens,
            }
        body: dict[str, Any] = {
            "id": self.response_id,
            "object": "response",
            "created_at": self.created_at,
            "status": status,
            "background": self.background,
            "completed_at": self.created_at if status == "completed" else None,
            "error": dict(error) if error is not None else None,
            "incomplete_details": (
                {"reason": incomplete_reason} if incomplete_reason is not None else None
            ),
            "metadata": request.get("metadata") or {},
            "model": self.model,
            "output": list(output),
            "parallel_tool_calls": request.get("parallel_tool_calls", True),
            "reasoning": {"effort": None, "summary": None},
            "service_tier": "default",
            "store": request.get("store", True) is not False,
            "temperature": request.get("temperature", 1.0),
            "text": request.get("text") or {"format": {"type": "text"}},
            "tool_choice": request.get("tool_choice", "auto"),
            "tools": request.get("tools") or [],
            "top_p": request.get("top_p", 1.0),
            "truncation": request.get("truncation", "disabled"),
            "usage": usage,
        }
        for name in _ECHOED:
            body[name] = request.get(name)
        return body


@dataclass(frozen=True, slots=True)
class Rendered:
    """A script rendered: its events in order and the ``Response`` they end with."""

    events: tuple[dict[str, Any], ...]
    """Every event, ``sequence_number`` 0, 1, 2, ... in order."""
    content: tuple[bool, ...]
    """Per event: whether it carries answer content (a text, refusal or arguments delta)."""
    final: dict[str, Any]
    """The response as the last event carries it (completed, incomplete or failed)."""


@dataclass(slots=True)
class _Builder:
    """Accumulates events while walking the answer's output items."""

    events: list[dict[str, Any]] = field(default_factory=list)
    content: list[bool] = field(default_factory=list)
    used: int = 0
    limit: int | None = None

    def add(self, event: dict[str, Any], *, content: bool = False) -> None:
        event["sequence_number"] = len(self.events)
        self.events.append(event)
        self.content.append(content)
        if content:
            self.used += 1

    @property
    def full(self) -> bool:
        return self.limit is not None and self.used >= self.limit


def _ending(script: ResponseScript, total_units: int) -> tuple[int | None, str, str | None]:
    """``(limit on content units, terminal status, incomplete reason)`` for the script."""
    fault = script.ending
    if fault.kind == "failed":
        return fault.after_chunks, "failed", None
    if fault.kind == "incomplete":
        cut = fault.after_chunks < total_units
        reason = None if fault.finish_reason == "unstated" else fault.finish_reason
        return fault.after_chunks, "incomplete" if cut else "completed", reason
    if fault.kind == "finish" and fault.finish_reason == "content_filter":
        return total_units // 2, "incomplete", "content_filter"
    if fault.kind == "finish" and fault.finish_reason == "length":
        return None, "incomplete", "max_output_tokens"
    return None, "completed", None


def _message_item(
    script: ResponseScript, build: _Builder, index: int, answer: Answer, status: str
) -> tuple[dict[str, Any] | None, bool]:
    """Stream the message item (text, then refusal); ``(item, cut)``."""
    item_id = script.item_id("msg", index)
    item: dict[str, Any] = {
        "id": item_id,
        "type": "message",
        "role": "assistant",
        "status": "in_progress",
        "content": [],
    }
    build.add({"type": "response.output_item.added", "output_index": index, "item": dict(item)})
    parts = [("output_text", "text", answer.content), ("refusal", "refusal", answer.refusal)]
    done_parts: list[dict[str, Any]] = []
    cut = False
    for part_type, key, text in parts:
        if not text:
            continue
        if build.full:
            cut = True
            break
        empty: dict[str, Any] = {"type": part_type, key: ""}
        if part_type == "output_text":
            empty |= {"annotations": [], "logprobs": []}
        where = {"item_id": item_id, "output_index": index, "content_index": len(done_parts)}
        build.add({"type": "response.content_part.added", **where, "part": dict(empty)})
        sent = ""
        delta_type = "response.output_text.delta" if key == "text" else "response.refusal.delta"
        for piece in split_tokens(text):
            if build.full:
                cut = True
                break
            extra: dict[str, Any] = {"logprobs": []} if key == "text" else {}
            build.add({"type": delta_type, **where, "delta": piece, **extra}, content=True)
            sent += piece
        if cut and status == "failed":
            done_parts.append(empty | {key: sent})
            break
        part = empty | {key: sent}
        if key == "text":
            build.add({"type": "response.output_text.done", **where, "text": sent, "logprobs": []})
        else:
            build.add({"type": "response.refusal.done", **where, "refusal": sent})
        build.add({"type": "response.content_part.done", **where, "part": part})
        done_parts.append(part)
        if cut:
            break
    if cut and status == "failed":
        return item | {"content": done_parts}, True
    final = item | {"content": done_parts, "status": "incomplete" if cut else "completed"}
    build.add({"type": "response.output_item.done", "output_index": index, "item": final})
    return final, cut


def _call_item(
    script: ResponseScript, build: _Builder, index: int, call: ToolCall, status: str
) -> tuple[dict[str, Any], bool]:
    """Stream one function-call item; ``(item, cut)``."""
    name, call_id, arguments = call.name, call.id, call.arguments
    item_id = script.item_id("fc", index)
    item: dict[str, Any] = {
        "id": item_id,
        "type": "function_call",
        "call_id": call_id,
        "name": name,
        "arguments": "",
        "status": "in_progress",
    }
    build.add({"type": "response.output_item.added", "output_index": index, "item": dict(item)})
    where = {"item_id": item_id, "output_index": index}
    sent = ""
    cut = False
    for piece in argument_pieces(arguments):
        if build.full:
            cut = True
            break
        build.add(
            {"type": "response.function_call_arguments.delta", **where, "delta": piece},
            content=True,
        )
        sent += piece
    if cut and status == "failed":
        return item | {"arguments": sent}, True
    build.add(
        {"type": "response.function_call_arguments.done", **where, "name": name, "arguments": sent}
    )
    final = item | {"arguments": sent, "status": "incomplete" if cut else "completed"}
    build.add({"type": "response.output_item.done", "output_index": index, "item": final})
    return final, cut


def _units(answer: Answer) -> int:
    return (
        len(split_tokens(answer.content))
        + len(split_tokens(answer.refusal))
        + sum(len(argument_pieces(call.arguments)) for call in answer.tool_calls)
    )


def render(script: ResponseScript) -> Rendered:
    """Every event of the script's response, and the final ``Response``.

    Events: ``response.created``, ``response.in_progress``, then per output item
    (the message with its ``output_text`` and ``refusal`` parts, then one
    ``function_call`` item per tool call) ``response.output_item.added``, its
    content events, ``response.output_item.done``; last ``response.completed``
    (or ``response.incomplete`` / ``response.failed`` when the script ends so).
    """
    answer = script.answer
    limit, status, reason = _ending(script, _units(answer))
    build = _Builder(limit=limit)
    opening = script.response("in_progress")
    build.add({"type": "response.created", "response": opening})
    build.add({"type": "response.in_progress", "response": opening})
    output: list[dict[str, Any]] = []
    cut = False
    if answer.content or answer.refusal:
        item, cut = _message_item(script, build, 0, answer, status)
        if item is not None:
            output.append(item)
    for call in answer.tool_calls:
        if cut or build.full:
            cut = True
            break
        item, cut = _call_item(script, build, len(output), call, status)
        output.append(item)
    fault = script.ending
    error = None
    if status == "failed":
        error = {"code": fault.error_code or "server_error", "message": fault.message or ""}
    final = script.response(
        status, output, output_tokens=build.used, error=error, incomplete_reason=reason
    )
    terminal = {"completed": "response.completed", "incomplete": "response.incomplete"}
    build.add({"type": terminal.get(status, "response.failed"), "response": final})
    return Rendered(tuple(build.events), tuple(build.content), final)


def queued(script: ResponseScript) -> dict[str, Any]:
    """The ``Response`` a non-streamed background create returns at once."""
    return script.response("queued")


class ResponseStore:
    """The stored responses, retrievable by id; bounded (the oldest go first).

    Not thread-safe: the server's event loop is its only user.
    """

    def __init__(self, limit: int = 1000) -> None:
        self._limit = limit
        self._scripts: OrderedDict[str, ResponseScript] = OrderedDict()
        self.cancelled: list[str] = []

    def put(self, script: ResponseScript) -> None:
        self._scripts[script.response_id] = script
        while len(self._scripts) > self._limit:
            self._scripts.popitem(last=False)

    def get(self, response_id: str) -> ResponseScript | None:
        return self._scripts.get(response_id)

    def cancel(self, response_id: str) -> None:
        """Mark a stored response cancelled (:attr:`cancelled` lists them, in order)."""
        if response_id not in self.cancelled:
            self.cancelled.append(response_id)

    def __len__(self) -> int:
        return len(self._scripts)


def error_event(sequence_number: int, message: str, code: str | None) -> bytes:
    """The ``error`` event the Responses API streams when it gives up mid-answer."""
    return sse_event(
        {
            "type": "error",
            "code": code,
            "message": message,
            "param": None,
            "sequence_number": sequence_number,
        }
    )
