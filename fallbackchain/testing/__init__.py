"""An OpenAI-compatible server (chat completions and Responses) that misbehaves on cue.

:class:`FaultServer` speaks enough of the OpenAI HTTP API for the real
``openai`` client (``openai.OpenAI`` / ``openai.AsyncOpenAI`` with
``base_url=server.base_url``) to talk to it over loopback, and lets a test
script exactly how each request goes wrong::

    import openai
    from fallbackchain.testing import Fault, FaultServer

    with FaultServer(words=12) as server:
        server.push(Fault.status(503, retry_after=1), times=2)  # next 2 requests: 503
        server.push(Fault.drop(after_chunks=3), stream=True)    # then a dropped stream
        client = openai.OpenAI(base_url=server.base_url, api_key="test", max_retries=0)
        ...
        assert server.counts["total"] == 3

What you can rely on:

* **No framework.** The server is an asyncio HTTP/1.1 server running its own
  event loop in a daemon thread, with ``h11`` (already installed with the
  ``openai`` SDK's transport) parsing requests and framing responses; it serves
  sync and async clients alike, holds thousands of concurrent streams, and
  supports keep-alive, ``Connection: close`` and ``Content-Length`` (or chunked)
  request bodies. Faults still own the bytes: a reset, a half body or a stream
  without its last chunk is sent exactly as scripted.
* **Routes.** ``POST /v1/chat/completions`` (``"stream": true`` or not, with
  ``stream_options.include_usage`` honoured), ``POST /v1/responses``,
  ``GET /v1/responses/{id}`` (``?stream=true&starting_after=N``) and
  ``GET /v1/models``. Any other route gets a 404 and an unparsable body a 400,
  both with OpenAI-shaped JSON error bodies. Every response carries an
  ``x-request-id`` header.
* **Deterministic answers.** The answer is ``"Answer from {model}:"`` followed
  by ``words`` pseudo-words derived from a hash of the last user message, so
  the same prompt always gets the same text; :meth:`FaultServer.answer_for`
  returns it, and ``FaultServer(responder=...)`` replaces it; a responder may
  return an :class:`Answer` to script tool calls (``ToolCall``, streamed as
  OpenAI does: a header chunk with id, type and name, then argument pieces;
  ``finish_reason`` ``"tool_calls"``) or a refusal (``delta.refusal``). Streams send a
  role chunk, one chunk per word (with its leading space), a ``finish_reason``
  chunk, an optional usage chunk, then ``data: [DONE]``; each SSE event is its
  own HTTP chunk. Sampling parameters such as ``max_tokens`` or ``n`` are
  accepted and ignored.
* **The Responses API.** ``client.responses.create(...)`` gets the same answer
  as chat for the same prompt (``instructions`` count as a system message,
  ``input`` as the user's). Not streamed: a ``Response``. Streamed: typed events
  framed ``event: TYPE`` / ``data: JSON``, numbered by ``sequence_number`` from
  0: ``response.created``, ``response.in_progress``, then per output item
  ``response.output_item.added``, for the message's text
  ``response.content_part.added``, one ``response.output_text.delta`` per word,
  ``response.output_text.done``, ``response.content_part.done`` (a refusal the
  same with ``response.refusal.delta``/``.done``), for each tool call a
  ``function_call`` item with ``response.function_call_arguments.delta``/``.done``,
  then ``response.output_item.done``; last ``response.completed``. No
  ``[DONE]``. Every response not created with ``store=False`` is kept (the newest
  1,000) for ``client.responses.retrieve(id)``. ``background=True`` makes a
  non-streamed create answer ``status: "queued"`` at once, the whole response
  being retrievable right after; a background response can also be streamed
  again, whole or with ``starting_after=N`` (the events after sequence number
  ``N``, identical to the first time), which is how a dropped stream resumes.
  Streaming retrieval of a response that is not a background one is a 400.
* **Scripted faults.** :class:`Fault` values (``ok``, ``status``, ``drop``,
  ``early_end``, ``stall``, ``slow_first_byte``, ``sse_error``, ``malformed``,
  ``reset``, ``finish``, ``failed``, ``incomplete``, ``sparse``) are queued with
  :meth:`FaultServer.push` and matched in FIFO order, filtered on streaming vs.
  non-streaming and on the API (``api="chat"`` or ``"responses"``);
  :attr:`FaultServer.default` applies when no rule matches. Every Responses
  request (creation or retrieval) takes a rule like a chat request does, and a
  fault means the same there: ``status`` an HTTP error (``Retry-After``
  included), ``drop``/``stall``/``early_end``/``malformed`` cut, pause, end
  early or corrupt the stream after ``after_chunks`` content events (text,
  refusal and arguments deltas), ``sse_error`` sends an ``error`` event
  (``ResponseErrorEvent``) and ends, ``failed`` ends with ``response.failed``
  (``error`` set), ``incomplete`` with ``response.incomplete``
  (``incomplete_details.reason``), ``finish("length")``/``("content_filter")``
  make it incomplete too. ``failed``/``incomplete`` shape the response itself,
  so a retrieval shows them; the other faults touch only the one HTTP response,
  so a background response dropped mid-stream is still whole when retrieved.
  A ``status`` or ``reset`` fault on a create stores nothing. On chat,
  ``failed`` acts as ``sse_error`` and ``incomplete`` cuts the answer with
  ``finish_reason`` ``"length"`` (or ``"content_filter"``). ``sparse`` (chat
  only) leaves ``object``, ``created`` and ``system_fingerprint`` out of the
  answer, as some OpenAI-compatible servers do.
* **Observation.** :attr:`FaultServer.requests` records the newest requests
  that took a rule (1,000 by default, ``max_recorded``) with the fault each got
  and its ``route``; :attr:`FaultServer.counts`, :attr:`FaultServer.fault_counts`
  and :attr:`FaultServer.route_counts` count every one exactly, in constant
  memory. Scripting and observation are thread-safe.
* **Clean shutdown.** :meth:`FaultServer.stop` is idempotent, aborts open
  connections (stalled ones included) and joins the thread.

Run ``python -m fallbackchain.testing --port 8000`` for a standalone server, and
``python -m fallbackchain.testing demo`` (the same as ``fallbackchain demo``) for
the resilience story: :func:`run_demo` drives a real chain against two fault
servers and returns a :class:`DemoResult` (these load on first use).
"""

from typing import TYPE_CHECKING

from .._lazy import loaded_on_first_use
from ._faults import Answer, Fault, FaultKind, ToolCall
from ._server import DEFAULT_MODELS, FaultServer, RecordedRequest, Responder

if TYPE_CHECKING:
    from ._demo import DemoResult, Tally, run_demo

__all__ = [
    "DEFAULT_MODELS",
    "Answer",
    "DemoResult",
    "Fault",
    "FaultKind",
    "FaultServer",
    "RecordedRequest",
    "Responder",
    "Tally",
    "ToolCall",
    "run_demo",
]

# The demo drives a whole chain: it (and the chain) load only when asked for.
__getattr__ = loaded_on_first_use(
    globals(), {"DemoResult": "._demo", "Tally": "._demo", "run_demo": "._demo"}
)
