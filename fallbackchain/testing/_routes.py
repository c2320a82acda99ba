"""The routes: what each request to the fault server gets, fault included.

:class:`Routes` parses a request's JSON, rejects what the real API rejects with
an OpenAI-shaped 4xx, admits the rest through the :class:`~._rules.Rulebook`
(which picks its fault), renders the answer (``_chat``, ``_responses``) and sends
it through ``_delivery``, broken as the fault says.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from ._chat import chat_frames, chat_interrupt, completion_for
from ._delivery import before_answer, send_body, send_sse
from ._faults import Answer, Fault
from ._http import Connection, HttpRequest, error_body
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
from ._rules import RecordedRequest, Route, Rulebook
from ._text import dumps, prompt_tokens

__all__ = ["Routes"]

logger = logging.getLogger("fallbackchain.testing")

_CHAT_PATH: Final = "/v1/chat/completions"
_MODELS_PATH: Final = "/v1/models"
_RESPONSES_PATH: Final = "/v1/responses"


def _missing(param: str) -> bytes:
    return error_body(
        f"Missing required parameter: '{param}'.",
        "invalid_request_error",
        "missing_required_parameter",
        param,
    )


def _json_object(request: HttpRequest) -> dict[str, Any] | bytes:
    """The request's JSON object body, or the error body of the 400 to answer."""
    try:
        payload = json.loads(request.body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        message = f"We could not parse the JSON body of your request. ({exc})"
        return error_body(message, "invalid_request_error", None)
    if not isinstance(payload, dict):
        return error_body("The request body must be a JSON object.", "invalid_request_error", None)
    return payload


def _create_error(payload: Mapping[str, Any]) -> bytes | None:
    """The 400 body a Responses create request earns, if any."""
    given = payload.get("input")
    if not isinstance(payload.get("model"), str):
        return _missing("model")
    if given is not None and not isinstance(given, str | list):
        return error_body(
            "Invalid type for 'input': expected a string or an array of input items.",
            "invalid_request_error",
            "invalid_type",
            "input",
        )
    if payload.get("background") is True and payload.get("store") is False:
        return error_body(
            "Background responses must be stored: set store=true (the default).",
            "invalid_request_error",
            None,
            "store",
        )
    return None


def _starting_after(request: HttpRequest) -> tuple[bool, int | None, bytes | None]:
    """``(stream, starting_after, error body)`` from a retrieval's query string."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.target).query)
    stream = query.get("stream", [""])[-1].lower() == "true"
    text = query.get("starting_after", [""])[-1]
    if not text:
        return stream, None, None
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        message = f"Invalid 'starting_after': expected an integer >= 0, got {text!r}."
        body = error_body(message, "invalid_request_error", "invalid_value", "starting_after")
        return stream, None, body
    return stream, value, None


class Routes:
    """Serves one request at a time on a connection; lives on the server's event loop.

    ``reply(messages, model)`` gives the :class:`Answer` for a prompt (it may raise:
    the client then gets a 500).
    """

    def __init__(
        self,
        book: Rulebook,
        reply: Callable[[list[Any], str], Answer],
        models: Sequence[str],
    ) -> None:
        self._book = book
        self._reply_for = reply
        self._models = tuple(models)
        self._stored = ResponseStore()

    async def dispatch(self, conn: Connection, request: HttpRequest) -> None:
        """Serve one request (the connection's state says whether another may follow)."""
        path = request.path.rstrip("/") or "/"
        response_id = path.removeprefix(_RESPONSES_PATH + "/")
        if request.method == "POST" and path == _CHAT_PATH:
            await self._chat(conn, request)
        elif request.method == "POST" and path == _RESPONSES_PATH:
            await self._responses_create(conn, request)
        elif request.method == "GET" and response_id != path and "/" not in response_id:
            await self._responses_retrieve(conn, request, response_id)
        elif request.method == "POST" and response_id.endswith("/cancel"):
            await self._responses_cancel(conn, request, response_id.removesuffix("/cancel"))
        elif request.method == "GET" and path == _MODELS_PATH:
            created = int(time.time())
            data = [
                {"id": model, "object": "model", "created": created, "owned_by": "fallbackchain"}
                for model in self._models
            ]
            await conn.send_json(200, dumps({"object": "list", "data": data}))
        else:
            message = f"Invalid URL ({request.method} {request.path})"
            body = error_body(message, "invalid_request_error", "unknown_url")
            await conn.send_json(404, body)

    def _admit(
        self,
        conn: Connection,
        request: HttpRequest,
        body: dict[str, Any],
        stream: bool,
        route: Route,
    ) -> tuple[Fault, str]:
        """Pick the request's fault and count it active until its response ends."""
        request_id = f"req_{uuid.uuid4().hex}"
        record = RecordedRequest(
            method=request.method,
            path=request.path,
            headers=dict(request.headers),
            body=body,
            stream=stream,
            fault=Fault.ok(),
            request_id=request_id,
            route=route,
        )
        fault = self._book.admit(record)
        conn.on_request_done = self._book.done
        return fault, request_id

    async def _reply(
        self, conn: Connection, messages: list[Any], model: str, request_id: str
    ) -> Answer | None:
        """The answer to give; ``None`` when the responder failed (a 500 was sent)."""
        try:
            return self._reply_for(messages, model)
        except Exception as exc:
            logger.exception("FaultServer responder failed")
            body = error_body(f"responder failed: {exc!r}", "server_error", None)
            await conn.send_json(500, body, request_id=request_id)
            return None

    # -- chat completions ---------------------------------------------------------

    async def _chat(self, conn: Connection, request: HttpRequest) -> None:
        payload = _json_object(request)
        if isinstance(payload, bytes):
            await conn.send_json(400, payload)
            return
        model = payload.get("model")
        messages = payload.get("messages")
        if not isinstance(model, str) or not isinstance(messages, list):
            param = "model" if not isinstance(model, str) else "messages"
            await conn.send_json(400, _missing(param))
            return
        stream = payload.get("stream") is True
        fault, request_id = self._admit(conn, request, payload, stream, "chat.completions")
        try:
            if fault.kind == "failed":  # chat has no failed state: an error mid-stream
                fault = Fault.sse_error(
                    fault.after_chunks, fault.message or "", fault.error_code or "server_error"
                )
            if not await before_answer(conn, fault, request_id, stream):
                return
            answer = await self._reply(conn, messages, model, request_id)
            if answer is None:
                return
            completion = completion_for(
                answer, fault, payload=payload, model=model, messages=messages,
                request_id=request_id,
            )  # fmt: skip
            if stream:
                frames, content = chat_frames(completion)
                await send_sse(
                    conn, fault, frames=frames, content=content,
                    interrupt=lambda _: chat_interrupt(fault), request_id=request_id,
                )  # fmt: skip
            else:
                await send_body(conn, fault, dumps(completion.full()), request_id)
        finally:
            conn.request_done()

    # -- responses ----------------------------------------------------------------

    async def _responses_create(self, conn: Connection, request: HttpRequest) -> None:
        payload = _json_object(request)
        if isinstance(payload, bytes):
            await conn.send_json(400, payload)
            return
        problem = _create_error(payload)
        if problem is not None:
            await conn.send_json(400, problem)
            return
        model = str(payload["model"])
        stream = payload.get("stream") is True
        fault, request_id = self._admit(conn, request, payload, stream, "responses.create")
        try:
            if not await before_answer(conn, fault, request_id, stream):
                return
            messages = input_messages(payload)
            answer = await self._reply(conn, messages, model, request_id)
            if answer is None:
                return
            script = ResponseScript(
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
                await _send_events(conn, fault, rendered, 0, request_id)
            else:
                whole = queued(script) if script.background else rendered.final
                await send_body(conn, fault, dumps(whole), request_id)
        finally:
            conn.request_done()

    async def _responses_retrieve(
        self, conn: Connection, request: HttpRequest, response_id: str
    ) -> None:
        stream, starting_after, problem = _starting_after(request)
        script = self._stored.get(response_id)
        status = 400
        if problem is None and script is None:
            message = f"Response with id '{response_id}' not found."
            status, problem = 404, error_body(message, "invalid_request_error", None)
        elif problem is None and stream and script is not None and not script.background:
            message = "Only background responses (background=true) can be streamed again."
            problem = error_body(message, "invalid_request_error", None, "stream")
        if problem is not None or script is None:  # (no script always came with a problem)
            await conn.send_json(status, problem or b"")
            return
        body = {"response_id": response_id, "stream": stream, "starting_after": starting_after}
        fault, request_id = self._admit(conn, request, body, stream, "responses.retrieve")
        try:
            if not await before_answer(conn, fault, request_id, stream):
                return
            if fault.kind in RESPONSE_SHAPING_KINDS:
                script = dataclasses.replace(script, ending=fault)
            rendered = render(script)
            if stream:
                first = 0 if starting_after is None else starting_after + 1
                await _send_events(conn, fault, rendered, first, request_id)
            else:
                await send_body(conn, fault, dumps(rendered.final), request_id)
        finally:
            conn.request_done()


    async def _responses_cancel(
        self, conn: Connection, request: HttpRequest, response_id: str
    ) -> None:
        """``POST /v1/responses/{id}/cancel``: a background response is cancelled, once."""
        script = self._stored.get(response_id)
        if script is None or not script.background:
            message = (
                f"Response with id '{response_id}' not found."
                if script is None
                else "Only background responses (background=true) can be cancelled."
            )
            status = 404 if script is None else 400
            await conn.send_json(status, error_body(message, "invalid_request_error", None))
            return
        body = {"response_id": response_id}
        fault, request_id = self._admit(conn, request, body, False, "responses.cancel")
        try:
            if not await before_answer(conn, fault, request_id, False):
                return
            self._stored.cancel(response_id)
            await send_body(conn, fault, dumps(script.response("cancelled")), request_id)
        finally:
            conn.request_done()

async def _send_events(
    conn: Connection, fault: Fault, rendered: Rendered, first: int, request_id: str
) -> None:
    """Stream a rendered response's events from sequence number ``first`` on."""
    frames = [sse_event(event) for event in rendered.events[first:]]

    def interrupt(index: int) -> bytes:
        if fault.kind == "malformed":
            return b"event: response.output_text.delta\ndata: {this is not json\n\n"
        message = fault.message or "upstream overloaded"
        return error_event(first + index, message, fault.error_code)

    content = rendered.content[first:]
    await send_sse(
        conn, fault, frames=frames, content=content, interrupt=interrupt, request_id=request_id
    )
