"""The :class:`Fault` value: one scripted misbehaviour of the fault server."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Final, Literal, get_args

__all__ = ["Answer", "Fault", "FaultKind", "ToolCall"]

FaultKind = Literal[
    "ok",
    "status",
    "drop",
    "early_end",
    "stall",
    "slow_first_byte",
    "sse_error",
    "malformed",
    "reset",
    "finish",
    "failed",
    "incomplete",
    "sparse",
]
"""The names of the behaviours a :class:`Fault` can describe."""

_KINDS: frozenset[str] = frozenset(get_args(FaultKind))

# Why a Responses answer can stop short, and the chat ``finish_reason`` each becomes.
INCOMPLETE_REASONS: Mapping[str, str] = {
    "max_output_tokens": "length",
    "content_filter": "content_filter",
    # Responses: ``incomplete_details`` is null, as some compatible providers send it
    "unstated": "length",
}

_FAILED: Final = "The model failed to generate a response."
_CODE: Final = "server_error"

# Kinds whose effect happens after ``after_chunks`` content chunks of a stream.
MID_STREAM_KINDS: frozenset[str] = frozenset(
    {"drop", "early_end", "stall", "sse_error", "malformed"}
)


def _check_seconds(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True, repr=False)
class Fault:
    """One scripted behaviour of :class:`~fallbackchain.testing.FaultServer`.

    A ``Fault`` is a small immutable value: two faults built with the same
    arguments compare equal and hash alike, so tests can assert on
    ``RecordedRequest.fault``. Build them with the classmethods
    (``Fault.ok()``, ``Fault.status(503)``, ``Fault.drop(after_chunks=2)``, ...)
    rather than calling the constructor directly.

    "Content chunks" below are the streamed chunks that carry the answer: one
    per word of text or refusal, and for a tool call its header chunk and each
    arguments fragment (see :class:`Answer`); the opening
    ``{"role": "assistant"}`` chunk is not counted.
    When ``after_chunks`` exceeds the number of words, the fault happens right
    after the last word (before the ``finish_reason`` chunk).

    The same faults apply to the Responses API, where the content chunks are the
    ``response.output_text.delta``, ``response.refusal.delta`` and
    ``response.function_call_arguments.delta`` events (past the last one, the
    fault happens before the ``.done`` event that follows it), an ``sse_error``
    is an ``error`` event, and ``failed`` and ``incomplete`` end the response
    with ``response.failed`` and ``response.incomplete``.
    """

    kind: FaultKind = "ok"
    after_chunks: int = 0
    seconds: float = 0.0
    status_code: int = 200
    retry_after: float | str | None = None
    retry_after_ms: float | None = None
    should_retry: bool | None = None
    error_code: str | None = None
    error_type: str | None = None
    message: str | None = None
    finish_reason: str = "stop"

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {sorted(_KINDS)}")
        if isinstance(self.after_chunks, bool) or not isinstance(self.after_chunks, int):
            raise TypeError(f"after_chunks must be an int, got {self.after_chunks!r}")
        if self.after_chunks < 0:
            raise ValueError(f"after_chunks must be >= 0, got {self.after_chunks!r}")
        _check_seconds("seconds", self.seconds)
        if self.kind == "status" and not 400 <= self.status_code <= 599:
            raise ValueError(f"status code must be in 400..599, got {self.status_code!r}")
        if isinstance(self.retry_after, int | float) and not isinstance(self.retry_after, bool):
            _check_seconds("retry_after", self.retry_after)
        if self.retry_after_ms is not None:
            _check_seconds("retry_after_ms", self.retry_after_ms)
        if not self.finish_reason:
            raise ValueError("finish_reason must be a non-empty string")
        if self.kind == "incomplete" and self.finish_reason not in INCOMPLETE_REASONS:
            raise ValueError(
                f"reason must be one of {sorted(INCOMPLETE_REASONS)}, got {self.finish_reason!r}"
            )

    def __repr__(self) -> str:
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in fields(self)
            if f.name != "kind" and getattr(self, f.name) != f.default
        ]
        return f"Fault.{self.kind}({', '.join(changed)})"

    # -- constructors -------------------------------------------------------------

    @classmethod
    def ok(cls) -> Fault:
        """A normal, complete answer."""
        return cls()

    @classmethod
    def status(
        cls,
        code: int,
        *,
        retry_after: float | str | None = None,
        retry_after_ms: float | None = None,
        should_retry: bool | None = None,
        error_code: str | None = None,
        error_type: str | None = None,
        message: str | None = None,
    ) -> Fault:
        """An HTTP error response with an OpenAI-shaped JSON error body.

        The body is ``{"error": {"message", "type", "param": null, "code"}}``.
        ``retry_after`` becomes the ``retry-after`` header (a number of seconds,
        or a string sent verbatim, e.g. an HTTP date), ``retry_after_ms`` the
        ``retry-after-ms`` header and ``should_retry`` the ``x-should-retry``
        header (``true``/``false``). Unset ``error_type``/``error_code``/
        ``message`` get realistic defaults for the status code (for example
        429 -> type ``requests``, code ``rate_limit_exceeded``; 5xx -> type
        ``server_error``).
        """
        return cls(
            kind="status",
            status_code=code,
            retry_after=retry_after,
            retry_after_ms=retry_after_ms,
            should_retry=should_retry,
            error_code=error_code,
            error_type=error_type,
            message=message,
        )

    @classmethod
    def drop(cls, after_chunks: int = 0) -> Fault:
        """Abort the TCP connection mid-response.

        Streaming: ``after_chunks`` content chunks are sent, then the connection
        is aborted without the terminating zero-length HTTP chunk. Non-streaming:
        the headers (with the full ``Content-Length``) and half of the body are
        sent, then the connection is aborted.
        """
        return cls(kind="drop", after_chunks=after_chunks)

    @classmethod
    def early_end(cls, after_chunks: int = 0) -> Fault:
        """End the stream cleanly after ``after_chunks`` content chunks.

        The HTTP response is properly terminated, but no ``finish_reason``
        chunk and no ``data: [DONE]`` are sent: the silent-truncation case.
        Non-streaming requests get a normal answer.
        """
        return cls(kind="early_end", after_chunks=after_chunks)

    @classmethod
    def stall(cls, after_chunks: int = 0, seconds: float = 30.0) -> Fault:
        """Go silent for ``seconds`` after ``after_chunks`` content chunks, then go on.

        The pause does not block the server or other connections and ends early
        when the client disconnects or the server stops. Non-streaming: wait
        ``seconds`` before responding.
        """
        return cls(kind="stall", after_chunks=after_chunks, seconds=seconds)

    @classmethod
    def slow_first_byte(cls, seconds: float) -> Fault:
        """Wait ``seconds`` before sending the response headers, then answer normally."""
        return cls(kind="slow_first_byte", seconds=seconds)

    @classmethod
    def sse_error(
        cls,
        after_chunks: int = 0,
        message: str = "upstream overloaded",
        code: str = "server_error",
    ) -> Fault:
        """Send an in-stream error event after ``after_chunks`` content chunks.

        The event is ``data: {"error": {"message", "type": "server_error",
        "param": null, "code"}}``, after which the response ends cleanly (no
        ``[DONE]``). Non-streaming requests get an HTTP 500 with the same error
        object as the body.
        """
        return cls(
            kind="sse_error",
            after_chunks=after_chunks,
            message=message,
            error_code=code,
            error_type="server_error",
        )

    @classmethod
    def malformed(cls, after_chunks: int = 0) -> Fault:
        """Send an event whose data is not JSON after ``after_chunks`` content chunks.

        The event is ``data: {this is not json``, after which the response ends
        cleanly. Non-streaming: HTTP 200 with ``Content-Type: application/json``
        and a body that is not JSON.
        """
        return cls(kind="malformed", after_chunks=after_chunks)

    @classmethod
    def reset(cls) -> Fault:
        """Close the connection right after reading the request, sending nothing."""
        return cls(kind="reset")

    @classmethod
    def finish(cls, reason: str) -> Fault:
        """A normal answer whose final ``finish_reason`` is ``reason``.

        For ``"content_filter"`` only the first half of the words are sent
        (rounded down), like a real filtered answer; any other reason keeps the
        full answer text.
        """
        return cls(kind="finish", finish_reason=reason)

    @classmethod
    def sparse(cls) -> Fault:
        """A normal chat answer without ``object``, ``created`` and ``system_fingerprint``.

        As some OpenAI-compatible servers send it: every streamed chunk and a whole
        completion lack those fields (the SDK reads such an answer; its models would not
        validate it). Responses API: a normal answer.
        """
        return cls(kind="sparse")

    @classmethod
    def failed(cls, after_chunks: int = 0, message: str = _FAILED, code: str = _CODE) -> Fault:
        """The answer fails after ``after_chunks`` content chunks.

        ``message`` defaults to ``"The model failed to generate a response."``,
        ``code`` to ``"server_error"``.

        Responses API: the stream ends with a ``response.failed`` event whose
        response has ``status: "failed"`` and ``error: {code, message}``
        (non-streamed: that ``Response`` with HTTP 200, as a retrieval shows it).
        Chat completions have no such state: there it acts as :meth:`sse_error`.
        """
        return cls(kind="failed", after_chunks=after_chunks, message=message, error_code=code)

    @classmethod
    def incomplete(cls, after_chunks: int = 0, reason: str = "max_output_tokens") -> Fault:
        """The answer stops after ``after_chunks`` content chunks, for ``reason``.

        ``reason`` is ``"max_output_tokens"``, ``"content_filter"`` or ``"unstated"`` (no
        ``incomplete_details``, as some compatible providers send it). Responses
        API: the open content part and output item are closed with status
        ``"incomplete"`` and the stream ends with ``response.incomplete``
        (``incomplete_details.reason``); non-streamed, the ``Response`` has
        ``status: "incomplete"``. Chat completions: the answer is cut the same
        way and its ``finish_reason`` is ``"length"`` (or ``"content_filter"``).
        When ``after_chunks`` exceeds the answer, nothing is cut.
        """
        return cls(kind="incomplete", after_chunks=after_chunks, finish_reason=reason)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call a scripted :class:`Answer` makes.

    ``arguments`` is the JSON text of the arguments; a mapping is serialised with
    ``json.dumps`` (so ``{"city": "Oslo"}`` becomes ``'{"city": "Oslo"}'``). ``id``
    defaults to a value derived from the name and arguments, so the same call scripted
    twice has the same id.
    """

    name: str
    arguments: str = "{}"
    id: str = ""

    def __init__(
        self, name: str, arguments: str | Mapping[str, Any] = "{}", id: str | None = None
    ) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"a tool call needs a function name, got {name!r}")
        if not isinstance(arguments, str):
            arguments = json.dumps(dict(arguments))
        if id is None:
            digest = hashlib.sha256(f"{name}\0{arguments}".encode()).hexdigest()
            id = f"call_{digest[:24]}"
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "arguments", arguments)
        object.__setattr__(self, "id", id)


@dataclass(frozen=True, slots=True)
class Answer:
    """What the fault server answers: text, tool calls, or a refusal.

    A responder (``FaultServer(responder=...)``) may return an ``Answer`` instead of a
    string. Streamed, an answer is a role chunk, then one chunk per word of ``content``,
    then for each tool call a chunk with its ``index``, ``id``, ``type`` and function
    ``name`` (arguments ``""``) followed by chunks appending ``function.arguments`` a few
    characters at a time, then one chunk per word of ``refusal``, then the finish chunk:
    ``finish_reason`` is ``"tool_calls"`` when there are tool calls, else ``"stop"``.
    Every chunk after the role chunk counts as a content chunk for a fault's
    ``after_chunks``. Not streamed, the same pieces make one message.
    """

    content: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    refusal: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "tool_calls", tuple(self.tool_calls))
        for call in self.tool_calls:
            if not isinstance(call, ToolCall):
                raise TypeError(f"tool_calls must hold ToolCall values, got {call!r}")

    @classmethod
    def calling(cls, *calls: ToolCall, content: str = "") -> Answer:
        """An answer that calls the tools ``calls`` (after ``content``, if any)."""
        return cls(content=content, tool_calls=calls)

    @property
    def finish_reason(self) -> str:
        """``"tool_calls"`` when the answer calls a tool, else ``"stop"``."""
        return "tool_calls" if self.tool_calls else "stop"
