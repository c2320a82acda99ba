"""One HTTP/1.1 connection of the fault server: h11 frames, faults keep the bytes.

:class:`Connection` reads requests and writes responses through an ``h11``
connection, so request parsing (chunked bodies, keep-alive, bad request lines)
and response framing (``Content-Length``, one HTTP chunk per :meth:`Connection.send`)
follow the protocol. A fault still owns the wire: :meth:`Connection.abort` resets
the socket whatever h11 expects next, so a body can stop half-way, a chunked
stream can end without its last chunk, and the bytes sent before are never lost.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import h11

from ._text import dumps

__all__ = [
    "HEAD_LIMIT",
    "MAX_BODY",
    "BadRequestError",
    "Connection",
    "HttpRequest",
    "error_body",
    "reason",
]

MAX_BODY: Final = 32 * 1024 * 1024
HEAD_LIMIT: Final = 64 * 1024
_READ_SIZE: Final = 64 * 1024
_POLL_SECONDS: Final = 0.05
_CONTINUE: Final = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")


def reason(status: int) -> str:
    """The reason phrase of an HTTP status (``"Unknown"`` for unregistered codes)."""
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> bytes:
    """An OpenAI-shaped JSON error body."""
    return dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


@dataclass(slots=True)
class HttpRequest:
    """One request as read off the wire (headers with lower-case names)."""

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
        """Whether the connection may serve another request (h11's rule)."""
        tokens = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        return self.version != "HTTP/1.0" and "close" not in tokens


class BadRequestError(Exception):
    """The bytes on the wire were not a request we can serve; answer and close."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Connection:
    """A client connection: read requests, answer them, or break the answer on purpose.

    ``on_request_done`` is called once per request, just before its last byte
    leaves (or the connection is aborted), so a client that has read a whole
    response never sees the request as still active.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.on_request_done: Callable[[], None] | None = None
        self._h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=HEAD_LIMIT)
        self._aborted = False
        self._keep_alive = False
        self._bodiless = False  # a HEAD request: the response has a head only

    # -- reading ------------------------------------------------------------------

    async def read_request(self) -> HttpRequest | None:
        """Read one whole request; ``None`` when the client closed an idle connection.

        Raises :class:`BadRequestError` for what h11 rejects or a body over 32 MiB.
        """
        head: h11.Request | None = None
        body = bytearray()
        while True:
            try:
                event = self._h11.next_event()
            except h11.RemoteProtocolError as exc:
                raise BadRequestError(exc.error_status_hint, str(exc)) from None
            if event is h11.NEED_DATA:
                if self._h11.they_are_waiting_for_100_continue:  # curl, for big bodies
                    self.writer.write(self._frame(_CONTINUE))
                self._h11.receive_data(await self.reader.read(_READ_SIZE))
            elif isinstance(event, h11.Request):
                head = event
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > MAX_BODY:
                    raise BadRequestError(413, "request body too large")
            elif isinstance(event, h11.EndOfMessage) and head is not None:
                request = _request(head, bytes(body))
                self._keep_alive = request.keep_alive
                self._bodiless = request.method == "HEAD"
                return request
            else:  # ConnectionClosed (or PAUSED, which a fresh cycle never is)
                return None

    def next_cycle(self) -> bool:
        """After a response: whether this connection may read another request."""
        if self._aborted or self.writer.transport.is_closing():
            return False
        if self._h11.our_state is h11.DONE and self._h11.their_state is h11.DONE:
            self._h11.start_next_cycle()
            return True
        return False

    def gone(self) -> bool:
        """Whether the client has closed or reset the connection."""
        if self.writer.transport.is_closing():
            return True
        return self.reader.exception() is not None or self.reader.at_eof()

    async def pause(self, seconds: float) -> bool:
        """Sleep ``seconds`` without blocking the loop; ``False`` if the client left."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            if self.gone():
                return False
            remaining = deadline - loop.time()
            if remaining <= 0:
                return True
            await asyncio.sleep(min(remaining, _POLL_SECONDS))

    # -- writing ------------------------------------------------------------------

    def request_done(self) -> None:
        callback, self.on_request_done = self.on_request_done, None
        if callback is not None:
            callback()

    def head(self, status: int, headers: Sequence[tuple[str, str]]) -> bytes:
        """The framed response head; the body is framed as the headers say."""
        keep_alive = self._h11.their_state is h11.DONE and self._keep_alive
        all_headers = [
            ("date", email.utils.formatdate(usegmt=True)),
            ("server", "fallbackchain-faultserver"),
            *headers,
            ("connection", "keep-alive" if keep_alive else "close"),
        ]
        response = h11.Response(
            status_code=status, headers=all_headers, reason=reason(status).encode()
        )
        return self._frame(response)

    def chunk(self, data: bytes) -> bytes:
        """``data`` framed as one piece of the body (one HTTP chunk when chunked)."""
        if self._bodiless or not data:
            return b""
        return self._frame(h11.Data(data=data))

    async def send(self, data: bytes, *, last: bool = False) -> None:
        """Write bytes already framed; ``last`` adds the end of the body and ends the request."""
        if last:
            data += self._frame(h11.EndOfMessage())
            # Before the bytes leave, so a client that has seen the end of its
            # response never observes the request as still active.
            self.request_done()
        self.writer.write(data)
        await self.writer.drain()

    async def send_json(
        self,
        status: int,
        body: bytes,
        *,
        request_id: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
    ) -> None:
        """A whole JSON response (``Content-Length`` framed)."""
        headers = [
            ("content-type", "application/json"),
            ("content-length", str(len(body))),
            ("x-request-id", request_id or f"req_{uuid.uuid4().hex}"),
            *extra,
        ]
        await self.send(self.head(status, headers) + self.chunk(body), last=True)

    def abort(self) -> None:
        """Reset the connection now, whatever the response still owes (a fault's way out)."""
        self._aborted = True
        self.request_done()
        self.writer.transport.abort()

    def _frame(self, event: h11.Event) -> bytes:
        return self._h11.send(event) or b""


def _request(head: h11.Request, body: bytes) -> HttpRequest:
    headers: dict[str, str] = {}
    for name, value in head.headers:
        key, text = name.decode("latin-1"), value.decode("latin-1")
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
    return HttpRequest(
        method=head.method.decode("ascii").upper(),
        target=head.target.decode("latin-1"),
        version=f"HTTP/{head.http_version.decode('ascii')}",
        headers=headers,
        body=body,
    )
