"""How a fault plays out on the wire of one HTTP response, for either API.

The route handlers decide *what* to answer; these functions send it, broken the way
the request's :class:`~fallbackchain.testing.Fault` says: an HTTP error with its
retry headers, a reset, a wait before the headers, a body cut half-way, a stream
dropped, paused, ended early or corrupted after ``after_chunks`` content frames.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

from ._faults import MID_STREAM_KINDS, Fault
from ._http import Connection, error_body, reason

__all__ = ["before_answer", "send_body", "send_sse", "trigger"]

_STREAM_HEADERS: Final = (
    ("content-type", "text/event-stream; charset=utf-8"),
    ("cache-control", "no-cache"),
    ("transfer-encoding", "chunked"),
)


def _default_error(status: int) -> tuple[str, str | None]:
    """Realistic ``(type, code)`` for an HTTP error status."""
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status == 401:
        return "invalid_request_error", "invalid_api_key"
    if status >= 500:
        return "server_error", None
    return "invalid_request_error", None


def _format_seconds(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def trigger(content: Sequence[bool], after: int) -> int:
    """Where a mid-stream fault strikes: before content frame ``after``, else after the last."""
    positions = [i for i, is_content in enumerate(content) if is_content]
    if after < len(positions):
        return positions[after]
    if positions:
        return positions[-1] + 1
    return min(1, len(content))


async def _send_status(conn: Connection, fault: Fault, request_id: str) -> None:
    status = fault.status_code
    default_type, default_code = _default_error(status)
    message = fault.message or f"Simulated {status} {reason(status)} (fallbackchain FaultServer)"
    body = error_body(
        message,
        fault.error_type or default_type,
        fault.error_code if fault.error_code is not None else default_code,
    )
    extra: list[tuple[str, str]] = []
    if fault.retry_after is not None:
        value = fault.retry_after
        extra.append(("retry-after", value if isinstance(value, str) else _format_seconds(value)))
    if fault.retry_after_ms is not None:
        extra.append(("retry-after-ms", _format_seconds(fault.retry_after_ms)))
    if fault.should_retry is not None:
        extra.append(("x-should-retry", "true" if fault.should_retry else "false"))
    await conn.send_json(status, body, request_id=request_id, extra=extra)


async def before_answer(conn: Connection, fault: Fault, request_id: str, stream: bool) -> bool:
    """Play the faults that come before any answer; ``False`` when the response is over.

    ``reset`` aborts, ``status`` sends its HTTP error, ``slow_first_byte`` (and
    ``stall`` on a whole answer) waits first, giving up when the client leaves.
    """
    if fault.kind == "reset":
        conn.abort()
        return False
    if fault.kind == "status":
        await _send_status(conn, fault, request_id)
        return False
    waits = fault.kind == "slow_first_byte" or (fault.kind == "stall" and not stream)
    if waits and not await conn.pause(fault.seconds):
        conn.abort()
        return False
    return True


async def send_body(conn: Connection, fault: Fault, body: bytes, request_id: str) -> None:
    """Send a whole JSON answer, or what ``fault`` makes of it.

    ``sse_error``: an HTTP 500 with the error object; ``malformed``: a 200 whose
    body is not JSON; ``drop``: the full ``Content-Length``, half the body, then
    a reset.
    """
    if fault.kind == "sse_error":
        error = error_body(
            fault.message or "upstream overloaded",
            fault.error_type or "server_error",
            fault.error_code,
        )
        await conn.send_json(500, error, request_id=request_id)
    elif fault.kind == "malformed":
        await conn.send_json(200, b"{this is not json", request_id=request_id)
    elif fault.kind == "drop":
        head = conn.head(
            200,
            [
                ("content-type", "application/json"),
                ("content-length", str(len(body))),
                ("x-request-id", request_id),
            ],
        )
        await conn.send(head + conn.chunk(body[: len(body) // 2]))
        conn.abort()
    else:
        await conn.send_json(200, body, request_id=request_id)


async def send_sse(
    conn: Connection,
    fault: Fault,
    *,
    frames: Sequence[bytes],
    content: Sequence[bool],
    interrupt: Callable[[int], bytes],
    request_id: str,
) -> None:
    """Stream ``frames`` as SSE, one HTTP chunk each, with ``fault`` played mid-stream.

    The fault strikes at :func:`trigger`: ``drop`` resets the connection,
    ``stall`` pauses (ending early if the client leaves), ``early_end`` ends the
    body cleanly there, ``sse_error`` and ``malformed`` first send
    ``interrupt(index)``, the frame that breaks the stream at that index.
    """
    await conn.send(conn.head(200, [*_STREAM_HEADERS, ("x-request-id", request_id)]))
    strike = trigger(content, fault.after_chunks) if fault.kind in MID_STREAM_KINDS else -1
    for i in range(len(frames) + 1):
        if i == strike:
            if fault.kind == "drop":
                conn.abort()
                return
            if fault.kind == "stall":
                if not await conn.pause(fault.seconds):
                    conn.abort()
                    return
            else:
                last = b""
                if fault.kind in ("sse_error", "malformed"):
                    last = conn.chunk(interrupt(i))
                # early_end, sse_error and malformed all end the body cleanly.
                await conn.send(last, last=True)
                return
        if i < len(frames):
            await conn.send(conn.chunk(frames[i]))
    await conn.send(b"", last=True)
