"""An OpenAI-compatible chat-completions server that misbehaves on cue.

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

* **Standard library only.** The server is an asyncio HTTP/1.1 server running
  its own event loop in a daemon thread; it serves sync and async clients
  alike, holds thousands of concurrent streams, and supports keep-alive,
  ``Connection: close`` and ``Content-Length`` (or chunked) request bodies.
* **Routes.** ``POST /v1/chat/completions`` (``"stream": true`` or not, with
  ``stream_options.include_usage`` honoured) and ``GET /v1/models``. Any other
  route gets a 404 and an unparsable body a 400, both with OpenAI-shaped JSON
  error bodies. Every response carries an ``x-request-id`` header.
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
* **Scripted faults.** :class:`Fault` values (``ok``, ``status``, ``drop``,
  ``early_end``, ``stall``, ``slow_first_byte``, ``sse_error``, ``malformed``,
  ``reset``, ``finish``) are queued with :meth:`FaultServer.push` and matched
  in FIFO order, filtered on streaming vs. non-streaming;
  :attr:`FaultServer.default` applies when no rule matches.
* **Observation.** :attr:`FaultServer.requests` records the newest chat
  requests (1,000 by default, ``max_recorded``) with the fault each got;
  :attr:`FaultServer.counts` and :attr:`FaultServer.fault_counts` count every
  one exactly, in constant memory. Scripting and observation are thread-safe.
* **Clean shutdown.** :meth:`FaultServer.stop` is idempotent, aborts open
  connections (stalled ones included) and joins the thread.

Run ``python -m fallbackchain.testing --port 8000`` for a standalone server.
"""

from ._faults import Answer, Fault, FaultKind, ToolCall
from ._server import DEFAULT_MODELS, FaultServer, RecordedRequest, Responder

__all__ = [
    "DEFAULT_MODELS",
    "Answer",
    "Fault",
    "FaultKind",
    "FaultServer",
    "RecordedRequest",
    "Responder",
    "ToolCall",
]
