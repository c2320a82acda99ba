"""Implementation of :class:`FaultServer`: its lifecycle, its public API, its connections.

The server runs an asyncio loop in a daemon thread. Each connection is read and
framed by ``_http`` (h11), each request is served by ``_routes``, whose fault the
rulebook (``_rules``) picks; answers are rendered by ``_chat`` and ``_responses``
and sent by ``_delivery``, broken as the fault says.

Everything here is private; the supported surface is what
``fallbackchain.testing`` re-exports.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import threading
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, Final, Self

from ._faults import Answer, Fault, FaultKind
from ._http import HEAD_LIMIT, BadRequestError, Connection, error_body
from ._routes import Routes
from ._rules import DEFAULT_MAX_RECORDED, Api, RecordedRequest, Rulebook
from ._text import last_user_text, pseudo_words

__all__ = ["DEFAULT_MODELS", "FaultServer", "RecordedRequest", "Responder"]

logger = logging.getLogger("fallbackchain.testing")

Responder = Callable[[Sequence[Mapping[str, Any]], str], str | Answer]
"""``responder(messages, model) -> answer``: text or an :class:`Answer` (tool calls, refusal).

Overrides the built-in answers."""

DEFAULT_MODELS: Final[tuple[str, ...]] = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini")


class FaultServer:
    """An OpenAI-compatible server (chat completions, Responses) with scripted faults.

    The server runs its own asyncio event loop in a daemon thread, so both
    synchronous and asynchronous code (including code running its own event
    loop) can talk to it over loopback. Use it as a context manager, or call
    :meth:`start` and :meth:`stop`.

    Every chat-completions request, Responses creation and Responses retrieval
    is matched against the scripted rules (see :meth:`push`) in FIFO order; the
    first rule whose ``stream`` and ``api`` filters match and that has uses left
    is applied and its use counted.
    Requests that match no rule get :attr:`default` (``Fault.ok()`` unless set).
    All rule, counter and recording operations are thread-safe.

    Args:
        words: number of pseudo-words in each built-in answer.
        host: address to listen on. A name is resolved and only its first
            address is bound.
        port: TCP port; ``0`` picks a free one (see :attr:`port`).
        responder: optional ``responder(messages, model) -> str | Answer`` that
            replaces the built-in answer (for a Responses request, ``messages``
            are its ``instructions`` as a system message and its ``input``). It
            runs on the server's event loop thread, so it must be quick and must
            not block.
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
        self._book = Rulebook(max_recorded)
        self._words = words
        self._host = host
        self._requested_port = port
        self._responder = responder
        self._models = tuple(models)
        self._backlog = backlog

        self._routes = Routes(self._book, self.reply_for, models)

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
        api: Api | None = None,
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
        self._book.push(fault, stream, times, api)

    @property
    def default(self) -> Fault:
        """The fault applied when no rule matches (``Fault.ok()`` by default)."""
        return self._book.default

    @default.setter
    def default(self, fault: Fault) -> None:
        self._book.default = fault

    def clear(self) -> None:
        """Drop all rules and set :attr:`default` back to ``Fault.ok()``."""
        self._book.clear()

    @property
    def pending(self) -> list[tuple[Fault, bool | None, int | None]]:
        """The queued rules as ``(fault, stream, uses_left)``, oldest first."""
        return self._book.pending()

    # -- observation ----------------------------------------------------------------

    @property
    def max_recorded(self) -> int | None:
        """How many requests :attr:`requests` keeps (``None``: all of them)."""
        return self._book.max_recorded

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded requests (chat and Responses), oldest first.

        Only the newest :attr:`max_recorded` are kept (1,000 by default); use
        :attr:`counts` and :attr:`fault_counts` to count more than that.
        """
        return self._book.requests()

    @property
    def fault_counts(self) -> Counter[FaultKind]:
        """A snapshot: how many requests got each fault kind.

        Exact since the last :meth:`reset_counts`, however many requests
        :attr:`requests` kept; a kind never applied reads as ``0``. Requests
        without a matching rule count under :attr:`default`'s kind (``"ok"``).
        """
        return self._book.fault_counts()

    @property
    def counts(self) -> dict[str, int]:
        """A snapshot of the counters.

        ``total``: requests served that took a rule, chat completions and
        Responses creations and retrievals alike (``stream`` + ``completion``;
        bodies rejected with a 400 are not counted; :attr:`route_counts` splits
        them by route); ``stream``: those with ``"stream": true``; ``completion``: the
        non-streaming ones; ``active``: those being served
        right now; ``max_active``: the peak of ``active`` since the last
        :meth:`reset_counts`.

        A request stops being ``active`` just before its last byte is sent (or
        its connection aborted), so once a client has read a whole response,
        ``active`` no longer includes it. A request the client gave up on (a
        timeout on a stall, say) leaves ``active`` only when the server notices
        the disconnect, within about 50 ms: use :meth:`wait_idle` for those.
        """
        return self._book.counts()

    @property
    def route_counts(self) -> Counter[str]:
        """A snapshot: requests per route since the last :meth:`reset_counts`.

        Keys: ``"chat.completions"``, ``"responses.create"``, ``"responses.retrieve"``,
        ``"responses.cancel"`` (a route never asked reads as ``0``). Their sum is
        ``counts["total"]``.
        """
        return self._book.route_counts()

    def reset_counts(self) -> None:
        """Zero the counters (:attr:`fault_counts` too) and forget recorded requests.

        ``active`` keeps counting requests still in flight, and ``max_active``
        restarts from it.
        """
        self._book.reset_counts()

    def wait_idle(self, timeout: float = 5.0) -> bool:
        """Block until no request is being served; ``False`` on timeout.

        Useful after a client gave up on a response (say a dropped or stalled
        stream) before asserting on ``counts["active"]``.
        """
        return self._book.wait_idle(timeout)

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
            limit=HEAD_LIMIT,
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
        conn = Connection(reader, writer)
        try:
            await self._serve_connection(conn)
            # Graceful end: every byte was already drained to the kernel, so a
            # plain close sends them and then FIN.
            writer.close()
        except ConnectionError:
            pass
        except Exception:
            logger.exception("FaultServer connection handler failed")
        finally:
            # Cancelled (server stopping) or failed: do not linger.
            if not writer.transport.is_closing():
                conn.abort()

    async def _serve_connection(self, conn: Connection) -> None:
        while True:
            try:
                request = await conn.read_request()
            except BadRequestError as exc:
                body = error_body(exc.message, "invalid_request_error", None)
                await conn.send_json(exc.status, body)
                return
            if request is None:
                return
            await self._routes.dispatch(conn, request)
            if not conn.next_cycle():
                return
