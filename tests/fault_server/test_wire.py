"""The fault server's bytes on the wire: h11 frames them, faults still break them exactly.

A raw socket reads what the server sends, so these tests see what an HTTP client library
hides: each SSE event in its own HTTP chunk, a dropped stream without its last chunk, a
body cut at half its ``Content-Length``, a clean end that keeps the connection alive.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest

from fallbackchain.testing import Fault, FaultServer

MODEL = "gpt-4o-mini"
LAST_CHUNK = b"0\r\n\r\n"


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer(words=4) as srv:
        yield srv


def post(path: str, payload: object, *, extra: str = "") -> bytes:
    body = json.dumps(payload).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n{extra}\r\n"
    )
    return head.encode() + body


def chat(stream: bool) -> bytes:
    messages = [{"role": "user", "content": "hi"}]
    return post("/v1/chat/completions", {"model": MODEL, "messages": messages, "stream": stream})


def connect(server: FaultServer) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=5)
    sock.settimeout(5)
    return sock


def read_until_closed(sock: socket.socket) -> tuple[bytes, bool]:
    """Everything the server sends before it closes; ``(bytes, whether it was a reset)``."""
    data = bytearray()
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            return bytes(data), True
        if not piece:
            return bytes(data), False
        data += piece


def read_response(sock: socket.socket) -> tuple[bytes, bytes]:
    """One whole chunked or Content-Length response on a kept-alive connection: (head, body)."""
    data = bytearray()
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    body = bytearray(rest)
    if b"transfer-encoding: chunked" in head.lower():
        while not body.endswith(LAST_CHUNK):
            body += sock.recv(65536)
    else:
        length = int(header(head, "content-length"))
        while len(body) < length:
            body += sock.recv(65536)
    return head, bytes(body)


def header(head: bytes, name: str) -> str:
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == name:
            return value.strip()
    raise KeyError(name)


def chunks_of(body: bytes) -> tuple[list[bytes], bytes]:
    """Split a chunked body into its chunks' data; the unparsed rest (``b""`` when whole)."""
    chunks = []
    while body:
        size_line, sep, rest = body.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            assert rest.startswith(b"\r\n")  # no trailers, then the blank line
            return chunks, rest[2:]
        chunks.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        body = rest[size + 2 :]
    return chunks, body


def test_each_sse_event_is_one_http_chunk_and_the_body_ends_with_the_last_chunk(
    server: FaultServer,
) -> None:
    with connect(server) as sock:
        sock.sendall(chat(stream=True))
        head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert header(head, "connection") == "keep-alive"
    chunks, rest = chunks_of(body)
    assert rest == b""
    assert all(c.startswith(b"data: ") and c.endswith(b"\n\n") and c.count(b"\n\n") == 1
               for c in chunks)  # fmt: skip
    assert chunks[-1] == b"data: [DONE]\n\n"
    assert len(chunks) == 1 + 7 + 1 + 1  # role, "Answer from MODEL:" + 4 words, finish, [DONE]


def test_a_dropped_stream_stops_between_events_without_the_last_chunk(
    server: FaultServer,
) -> None:
    server.push(Fault.drop(after_chunks=2))
    with connect(server) as sock:
        sock.sendall(chat(stream=True))
        data, _ = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert header(head, "transfer-encoding") == "chunked"
    chunks, rest = chunks_of(body)
    assert len(chunks) == 1 + 2  # the role chunk, then two content chunks
    assert rest == b""  # every chunk sent is whole: the cut falls between them
    assert not body.endswith(LAST_CHUNK)


def test_a_dropped_whole_answer_sends_half_its_content_length(server: FaultServer) -> None:
    server.push(Fault.drop())
    with connect(server) as sock:
        sock.sendall(chat(stream=False))
        data, _ = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(header(head, "content-length"))
    assert len(body) == length // 2


def test_a_dropped_responses_stream_keeps_every_event_whole(server: FaultServer) -> None:
    server.push(Fault.drop(after_chunks=1))
    with connect(server) as sock:
        sock.sendall(post("/v1/responses", {"model": MODEL, "input": "hi", "stream": True}))
        data, _ = read_until_closed(sock)
    chunks, rest = chunks_of(data.partition(b"\r\n\r\n")[2])
    assert rest == b""
    assert [c.split(b"\n", 1)[0] for c in chunks] == [
        b"event: response.created",
        b"event: response.in_progress",
        b"event: response.output_item.added",
        b"event: response.content_part.added",
        b"event: response.output_text.delta",
    ]


def test_early_end_and_malformed_end_cleanly_and_keep_the_connection(
    server: FaultServer,
) -> None:
    server.push(Fault.early_end(after_chunks=1))
    server.push(Fault.malformed(after_chunks=0))
    with connect(server) as sock:
        sock.sendall(chat(stream=True))
        _, body = read_response(sock)
        chunks, rest = chunks_of(body)
        assert rest == b"" and len(chunks) == 2  # role + one word, then the last chunk
        sock.sendall(chat(stream=True))  # the same connection serves the next request
        _, body = read_response(sock)
        chunks, rest = chunks_of(body)
        assert rest == b""
        assert chunks[-1] == b"data: {this is not json\n\n"


def test_a_reset_sends_nothing(server: FaultServer) -> None:
    server.push(Fault.reset())
    with connect(server) as sock:
        sock.sendall(chat(stream=True))
        data, _ = read_until_closed(sock)
    assert data == b""


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"NOT A REQUEST\r\n\r\n", 400),
        (b"GET /v1/models HTTP/1.1\r\n\r\n", 400),  # HTTP/1.1 without Host
        # A head still incomplete past 64 KiB (sent whole, so the server reads it all).
        (b"GET /v1/models HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 100_000, 431),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: t\r\nContent-Length: x\r\n\r\n", 400),
    ],
)
def test_bad_requests_get_an_openai_shaped_error_and_a_close(
    server: FaultServer, request_bytes: bytes, status: int
) -> None:
    with connect(server) as sock:
        sock.sendall(request_bytes)
        data, _ = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(f"HTTP/1.1 {status} ".encode())
    assert header(head, "connection") == "close"
    assert json.loads(body)["error"]["type"] == "invalid_request_error"
    assert server.counts["total"] == 0


def test_http_1_0_gets_a_close_delimited_stream(server: FaultServer) -> None:
    request = chat(stream=True).replace(b"HTTP/1.1", b"HTTP/1.0", 1)
    with connect(server) as sock:
        sock.sendall(request)
        data, reset = read_until_closed(sock)
    head, _, body = data.partition(b"\r\n\r\n")
    assert not reset
    assert header(head, "connection") == "close"
    assert b"transfer-encoding" not in head.lower()
    assert body.endswith(b"data: [DONE]\n\n")


def test_a_head_request_gets_a_head_and_the_connection_goes_on(server: FaultServer) -> None:
    with connect(server) as sock:
        sock.sendall(b"HEAD /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
        data = b""
        while not data.endswith(b"\r\n\r\n"):
            data += sock.recv(65536)
        assert data.startswith(b"HTTP/1.1 404 ")
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: t\r\n\r\n")
        head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["object"] == "list"


def test_expect_100_continue_is_answered_before_the_body(server: FaultServer) -> None:
    request = chat(stream=False)
    head, _, body = request.partition(b"\r\n\r\n")
    with connect(server) as sock:
        sock.sendall(head + b"\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        head, body = read_response(sock)
    assert head.startswith(b"HTTP/1.1 200 ")
    assert json.loads(body)["object"] == "chat.completion"
