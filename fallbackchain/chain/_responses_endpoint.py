"""The Responses API as the chain sees it: :class:`ResponsesEndpoint` (``RESPONSES``).

One stateless object implementing :class:`~fallbackchain.chain.Endpoint` for
``client.responses.create``; the chain's drivers do the rest (tiers, breakers, retries,
fallbacks, the cache), exactly as for chat. What is particular to this API:

* **Sending.** A streamed attempt is ``responses.create(stream=True)``; for a background
  request (``background=True``, not ``store=False``) the SDK's stream is wrapped in a
  :class:`~fallbackchain.chain.ResumingStream`, which resumes a dropped stream with
  ``responses.retrieve(id, stream=True, starting_after=N)`` instead of generating again. A
  non-streamed attempt is sent in the foreground (``background`` and ``stream_options`` are
  left out): the chain returns finished answers, never a queued one.
* **Completeness.** Only ``status == "completed"`` is a whole answer (see
  :class:`~fallbackchain.chain.ResponseAssembler` for a stream): ``incomplete`` is a
  :class:`~fallbackchain.chain.ResponseIncompleteError`, ``failed`` a
  :class:`~fallbackchain.StreamEventError`, ``queued``/``in_progress``/``cancelled`` a
  :class:`~fallbackchain.TruncatedStreamError`. None is ever cached.
* **Showing.** The text is ``Response.output_text``; each ``function_call`` item is a tool
  call (its ``call_id``, ``name``, ``arguments``); refusal parts are refusal text.
  Reasoning items and other output items are in the ``Response`` but not in the events.
* **Caching.** Keys: :func:`~fallbackchain.chain.responses_cache_key`
  (``conversation`` requests are not cached). The cache stores chat completions, so a
  ``Response`` is stored in an envelope: a ``ChatCompletion`` whose message is the
  response's text (so ``cache export`` stays readable) with the whole ``Response`` under
  its ``fallbackchain_response`` field. :meth:`ResponsesEndpoint.decode` refuses an entry
  without one.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import openai
from openai.types.chat import ChatCompletion
from openai.types.responses import Response, ResponseUsage

from .._errors import MalformedChunkError, StreamEventError, TruncatedStreamError
from ._assembly import Fragment
from ._endpoint import Endpoint, UsageBilling, attempt_kwargs, check_request
from ._responses_assembly import (
    ANSWERED_INCOMPLETE,
    ResponseAssembler,
    ResponseIncompleteError,
    error_code,
)
from ._responses_keys import responses_cache_key
from ._responses_resume import CANCEL_TIMEOUT, AsyncResumingStream, ResumingStream

__all__ = ["ENVELOPE_FIELD", "RESPONSES", "ResponsesEndpoint", "resumable"]

ENVELOPE_FIELD: Final = "fallbackchain_response"
"""The field of a cached ``ChatCompletion`` envelope that holds the whole ``Response``."""

_OWN: Final = frozenset({"model", "stream"})
_STREAM_ONLY: Final = ("stream_options", "background")
_INPUTS: Final = ("input", "prompt", "previous_response_id", "conversation")
_NOTHING_BILLED: Final = ResponseUsage(  # every field the SDK type requires, zero
    input_tokens=0,
    input_tokens_details={"cached_tokens": 0, "cache_write_tokens": 0},  # type: ignore[arg-type]
    output_tokens=0,
    output_tokens_details={"reasoning_tokens": 0},  # type: ignore[arg-type]
    total_tokens=0,
)


def resumable(kwargs: Mapping[str, Any]) -> bool:
    """True for a request whose stream can be resumed: in the background and stored."""
    return kwargs.get("background") is True and kwargs.get("store") is not False


def _retrieve_kwargs(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """What a ``retrieve`` that resumes an attempt keeps of it: its timeout and transport."""
    keep = ("timeout", "extra_headers", "extra_query")
    return {name: kwargs[name] for name in keep if name in kwargs}


class ResponsesEndpoint(UsageBilling):
    """``client.responses.create``: typed events, ``Response`` answers, ``fc1-`` keys."""

    __slots__ = ()

    name = "responses"
    billed_in = "input_tokens"
    billed_out = "output_tokens"
    nothing_billed = _NOTHING_BILLED

    def validate(self, request: Mapping[str, Any]) -> None:
        check_request(request, _INPUTS, "input must not be empty")

    def cache_key(self, request: Mapping[str, Any]) -> str | None:
        params = {k: v for k, v in request.items() if k not in _OWN}
        return responses_cache_key(request["model"], params)

    def kwargs(
        self, request: Mapping[str, Any], *, model: str, streaming: bool, stream_usage: bool
    ) -> dict[str, Any]:
        # stream_usage: a Responses stream always reports usage in response.completed
        return attempt_kwargs(request, model=model, streaming=streaming, stream_only=_STREAM_ONLY)

    def create(self, client: openai.OpenAI, kwargs: dict[str, Any]) -> Any:
        stream = client.responses.create(**kwargs)
        if not kwargs.get("stream") or not resumable(kwargs):
            return stream
        more = _retrieve_kwargs(kwargs)

        def reopen(response_id: str, after: int) -> Any:
            return client.responses.retrieve(response_id, stream=True, starting_after=after, **more)

        def cancel(response_id: str) -> object:
            return client.responses.cancel(response_id, timeout=CANCEL_TIMEOUT)

        return ResumingStream(stream, reopen, cancel)

    async def acreate(self, client: openai.AsyncOpenAI, kwargs: dict[str, Any]) -> Any:
        stream = await client.responses.create(**kwargs)
        if not kwargs.get("stream") or not resumable(kwargs):
            return stream
        more = _retrieve_kwargs(kwargs)

        async def reopen(response_id: str, after: int) -> Any:
            return await client.responses.retrieve(
                response_id, stream=True, starting_after=after, **more
            )

        async def cancel(response_id: str) -> object:
            return await client.responses.cancel(response_id, timeout=CANCEL_TIMEOUT)

        return AsyncResumingStream(stream, reopen, cancel)

    def assembler(self) -> ResponseAssembler:
        return ResponseAssembler()

    def check(self, answer: object) -> Response:
        if not isinstance(answer, Response):
            raise MalformedChunkError(f"expected a Response, got {type(answer).__name__}")
        status = answer.status
        if status in (None, "completed"):
            return answer
        if status == "incomplete":
            details = answer.incomplete_details
            reason = details.reason if details is not None else None
            if reason in ANSWERED_INCOMPLETE:
                return answer  # cut where the request asked: its answer (see the constant)
            raise ResponseIncompleteError(reason, answer)
        if status == "failed":
            code = answer.error.code if answer.error is not None else None
            raise StreamEventError(f"response.failed: {error_code(code)}")
        raise TruncatedStreamError(f"response not finished: status {error_code(status)}")

    def text(self, answer: Response) -> str:
        return answer.output_text

    def fragments(self, answer: Response) -> tuple[Fragment, ...]:
        text = answer.output_text
        shown = [Fragment("content", text)] if text else []
        refusal: list[str] = []
        calls = 0
        for item in answer.output:
            if item.type == "function_call":
                shown.append(Fragment("tool_call", item.arguments, calls, item.call_id, item.name))
                calls += 1
            elif item.type == "message":
                refusal.extend(part.refusal for part in item.content if part.type == "refusal")
        if refusal:
            shown.append(Fragment("refusal", "".join(refusal)))
        return tuple(shown)

    def encode(self, answer: Response) -> ChatCompletion:
        usage = answer.usage
        envelope: dict[str, Any] = {
            "id": answer.id,
            "object": "chat.completion",
            "created": int(answer.created_at),
            "model": answer.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer.output_text},
                    "finish_reason": _finish_reason(answer),
                }
            ],
            ENVELOPE_FIELD: answer.model_dump(mode="json", exclude_unset=True),
        }
        if usage is not None:
            envelope["usage"] = {
                "prompt_tokens": usage.input_tokens,
                "completion_tokens": usage.output_tokens,
                "total_tokens": usage.total_tokens,
            }
        return ChatCompletion.model_validate(envelope)

    def decode(self, stored: Any) -> Response:
        extra = getattr(stored, "model_extra", None) or {}
        body = extra.get(ENVELOPE_FIELD) if isinstance(extra, dict) else None
        if not isinstance(body, dict):
            raise TypeError("not a cached Response")
        return Response.model_validate(body)



def _finish_reason(answer: Response) -> str:
    """The envelope's finish reason: the cache keeps what chat's would (not content_filter)."""
    details = answer.incomplete_details if answer.status == "incomplete" else None
    if details is None:
        return "stop"
    return "content_filter" if details.reason == "content_filter" else "length"

RESPONSES: Endpoint[Response] = ResponsesEndpoint()
"""The Responses endpoint (``chain.responses.create``)."""
