"""Implementation of :class:`FaultServer`: a small asyncio HTTP/1.1 server.

Everything here is private; the supported surface is what
``fallbackchain.testing`` re-exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email.utils
import http
import ipaddress
import json
import logging
import socket
import threading
import time
import urllib.parse
import uuid
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Literal, Self

from ._faults import INCOMPLETE_REASONS, MID_STREAM_KINDS, Answer, Fault, FaultKind
from ._responses import (
    RESPONSE_SHAPING_KINDS,
    Rendered,
    ResponseScript,
    ResponseStore,
    error_event,
    input_messages,
    queued,
    render,
    sse_event,
)
from ._text import (
    argument_pieces,
    dumps,
    last_user_text,
    prompt_tokens,
    pseudo_words,
    split_tokens,
)

__all__ = ["DEFAULT_MODELS", "FaultServer", "RecordedRequest", "Responder"]

logger = logging.getLogger("fallbackchain.testing")

Responder = Callable[[Sequence[Mapping[str, Any]], str], str | Answer]
"""``responder(messages, model) -> answer``: text or an :class:`Answer` (tool calls, refusal).

Overrides the built-in answers."""

DEFAULT_MODELS: Final[tuple[str, ...]] = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")

_MAX_BODY: Final = 32 * 1024 * 1024
_HEAD_LIMIT: Final = 64 * 1024
_POLL_SECONDS: Final = 0.05
_CHAT_PATH: Final = "/v1/chat/completions"
_MODELS_PATH: Final = "/v1/models"
_RESPONSES_PATH: Final = "/v1/responses"
_APIS: Final = (None, "chat", "responses")
DEFAULT_MAX_RECORDED: Final = 1000
"""How many requests a :class:`FaultServer` keeps in :attr:`~FaultServer.requests` by default."""


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One chat-completions request the server received.

    Only ``POST /v1/chat/completions`` requests whose body parsed as a JSON
    object (and so had a fault rule applied) are recorded.
    """

    method: str
    path: str
    headers: dict[str, str]
    """Request headers with lower-case names; repeated headers joined by ``", "``."""
    body: dict[str, Any]
    """The parsed JSON body."""
    stream: bool
    """``True`` when the body had ``"stream": true``."""
    fault: Fault
    """The fault that was applied to this request (``Fault.ok()`` when none)."""
    request_id: str
    """The ``x-request-id`` the response carried."""
    received_at: float = field(default_factory=time.time)
    """Wall-clock time (``time.time()``) the request was read."""
    route: str = "chat.completions"
    """``"chat.completions"``, ``"responses.create"`` or ``"responses.retrieve"``."""


@dataclass(slots=True)
class _Rule:
    fault: Fault
    stream: bool | None
    remaining: int | None
    api: str | None = None


@dataclass(slots=True)
class _HttpRequest:
    method: str
    target: str
    version: str
    headers: dict[str, str]
    body: bytes

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def keep_alive(self) -> bool:
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        if self.version == "HTTP/1.0":
            return "keep-alive" in tokens
        return "close" not in tokens


class _BadRequestError(Exception):
    """The bytes on the wire were not a request we can serve; answer and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(slots=True)
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    on_request_done: Callable[[], None] | None = None
    """Called once, just before the current request's last byte (or abort)."""
    reusable: bool = True
    """Whether the connection may serve another request after a fault ended this one."""

    def request_done(self) -> None:
        callback, self.on_request_done = self.on_request_done, None
        if callback is not None:
            callback()

    def gone(self) -> bool:
        """Whether the client has closed or reset the connection."""
        if self.writer.transport.is_closing():
            return True
        return self.reader.exception() is not None or self.reader.at_eof()

    async def write(self, data: bytes, *, last: bool = False) -> None:
        if last:
            # Before the bytes leave, so a client that has seen the end of its
            # response never observes the request as still active.
            self.request_done()
        self.writer.write(data)
        await self.writer.drain()

    def abort(self) -> None:
        self.request_done()
        self.writer.transport.abort()


@dataclass(slots=True)
class _Completion:
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
                slot = calls.setdefault(
                    call["index"],
                    {"id": call.get("id"), "type": "function",
                     "function": {"name": call["function"].get("name", ""), "arguments": ""}},
                )
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

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
            ],
        }
        if self.include_usage:
            obj["usage"] = None
        return obj

    def usage_chunk(self) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [],
            "usage": self.usage(),
        }

    def full(self) -> dict[str, Any]:
        return {
            "id": self.completion_id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "system_fingerprint": None,
            "choices": [
                {
                    "index": 0,
                    "message": self.message(),
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                }
            ],
            "usage": self.usage(),
        }


# -- helpers ------------------------------------------------------------------------


def _deltas_of(answer: Answer) -> list[dict[str, Any]]:
    """The content chunks' deltas of ``answer``, in the order OpenAI streams them."""
    deltas: list[dict[str, Any]] = [{"content": t} for t in split_tokens(answer.content)]
    for index, call in enumerate(answer.tool_calls):
        deltas.append(
            {"tool_calls": [{"index": index, "id": call.id, "type": "function",
                             "function": {"name": call.name, "arguments": ""}}]}
        )
        for piece in argument_pieces(call.arguments):
            deltas.append({"tool_calls": [{"index": index, "function": {"arguments": piece}}]})
    deltas.extend({"refusal": t} for t in split_tokens(answer.refusal))
    return deltas


def _trigger(content: Sequence[bool], after: int) -> int:
    """Where a mid-stream fault strikes: before content frame ``after``, else after the last."""
    positions = [i for i, is_content in enumerate(content) if is_content]
    if after < len(positions):
        return positions[after]
    if positions:
        return positions[-1] + 1
    return min(1, len(content))


def _missing(param: str) -> bytes:
    return _error_body(
        f"Missing required parameter: '{param}'.",
        "invalid_request_error",
        "missing_required_parameter",
        param,
    )


def _format_seconds(value: float) -> str:
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _reason(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def _default_error(status: int) -> tuple[str, str | None]:
    """Realistic ``(type, code)`` for an HTTP error status."""
    if status == 429:
        return "requests", "rate_limit_exceeded"
    if status == 401:
        return "invalid_request_error", "invalid_api_key"
    if status >= 500:
        return "server_error", None
    return "invalid_request_error", None


def _error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    return dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def _sse(obj: object) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def _http_chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


_LAST_CHUNK: Final = b"0\r\n\r\n"


def _response_head(status: int, headers: Sequence[tuple[str, str]], *, keep_alive: bool) -> bytes:
    lines = [f"HTTP/1.1 {status} {_reason(status)}"]
    lines.append(f"date: {email.utils.formatdate(usegmt=True)}")
    lines.append("server: fallbackchain-faultserver")
    lines.extend(f"{name}: {value}" for name, value in headers)
    lines.append("connection: keep-alive" if keep_alive else "connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_chunked_body(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError:
            raise _BadRequestError(400, "invalid chunk size in request body") from None
        if size == 0:
            # Skip optional trailers up to the blank line.
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass
            return bytes(body)
        if len(body) + size > _MAX_BODY:
            raise _BadRequestError(413, "request body too large")
        body += await reader.readexactly(size)
        if await reader.readexactly(2) != b"\r\n":
            raise _BadRequestError(400, "malformed chunked request body")


async def _read_request(reader: asyncio.StreamReader) -> _HttpRequest | None:
    """Read one request; ``None`` when the client closed an idle connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise _BadRequestError(400, "incomplete request head") from None
    except asyncio.LimitOverrunError:
        raise _BadRequestError(431, "request head too large") from None
    lines = head.decode("latin-1").lstrip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequestError(400, "malformed request line")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise _BadRequestError(400, "malformed header line")
        key = name.strip().lower()
        value = value.strip()
        headers[key] = f"{headers[key]}, {value}" if key in headers else value
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked_body(reader)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise _BadRequestError(400, "invalid content-length") from None
        if length < 0:
            raise _BadRequestError(400, "invalid content-length")
        if length > _MAX_BODY:
            raise _BadRequestError(413, "request body too large")
        body = await reader.readexactly(length)
    else:
        body = b""
    return _HttpRequest(method.upper(), target, version, headers, body)


# -- the server ---------------------------------------------------------------------


class FaultServer:
    """An OpenAI-compatible chat-completions server with scripted faults.

    The server runs its own asyncio event loop in a daemon thread, so both
    synchronous and asynchronous code (including code running its own event
    loop) can talk to it over loopback. Use it as a context manager, or call
    :meth:`start` and :meth:`stop`.

    Every ``POST /v1/chat/completions`` request is matched against the scripted
    rules (see :meth:`push`) in FIFO order; the first rule whose ``stream``
    filter matches and that has uses left is applied and its use counted.
    Requests that match no rule get :attr:`default` (``Fault.ok()`` unless set).
    All rule, counter and recording operations are thread-safe.

    Args:
        words: number of pseudo-words in each built-in answer.
        host: address to listen on. A name is resolved and only its first
            address is bound.
        port: TCP port; ``0`` picks a free one (see :attr:`port`).
        responder: optional ``responder(messages, model) -> str`` that replaces
            the built-in answer text. It runs on the server's event loop
            thread, so it must be quick and must not block.
        models: model ids listed by ``GET /v1/models``.
        backlog: listen backlog (large by default so 1,000+ clients can connect
            at once).
        max_recorded: how many requests :attr:`requests` keeps (the newest;
            older ones are dropped). ``None`` keeps every one, ``0`` none. The
            counters (:attr:`counts`, :attr:`fault_counts`) stay exact either
            way, so a long run or a soak costs no memory per request.

    """

    def __init__(
        self,
        words: int = 12,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        responder: Responder | None = None,
        models: Sequence[str] = DEFAULT_MODELS,
        backlog: int = 2048,
        max_recorded: int | None = DEFAULT_MAX_RECORDED,
    ) -> None:
        if words < 0:
            raise ValueError(f"words must be >= 0, got {words!r}")
        if max_recorded is not None and (
            isinstance(max_recorded, bool) or not isinstance(max_recorded, int) or max_recorded < 0
        ):
            raise ValueError(f"max_recorded must be an int >= 0 or None, got {max_recorded!r}")
        self._words = words
        self._host = host
        self._requested_port = port
        self._responder = responder
        self._models = tuple(models)
        self._backlog = backlog

        self._lock = threading.Condition(threading.Lock())
        self._rules: deque[_Rule] = deque()
        self._default = Fault.ok()
        self._max_recorded = max_recorded
        self._requests: deque[RecordedRequest] = deque(maxlen=max_recorded)
        self._fault_counts: Counter[FaultKind] = Counter()
        self._route_counts: Counter[str] = Counter()
        self._stored = ResponseStore()
        self._total = 0
        self._stream = 0
        self._completion = 0
        self._active = 0
        self._max_active = 0

        self._lifecycle = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._startup_error: BaseException | None = None
        self._bound: tuple[str, int] | None = None
        self._conn_tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle ------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> Self:
        """Start serving in a background thread; returns ``self``. No-op when running.

        Raises ``OSError`` when the address cannot be bound.
        """
        with self._lifecycle:
            if self._thread is not None:
                return self
            ready = threading.Event()
            self._startup_error = None
            self._bound = None
            thread = threading.Thread(
                target=self._thread_main, args=(ready,), name="FaultServer", daemon=True
            )
            thread.start()
            if not ready.wait(timeout):
                raise RuntimeError("FaultServer did not start in time")
            if self._startup_error is not None:
                thread.join(timeout)
                error, self._startup_error = self._startup_error, None
                raise error
            self._thread = thread
            return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving: close the listener, abort open connections, join the thread.

        Idempotent; safe to call when the server was never started.
        """
        with self._lifecycle:
            thread, loop, stop_event = self._thread, self._loop, self._stop_event
            if thread is None:
                return
            if loop is not None and stop_event is not None:
                with contextlib.suppress(RuntimeError):  # loop already closed
                    loop.call_soon_threadsafe(stop_event.set)
            thread.join(timeout)
            if thread.is_alive():
                warnings.warn(
                    f"FaultServer thread did not stop within {timeout} s",
                    RuntimeWarning,
                    stacklevel=2,
                )
            self._thread = None
            self._loop = None
            self._stop_event = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        where = self.base_url if self._bound else "not running"
        return f"<FaultServer {where}>"

    @property
    def running(self) -> bool:
        """Whether the server is currently serving."""
        return self._thread is not None

    @property
    def port(self) -> int:
        """The TCP port the server listens on (only known once started)."""
        if self._bound is None:
            raise RuntimeError("FaultServer is not running; call start() or use `with`")
        return self._bound[1]

    @property
    def host(self) -> str:
        """The address clients should connect to."""
        if self._bound is None:
            raise RuntimeError("FaultServer is not running; call start() or use `with`")
        return self._bound[0]

    @property
    def base_url(self) -> str:
        """``http://HOST:PORT/v1``, ready to pass as the OpenAI client's ``base_url``."""
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}/v1"

    @property
    def words(self) -> int:
        """Number of pseudo-words in each built-in answer."""
        return self._words

    # -- scripting ------------------------------------------------------------------

    def push(
        self,
        fault: Fault,
        *,
        stream: bool | None = None,
        times: int | None = 1,
        api: Literal["chat", "responses"] | None = None,
    ) -> None:
        """Append a rule: apply ``fault`` to the next ``times`` matching requests.

        ``stream=True`` matches only streaming requests, ``False`` only
        non-streaming ones, ``None`` both. ``api="chat"`` matches only chat
        completions, ``"responses"`` only Responses requests (creations and
        retrievals alike), ``None`` both. ``times=None`` keeps the rule until
        :meth:`clear`. A rule that never matches (say ``stream=True`` while
        only non-streaming requests arrive) stays queued but does not block
        later rules for other requests.
        """
        if not isinstance(fault, Fault):
            raise TypeError(f"expected a Fault, got {fault!r}")
        if times is not None and times < 1:
            raise ValueError(f"times must be >= 1 or None, got {times!r}")
        if api not in _APIS:
            raise ValueError(f"api must be 'chat', 'responses' or None, got {api!r}")
        with self._lock:
            self._rules.append(_Rule(fault, stream, times, api))

    @property
    def default(self) -> Fault:
        """The fault applied when no rule matches (``Fault.ok()`` by default)."""
        with self._lock:
            return self._default

    @default.setter
    def default(self, fault: Fault) -> None:
        if not isinstance(fault, Fault):
            raise TypeError(f"expected a Fault, got {fault!r}")
        with self._lock:
            self._default = fault

    def clear(self) -> None:
        """Drop all rules and set :attr:`default` back to ``Fault.ok()``."""
        with self._lock:
            self._rules.clear()
            self._default = Fault.ok()

    @property
    def pending(self) -> list[tuple[Fault, bool | None, int | None]]:
        """The queued rules as ``(fault, stream, uses_left)``, oldest first."""
        with self._lock:
            return [(r.fault, r.stream, r.remaining) for r in self._rules]

    # -- observation ----------------------------------------------------------------

    @property
    def max_recorded(self) -> int | None:
        """How many requests :attr:`requests` keeps (``None``: all of them)."""
        return self._max_recorded

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded chat-completions requests, oldest first.

        Only the newest :attr:`max_recorded` are kept (1,000 by default); use
        :attr:`counts` and :attr:`fault_counts` to count more than that.
        """
        with self._lock:
            return list(self._requests)

    @property
    def fault_counts(self) -> Counter[FaultKind]:
        """A snapshot: how many chat-completions requests got each fault kind.

        Exact since the last :meth:`reset_counts`, however many requests
        :attr:`requests` kept; a kind never applied reads as ``0``. Requests
        without a matching rule count under :attr:`default`'s kind (``"ok"``).
        """
        with self._lock:
            return Counter(self._fault_counts)

    @property
    def counts(self) -> dict[str, int]:
        """A snapshot of the counters.

        ``total``: chat-completions requests served (``stream`` +
        ``completion``; bodies rejected with a 400 are not counted);
        ``stream``: those with ``"stream": true``; ``completion``: the
        non-streaming ones; ``active``: those being served
        right now; ``max_active``: the peak of ``active`` since the last
        :meth:`reset_counts`.

        A request stops being ``active`` just before its last byte is sent (or
        its connection aborted), so once a client has read a whole response,
        ``active`` no longer includes it. A request the client gave up on (a
        timeout on a stall, say) leaves ``active`` only when the server notices
        the disconnect, within about 50 ms: use :meth:`wait_idle` for those.
        """
        with self._lock:
            return {
                "total": self._total,
                "stream": self._stream,
                "completion": self._completion,
                "active": self._active,
                "max_active": self._max_active,
            }

    @property
    def route_counts(self) -> Counter[str]:
        """A snapshot: requests per route since the last :meth:`reset_counts`.

        Keys: ``"chat.completions"``, ``"responses.create"``, ``"responses.retrieve"``
        (a route never asked reads as ``0``). Their sum is ``counts["total"]``.
        """
        with self._lock:
            return Counter(self._route_counts)

    def reset_counts(self) -> None:
        """Zero the counters (:attr:`fault_counts` too) and forget recorded requests.

        ``active`` keeps counting requests still in flight, and ``max_active``
        restarts from it.
        """
        with self._lock:
            self._requests.clear()
            self._fault_counts.clear()
            self._route_counts.clear()
            self._total = self._stream = self._completion = 0
            self._max_active = self._active

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until no request is being served; ``False`` on timeout.

        Useful after a client gave up on a response (say a dropped or stalled
        stream) before asserting on ``counts["active"]``.
        """
        with self._lock:
            return self._lock.wait_for(lambda: self._active == 0, timeout)

    def reply_for(self, messages: Iterable[Mapping[str, Any]], model: str) -> Answer:
        """The whole :class:`Answer` the server gives for ``messages`` and ``model``.

        The built-in answer (see :meth:`answer_for`) is text only; a ``responder`` may
        script tool calls or a refusal. Raises ``TypeError`` when the responder returns
        neither a string nor an :class:`Answer`.
        """
        messages = list(messages)
        if self._responder is None:
            words = pseudo_words(last_user_text(messages), self._words)
            return Answer(content=" ".join([f"Answer from {model}:", *words]))
        reply = self._responder(messages, model)
        if isinstance(reply, str):
            return Answer(content=reply)
        if isinstance(reply, Answer):
            return reply
        raise TypeError(f"a responder must return str or Answer, got {type(reply).__name__}")

    def answer_for(self, messages: Iterable[Mapping[str, Any]], model: str) -> str:
        """The exact answer text (``content``) the server gives for ``messages`` and ``model``.

        Built-in answers are ``"Answer from {model}:"`` followed by
        :attr:`words` pseudo-words derived from a hash of the last user
        message's text: the same prompt always gets the same answer, different
        prompts (almost surely) different ones. A ``responder`` given to the
        constructor replaces this (for an :class:`Answer`, this is its ``content``).
        """
        return self.reply_for(messages, model).content

    # -- thread / loop ------------------------------------------------------------

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self._serve(ready))
        except BaseException as exc:  # surfaced to start() when startup failed
            if ready.is_set():
                logger.exception("FaultServer event loop crashed")
            else:
                self._startup_error = exc
                ready.set()

    async def _serve(self, ready: threading.Event) -> None:
        loop = asyncio.get_running_loop()
        stop_event = asyncio.Event()
        infos = await loop.getaddrinfo(
            self._host,
            self._requested_port,
            type=socket.SOCK_STREAM,
            flags=socket.AI_PASSIVE,
        )
        if not infos:
            raise OSError(f"cannot resolve {self._host!r}")
        address = str(infos[0][4][0])
        server = await asyncio.start_server(
            self._on_connection,
            address,
            self._requested_port,
            backlog=self._backlog,
            limit=_HEAD_LIMIT,
            reuse_address=True,
        )
        sock_port = int(server.sockets[0].getsockname()[1])
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if ip.is_unspecified:
            address = "::1" if ip.version == 6 else "127.0.0.1"
        self._bound = (address, sock_port)
        self._loop = loop
        self._stop_event = stop_event
        ready.set()
        try:
            await stop_event.wait()
        finally:
            server.close()
            # Connections accepted just before close() may still be handed to
            # _on_connection, hence the loop.
            while self._conn_tasks:
                tasks = list(self._conn_tasks)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            await server.wait_closed()
            # Let aborted transports run their connection_lost callbacks.
            await asyncio.sleep(0)
            await asyncio.sleep(0)

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Our own task (rather than letting start_server wrap a coroutine) so
        # it is tracked from birth, and so a task cancelled at shutdown is not
        # reported by Python 3.11's stream callback as an error.
        task = asyncio.get_running_loop().create_task(self._handle_connection(reader, writer))
        self._conn_tasks.add(task)

        def done(finished: asyncio.Task[None]) -> None:
            self._conn_tasks.discard(finished)
            if not finished.cancelled() and finished.exception() is not None:
                logger.error("FaultServer connection task failed", exc_info=finished.exception())
            # A task cancelled before it ever ran never closed its transport.
            if not writer.transport.is_closing():
                writer.transport.abort()

        task.add_done_callback(done)

    async def _handle_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        # drain() then waits until the kernel has taken every byte, so a fault
        # that aborts the connection never loses the chunks sent before it.
        writer.transport.set_write_buffer_limits(high=0)
        conn = _Connection(reader, writer)
        try:
            await self._serve_connection(conn)
            # Graceful end: every byte was already drained to the kernel, so a
            # plain close sends them and then FIN.
            writer.close()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception:
            logger.exception("FaultServer connection handler failed")
        finally:
            # Cancelled (server stopping) or failed: do not linger.
            if not writer.transport.is_closing():
                conn.abort()

    async def _serve_connection(self, conn: _Connection) -> None:
        while True:
            try:
                request = await _read_request(conn.reader)
            except _BadRequestError as exc:
                body = _error_body(exc.message, "invalid_request_error", None)
                await self._send_json(conn, exc.status, body, keep_alive=False)
                return
            if request is None:
                return
            if not await self._dispatch(conn, request):
                return

    async def _send_json(
        self,
        conn: _Connection,
        status: int,
        body: bytes,
        *,
        keep_alive: bool,
        request_id: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
    ) -> bool:
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("x-request-id", request_id or f"req_{uuid.uuid4().hex}"),
            *extra,
        ]
        await conn.write(_response_head(status, headers, keep_alive=keep_alive) + body, last=True)
        return keep_alive

    async def _dispatch(self, conn: _Connection, request: _HttpRequest) -> bool:
        """Serve one request; return whether the connection may be reused."""
        keep_alive = request.keep_alive
        path = request.path.rstrip("/") or "/"
        if request.method == "POST" and path == _CHAT_PATH:
            return await self._chat(conn, request, keep_alive=keep_alive)
        if request.method == "POST" and path == _RESPONSES_PATH:
            return await self._responses_create(conn, request, keep_alive=keep_alive)
        response_id = path.removeprefix(_RESPONSES_PATH + "/")
        if request.method == "GET" and response_id != path and "/" not in response_id:
            return await self._responses_retrieve(conn, request, response_id, keep_alive)
        if request.method == "GET" and path == _MODELS_PATH:
            created = int(time.time())
            data = [
                {"id": model, "object": "model", "created": created, "owned_by": "fallbackchain"}
                for model in self._models
            ]
            body = dumps({"object": "list", "data": data})
            return await self._send_json(conn, 200, body, keep_alive=keep_alive)
        message = f"Invalid URL ({request.method} {request.path})"
        body = _error_body(message, "invalid_request_error", "unknown_url")
        return await self._send_json(conn, 404, body, keep_alive=keep_alive)

    @staticmethod
    def _json_object(request: _HttpRequest) -> dict[str, Any] | bytes:
        """The request's JSON object body, or the error body of the 400 to answer."""
        try:
            payload = json.loads(request.body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            message = f"We could not parse the JSON body of your request. ({exc})"
            return _error_body(message, "invalid_request_error", None)
        if not isinstance(payload, dict):
            return _error_body(
                "The request body must be a JSON object.", "invalid_request_error", None
            )
        return payload

    async def _chat(self, conn: _Connection, request: _HttpRequest, *, keep_alive: bool) -> bool:
        payload = self._json_object(request)
        if isinstance(payload, bytes):
            return await self._send_json(conn, 400, payload, keep_alive=keep_alive)
        model = payload.get("model")
        messages = payload.get("messages")
        if not isinstance(model, str) or not isinstance(messages, list):
            param = "model" if not isinstance(model, str) else "messages"
            body = _missing(param)
            return await self._send_json(conn, 400, body, keep_alive=keep_alive)

        stream = payload.get("stream") is True
        request_id = f"req_{uuid.uuid4().hex}"
        fault = self._admit(request, payload, stream, request_id, "chat.completions")
        conn.on_request_done = self._request_done
        try:
            return await self._respond(
                conn,
                fault,
                payload=payload,
                model=model,
                messages=messages,
                stream=stream,
                request_id=request_id,
                keep_alive=keep_alive,
            )
        finally:
            conn.request_done()

    async def _responses_create(
        self, conn: _Connection, request: _HttpRequest, *, keep_alive: bool
    ) -> bool:
        payload = self._json_object(request)
        if isinstance(payload, bytes):
            return await self._send_json(conn, 400, payload, keep_alive=keep_alive)
        model = payload.get("model")
        given = payload.get("input")
        body = None
        if not isinstance(model, str):
            body = _missing("model")
        elif given is not None and not isinstance(given, str | list):
            body = _error_body(
                "Invalid type for 'input': expected a string or an array of input items.",
                "invalid_request_error", "invalid_type", "input",
            )
        elif payload.get("background") is True and payload.get("store") is False:
            body = _error_body(
                "Background responses must be stored: set store=true (the default).",
                "invalid_request_error", None, "store",
            )
        if body is not None:
            return await self._send_json(conn, 400, body, keep_alive=keep_alive)
        assert isinstance(model, str)
        stream = payload.get("stream") is True
        request_id = f"req_{uuid.uuid4().hex}"
        fault = self._admit(request, payload, stream, request_id, "responses.create")
        conn.on_request_done = self._request_done
        try:
            if not await self._before_answer(conn, fault, request_id, stream, keep_alive):
                return conn.reusable
            messages = input_messages(payload)
            answer = await self._reply(conn, messages, model, request_id, keep_alive)
            if answer is None:
                return conn.reusable
            script = ResponseScript(
                response_id=f"resp_{uuid.uuid4().hex}",
                created_at=int(time.time()),
                model=model,
                answer=answer,
                request=payload,
                prompt_tokens=prompt_tokens(messages),
                ending=fault if fault.kind in RESPONSE_SHAPING_KINDS else Fault.ok(),
            )
            if payload.get("store") is not False:
                # Stored before a byte is sent: a background response goes on being
                # generated (here: exists whole) whatever happens to this connection.
                self._stored.put(script)
            rendered = render(script)
            if stream:
                return await self._send_response_events(
                    conn, fault=fault, rendered=rendered, first=0, request_id=request_id,
                    keep_alive=keep_alive,
                )
            whole = queued(script) if script.background else rendered.final
            return await self._send_body(conn, fault, dumps(whole), request_id, keep_alive)
        finally:
            conn.request_done()

    async def _responses_retrieve(
        self, conn: _Connection, request: _HttpRequest, response_id: str, keep_alive: bool
    ) -> bool:
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.target).query)
        stream = query.get("stream", [""])[-1].lower() == "true"
        after_text = query.get("starting_after", [""])[-1]
        starting_after: int | None = None
        body = None
        if after_text:
            try:
                starting_after = int(after_text)
            except ValueError:
                starting_after = -1
            if starting_after < 0:
                body = _error_body(
                    f"Invalid 'starting_after': expected an integer >= 0, got {after_text!r}.",
                    "invalid_request_error", "invalid_value", "starting_after",
                )
        script = self._stored.get(response_id)
        if body is not None:
            return await self._send_json(conn, 400, body, keep_alive=keep_alive)
        if script is None:
            body = _error_body(
                f"Response with id '{response_id}' not found.", "invalid_request_error", None
            )
            return await self._send_json(conn, 404, body, keep_alive=keep_alive)
        if stream and not script.background:
            body = _error_body(
                "Only background responses (background=true) can be streamed again.",
                "invalid_request_error", None, "stream",
            )
            return await self._send_json(conn, 400, body, keep_alive=keep_alive)
        record = {"response_id": response_id, "stream": stream, "starting_after": starting_after}
        request_id = f"req_{uuid.uuid4().hex}"
        fault = self._admit(request, record, stream, request_id, "responses.retrieve")
        conn.on_request_done = self._request_done
        try:
            if not await self._before_answer(conn, fault, request_id, stream, keep_alive):
                return conn.reusable
            if fault.kind in RESPONSE_SHAPING_KINDS:
                script = dataclasses.replace(script, ending=fault)
            rendered = render(script)
            if stream:
                first = 0 if starting_after is None else starting_after + 1
                return await self._send_response_events(
                    conn, fault=fault, rendered=rendered, first=first, request_id=request_id,
                    keep_alive=keep_alive,
                )
            return await self._send_body(
                conn, fault, dumps(rendered.final), request_id, keep_alive
            )
        finally:
            conn.request_done()

    def _request_done(self) -> None:
        with self._lock:
            self._active -= 1
            if self._active == 0:
                self._lock.notify_all()

    def _admit(
        self,
        request: _HttpRequest,
        payload: dict[str, Any],
        stream: bool,
        request_id: str,
        route: str,
    ) -> Fault:
        """Pick the fault for a request and record it, all under the lock."""
        api = route.split(".", 1)[0]
        with self._lock:
            fault = self._default
            for rule in self._rules:
                if rule.stream is not None and rule.stream != stream:
                    continue
                if rule.api is not None and rule.api != api:
                    continue
                fault = rule.fault
                if rule.remaining is not None:
                    rule.remaining -= 1
                    if rule.remaining == 0:
                        self._rules.remove(rule)
                break
            if self._max_recorded != 0:  # the deque drops the oldest past max_recorded
                self._requests.append(
                    RecordedRequest(
                        method=request.method,
                        path=request.path,
                        headers=dict(request.headers),
                        body=payload,
                        stream=stream,
                        fault=fault,
                        request_id=request_id,
                        route=route,
                    )
                )
            self._fault_counts[fault.kind] += 1
            self._route_counts[route] += 1
            self._total += 1
            if stream:
                self._stream += 1
            else:
                self._completion += 1
            self._active += 1
            self._max_active = max(self._max_active, self._active)
            return fault

    async def _pause(self, conn: _Connection, seconds: float) -> bool:
        """Sleep ``seconds`` without blocking the loop; ``False`` if the client left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            if conn.gone():
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return True
            await asyncio.sleep(min(remaining, _POLL_SECONDS))

    async def _before_answer(
        self, conn: _Connection, fault: Fault, request_id: str, stream: bool, keep_alive: bool
    ) -> bool:
        """Play the faults that come before any answer; ``False`` when the request is done."""
        if fault.kind == "reset":
            conn.abort()
            conn.reusable = False
            return False
        if fault.kind == "status":
            conn.reusable = await self._send_status(conn, fault, request_id, keep_alive)
            return False
        waits = fault.kind == "slow_first_byte" or (fault.kind == "stall" and not stream)
        if waits and not await self._pause(conn, fault.seconds):
            conn.reusable = False
            return False
        return True

    async def _reply(
        self,
        conn: _Connection,
        messages: list[Any],
        model: str,
        request_id: str,
        keep_alive: bool,
    ) -> Answer | None:
        """The answer to give; ``None`` when the responder failed (a 500 was sent)."""
        try:
            return self.reply_for(messages, model)
        except Exception as exc:
            logger.exception("FaultServer responder failed")
            body = _error_body(f"responder failed: {exc!r}", "server_error", None)
            conn.reusable = await self._send_json(
                conn, 500, body, keep_alive=keep_alive, request_id=request_id
            )
            return None

    async def _respond(
        self,
        conn: _Connection,
        fault: Fault,
        *,
        payload: dict[str, Any],
        model: str,
        messages: list[Any],
        stream: bool,
        request_id: str,
        keep_alive: bool,
    ) -> bool:
        if fault.kind == "failed":  # chat has no failed state: an error mid-stream
            fault = Fault.sse_error(
                fault.after_chunks, fault.message or "", fault.error_code or "server_error"
            )
        if not await self._before_answer(conn, fault, request_id, stream, keep_alive):
            return conn.reusable
        answer = await self._reply(conn, messages, model, request_id, keep_alive)
        if answer is None:
            return conn.reusable
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
        completion = _Completion(
            request_id=request_id,
            completion_id=f"chatcmpl-{uuid.uuid4().hex[:24]}",
            created=int(time.time()),
            model=model,
            deltas=deltas,
            finish_reason=finish_reason,
            prompt_tokens=prompt_tokens(messages),
            include_usage=isinstance(stream_options, dict)
            and stream_options.get("include_usage") is True,
        )
        if stream:
            return await self._send_chat_stream(conn, fault, completion, keep_alive)
        return await self._send_body(
            conn, fault, dumps(completion.full()), request_id, keep_alive
        )

    async def _send_status(
        self, conn: _Connection, fault: Fault, request_id: str, keep_alive: bool
    ) -> bool:
        status = fault.status_code
        default_type, default_code = _default_error(status)
        message = (
            fault.message or f"Simulated {status} {_reason(status)} (fallbackchain FaultServer)"
        )
        body = _error_body(
            message,
            fault.error_type or default_type,
            fault.error_code if fault.error_code is not None else default_code,
        )
        extra: list[tuple[str, str]] = []
        if fault.retry_after is not None:
            value = fault.retry_after
            extra.append(
                ("retry-after", value if isinstance(value, str) else _format_seconds(value))
            )
        if fault.retry_after_ms is not None:
            extra.append(("retry-after-ms", _format_seconds(fault.retry_after_ms)))
        if fault.should_retry is not None:
            extra.append(("x-should-retry", "true" if fault.should_retry else "false"))
        return await self._send_json(
            conn, status, body, keep_alive=keep_alive, request_id=request_id, extra=extra
        )

    async def _send_body(
        self, conn: _Connection, fault: Fault, body: bytes, request_id: str, keep_alive: bool
    ) -> bool:
        """Send a whole JSON answer, or what ``fault`` makes of it."""
        if fault.kind == "sse_error":
            body = _error_body(
                fault.message or "upstream overloaded",
                fault.error_type or "server_error",
                fault.error_code,
            )
            return await self._send_json(
                conn, 500, body, keep_alive=keep_alive, request_id=request_id
            )
        if fault.kind == "malformed":
            return await self._send_json(
                conn, 200, b"{this is not json", keep_alive=keep_alive, request_id=request_id
            )
        if fault.kind == "drop":
            head = _response_head(
                200,
                [
                    ("content-type", "application/json"),
                    ("content-length", str(len(body))),
                    ("x-request-id", request_id),
                ],
                keep_alive=keep_alive,
            )
            await conn.write(head + body[: len(body) // 2])
            conn.abort()
            return False
        return await self._send_json(conn, 200, body, keep_alive=keep_alive, request_id=request_id)

    async def _send_chat_stream(
        self, conn: _Connection, fault: Fault, completion: _Completion, keep_alive: bool
    ) -> bool:
        frames = [_sse(completion.chunk(completion.role_delta()))]
        frames.extend(_sse(completion.chunk(delta)) for delta in completion.deltas)
        frames.append(_sse(completion.chunk({}, completion.finish_reason)))
        if completion.include_usage:
            frames.append(_sse(completion.usage_chunk()))
        frames.append(b"data: [DONE]\n\n")
        content = [False, *(True for _ in completion.deltas)]
        content.extend(False for _ in frames[len(content) :])

        def interrupt(index: int) -> bytes:
            if fault.kind == "malformed":
                return b"data: {this is not json\n\n"
            error = {
                "message": fault.message,
                "type": fault.error_type or "server_error",
                "param": None,
                "code": fault.error_code,
            }
            return _sse({"error": error})

        return await self._send_sse(
            conn, fault=fault, frames=frames, content=content, interrupt=interrupt,
            request_id=completion.request_id, keep_alive=keep_alive,
        )

    async def _send_response_events(
        self,
        conn: _Connection,
        *,
        fault: Fault,
        rendered: Rendered,
        first: int,
        request_id: str,
        keep_alive: bool,
    ) -> bool:
        """Stream the rendered events from sequence number ``first`` on."""
        frames = [sse_event(event) for event in rendered.events[first:]]

        def interrupt(index: int) -> bytes:
            if fault.kind == "malformed":
                return b"event: response.output_text.delta\ndata: {this is not json\n\n"
            message = fault.message or "upstream overloaded"
            return error_event(first + index, message, fault.error_code)

        return await self._send_sse(
            conn, fault=fault, frames=frames, content=rendered.content[first:],
            interrupt=interrupt, request_id=request_id, keep_alive=keep_alive,
        )

    async def _send_sse(
        self,
        conn: _Connection,
        *,
        fault: Fault,
        frames: Sequence[bytes],
        content: Sequence[bool],
        interrupt: Callable[[int], bytes],
        request_id: str,
        keep_alive: bool,
    ) -> bool:
        """Stream ``frames`` as SSE, one HTTP chunk each, with ``fault`` played mid-stream.

        The fault happens before the content frame numbered ``after_chunks`` (or right
        after the last content frame); ``interrupt(index)`` is the frame an ``sse_error``
        or ``malformed`` fault sends there.
        """
        head = _response_head(
            200,
            [
                ("content-type", "text/event-stream; charset=utf-8"),
                ("cache-control", "no-cache"),
                ("transfer-encoding", "chunked"),
                ("x-request-id", request_id),
            ],
            keep_alive=keep_alive,
        )
        await conn.write(head)
        trigger = _trigger(content, fault.after_chunks) if fault.kind in MID_STREAM_KINDS else -1
        for i in range(len(frames) + 1):
            if i == trigger:
                if fault.kind == "drop":
                    conn.abort()
                    return False
                if fault.kind == "stall":
                    if not await self._pause(conn, fault.seconds):
                        return False
                else:
                    if fault.kind in ("sse_error", "malformed"):
                        await conn.write(_http_chunk(interrupt(i)))
                    # early_end, sse_error and malformed all end the body cleanly.
                    await conn.write(_LAST_CHUNK, last=True)
                    return keep_alive
            if i < len(frames):
                await conn.write(_http_chunk(frames[i]))
        await conn.write(_LAST_CHUNK, last=True)
        return keep_alive
