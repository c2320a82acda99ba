"""What one provider API is to the chain: how to send it, read it, check it and cache it.

The chain's core and drivers decide and do everything that is the same for every API
(tiers, breakers, retries, timeouts, hedging, the cache's place in the order, events). What
differs between ``client.chat.completions.create`` and ``client.responses.create`` lives
behind :class:`Endpoint`, one object per API, stateless and shared by every request:

* **sending** an attempt (:meth:`Endpoint.create` / :meth:`Endpoint.acreate`, with the
  keyword arguments :meth:`Endpoint.kwargs` built for one tier);
* **reading** a stream (:meth:`Endpoint.assembler`: one :class:`StreamAssembly` per streamed
  attempt, fed every item the stream :meth:`Endpoint.create` returned yields: chat, the
  chunks as the JSON objects sent; Responses, the SDK's typed events);
* **checking** an answer (:meth:`Endpoint.check` for a non-streamed one;
  :meth:`StreamAssembly.finish` for a streamed one): no truncated answer is ever accepted;
* **showing** it (:meth:`Endpoint.text`, :meth:`Endpoint.fragments`, in the terms of
  :class:`~fallbackchain.ChainEvent`);
* **caching** it (:meth:`Endpoint.cache_key`, :meth:`Endpoint.encode`, :meth:`Endpoint.decode`).

:data:`CHAT` is the chat-completions endpoint every chain uses for ``stream()``,
``complete()`` and ``chain.chat.completions.create``. A second API is another
:class:`Endpoint` handed to ``FallbackChain.stream_request`` / ``complete_request`` (and the
async chain's): nothing else in the chain changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar, Protocol, Self, TypeVar

import openai
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion

from ..cache import cache_key
from . import _chat_wire
from ._assembly import (
    AttemptAssembler,
    Fragment,
    Piece,
    check_completion,
    completion_text,
    whole_fragments,
)

__all__ = [
    "CHAT",
    "ChatEndpoint",
    "Endpoint",
    "StreamAssembly",
    "UsageBilling",
    "attempt_kwargs",
    "check_request",
]

Answer = TypeVar("Answer")
Answer_co = TypeVar("Answer_co", covariant=True)


class StreamAssembly(Protocol[Answer_co]):
    """One streamed attempt's items, gathered into its answer. Used by one driver at a time.

    ``content_seen`` must turn ``True`` with the first item that shows the consumer anything
    (text, a tool-call piece, a refusal, or whatever the API counts as output): the
    first-token timeout stops there, a limited breaker permit reports its first content, and
    a hedge race is won. Items before it (a role, a "created" event) are read but not content.
    """

    content_seen: bool

    def add(self, item: Any) -> Piece | None:
        """Take one item of the attempt's stream; return what it shows, if anything.

        Returns the new text of the answer's main message as a ``str`` (the common case:
        keep it cheap, this runs once per item), or a tuple of
        :class:`~fallbackchain.chain.Fragment` for tool-call pieces, refusal text (and any
        text that came with them), or ``None`` when the item shows nothing.

        Raises :class:`~fallbackchain.MalformedChunkError` for an item that is not of the
        API's stream (the attempt fails; the chain falls back). May raise another
        :class:`~fallbackchain.TierError` for an item that reports a failure mid-stream
        (an error event): the attempt fails with it.
        """
        ...

    def finish(self, *, model: str) -> Answer_co:
        """The whole answer, once the stream has ended (``model``: the request's, if unnamed).

        Raises :class:`~fallbackchain.TruncatedStreamError` when the stream ended without
        its API's sign of completion (chat: a ``finish_reason`` on every choice); the chain
        then treats the attempt as failed, never caches it, and shows a later attempt's answer.
        """
        ...


class Endpoint(Protocol[Answer]):
    """One provider API as the chain sees it. Stateless; one instance serves every request.

    ``Answer`` is the SDK's type of a whole answer (chat: ``ChatCompletion``). A *request*
    below is the caller's keyword arguments as the SDK's ``create`` takes them, with
    ``model`` always present and without ``stream`` and ``timeout`` (the chain sets those
    per attempt). Every method but :meth:`create` and :meth:`acreate` is pure and cheap.
    """

    name: str
    """A short name for logs and traces (``"chat"``, ``"responses"``)."""

    def validate(self, request: Mapping[str, Any]) -> None:
        """Refuse, before anything is sent, a request the API cannot take.

        Raises ``TypeError`` for a keyword the chain sets itself (``stream``) and
        ``ValueError`` for a missing or empty input (chat: ``messages``).
        """
        ...

    def cache_key(self, request: Mapping[str, Any]) -> str | None:
        """The cache key of ``request``: every answer-shaping argument counts, none other.

        ``None`` for a request the API says must never be cached (neither read nor written).

        The same key whichever route answers (a fallback's model does not change it).
        Raises ``TypeError`` when a value has no JSON form: the request is answered live
        and never cached. Keys of different APIs must never collide (use your own prefix
        or include the API's name in the hashed document).
        """
        ...

    def kwargs(
        self, request: Mapping[str, Any], *, model: str, streaming: bool, stream_usage: bool
    ) -> dict[str, Any]:
        """The keyword arguments of one attempt, for :meth:`create` (a new dict).

        ``model``: the tier's model (a fallback's, or the request's own). ``streaming``:
        set the API's ``stream`` flag; a non-streamed attempt must carry no stream-only
        option. ``stream_usage``: the route wants token usage reported on a stream (chat:
        ``stream_options={"include_usage": True}`` unless the caller set its own). The
        chain adds ``timeout`` itself.
        """
        ...

    def create(self, client: openai.OpenAI, kwargs: dict[str, Any]) -> Any:
        """Send one attempt with the sync client (its SDK retries are off).

        Streaming (``kwargs`` from :meth:`kwargs` with ``streaming=True``): return the SDK's
        stream once the response has begun, an object that is iterable over the stream's
        items, has ``close()`` and is a context manager (``openai.Stream``). Otherwise:
        return the whole answer, as the SDK's type of it (checked by :meth:`check`). Let the
        SDK's exceptions through unchanged: the core maps them (``_errors.map_error``).
        """
        ...

    async def acreate(self, client: openai.AsyncOpenAI, kwargs: dict[str, Any]) -> Any:
        """:meth:`create` with the async client.

        Streaming: an ``openai.AsyncStream`` (async iterable, ``await close()``, an async
        context manager). Otherwise the whole answer, as :meth:`create`.
        """
        ...

    def assembler(self) -> StreamAssembly[Answer]:
        """A fresh :class:`StreamAssembly` for one streamed attempt."""
        ...

    def check(self, answer: object) -> Answer:
        """Accept a non-streamed answer, or raise why it is not a whole one.

        Raises :class:`~fallbackchain.MalformedChunkError` for an object of the wrong type
        or shape, :class:`~fallbackchain.TruncatedStreamError` for an answer cut short
        (chat: a choice without ``finish_reason``). Returns ``answer``, typed.
        """
        ...

    def text(self, answer: Answer) -> str:
        """The answer's main text (``ChainResponse.text``); ``""`` when it has none."""
        ...

    def fragments(self, answer: Answer) -> tuple[Fragment, ...]:
        """The whole answer as the events would show it, in order.

        Its text (one ``"content"`` fragment), each tool call whole (``"tool_call"``, with
        index, id and name), its refusal. What the events of a streamed attempt rebuild must
        equal this: the chain compares them when the attempt ends and resets the display if
        they differ.
        """
        ...

    def tokens(self, answer: Answer) -> tuple[int | None, int | None]:
        """Prompt (input) and completion (output) tokens billed, ``None`` where unknown."""
        ...

    def unbilled(self, answer: Answer) -> tuple[Answer, Any]:
        """A copy of a cached answer that bills nothing, and the usage it first reported.

        The copy's usage counts zero tokens (the cached original is never mutated); the
        second item becomes ``ChainResponse.stored_usage`` (``None`` when there was none).
        """
        ...

    def encode(self, answer: Answer) -> Any:
        """What the cache stores for a complete live answer (chat: the ``ChatCompletion``)."""
        ...

    def decode(self, stored: Any) -> Answer:
        """The answer a cache entry holds (what :meth:`encode` gave, as the cache returns it).

        Raises ``TypeError`` or ``ValueError`` for an entry that is not this API's answer:
        the chain then counts it as a miss.
        """
        ...


def check_request(request: Mapping[str, Any], inputs: tuple[str, ...], empty: str) -> None:
    """What every endpoint's :meth:`~Endpoint.validate` refuses.

    ``stream`` (the chain sets it: a :class:`TypeError`), and a request with none of
    ``inputs`` given (a :class:`ValueError` saying ``empty``).
    """
    if "stream" in request:
        raise TypeError("unexpected keyword argument(s): stream")
    if not any(request.get(name) for name in inputs):
        raise ValueError(empty)


def attempt_kwargs(
    request: Mapping[str, Any], *, model: str, streaming: bool, stream_only: tuple[str, ...]
) -> dict[str, Any]:
    """``request`` as one attempt sends it: ``model`` and ``stream`` set.

    Not streaming, without the ``stream_only`` options (the API refuses them on a whole answer).
    """
    kwargs = dict(request)
    kwargs["model"] = model
    kwargs["stream"] = streaming
    if not streaming:
        for name in stream_only:
            kwargs.pop(name, None)
    return kwargs


class _Billed(Protocol):
    """An SDK answer that reports its ``usage`` (``None`` when the provider sent none)."""

    @property
    def usage(self) -> Any: ...

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """Pydantic's copy, with fields replaced."""
        ...


Billed = TypeVar("Billed", bound=_Billed)


class UsageBilling:
    """:meth:`Endpoint.tokens` and :meth:`Endpoint.unbilled` for answers that carry ``usage``.

    An endpoint subclasses it and names, as class attributes, its usage's fields of tokens in
    and out (``billed_in``, ``billed_out``) and a usage that counts none (``nothing_billed``).
    """

    __slots__ = ()

    billed_in: ClassVar[str]
    billed_out: ClassVar[str]
    nothing_billed: ClassVar[object]

    def tokens(self, answer: _Billed) -> tuple[int | None, int | None]:
        usage = answer.usage
        if usage is None:
            return None, None
        return getattr(usage, self.billed_in), getattr(usage, self.billed_out)

    def unbilled(self, answer: Billed) -> tuple[Billed, Any]:
        return answer.model_copy(update={"usage": self.nothing_billed}), answer.usage


_CHAT_OWN = frozenset({"stream", "messages", "model"})


class ChatEndpoint(UsageBilling):
    """``client.chat.completions.create``: chunks, ``ChatCompletion`` answers, ``fc1-`` keys.

    A stream's items are its chunks as the provider sent them (dicts), read by
    :class:`~fallbackchain.chain.AttemptAssembler`; a whole answer is a ``ChatCompletion``.
    """

    __slots__ = ()

    name = "chat"
    billed_in = "prompt_tokens"
    billed_out = "completion_tokens"
    nothing_billed = CompletionUsage(prompt_tokens=0, completion_tokens=0, total_tokens=0)

    def validate(self, request: Mapping[str, Any]) -> None:
        check_request(request, ("messages",), "messages must not be empty")

    def cache_key(self, request: Mapping[str, Any]) -> str:
        params = {k: v for k, v in request.items() if k not in _CHAT_OWN}
        return cache_key(request["model"], request["messages"], params)

    def kwargs(
        self, request: Mapping[str, Any], *, model: str, streaming: bool, stream_usage: bool
    ) -> dict[str, Any]:
        kwargs = attempt_kwargs(
            request, model=model, streaming=streaming, stream_only=("stream_options",)
        )
        if streaming and stream_usage and "stream_options" not in kwargs:
            kwargs["stream_options"] = {"include_usage": True}
        return kwargs

    def create(self, client: openai.OpenAI, kwargs: dict[str, Any]) -> Any:
        return _chat_wire.create(client, kwargs)  # chunks as sent (dicts), not SDK models

    async def acreate(self, client: openai.AsyncOpenAI, kwargs: dict[str, Any]) -> Any:
        return await _chat_wire.acreate(client, kwargs)

    def assembler(self) -> AttemptAssembler:
        return AttemptAssembler()

    def check(self, answer: object) -> ChatCompletion:
        return check_completion(answer)

    def text(self, answer: ChatCompletion) -> str:
        return completion_text(answer)

    def fragments(self, answer: ChatCompletion) -> tuple[Fragment, ...]:
        return whole_fragments(answer)

    def encode(self, answer: ChatCompletion) -> ChatCompletion:
        return answer

    def decode(self, stored: Any) -> ChatCompletion:
        if not isinstance(stored, ChatCompletion):
            raise TypeError(f"not a chat completion: {type(stored).__name__}")
        return stored


CHAT: Endpoint[ChatCompletion] = ChatEndpoint()
"""The chat-completions endpoint (``stream()``, ``complete()``, ``chain.chat``)."""
