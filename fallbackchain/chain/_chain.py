"""What both chains share: set-up, request preparation, the surface alike in both.

Set-up is the tiers, breakers, clients and cache; the shared surface is ``stream()``,
``stream_request()``, ``cache_key()`` and the breaker views; :class:`OpenedStream` is a
streamed attempt read up to its first content.

:class:`~fallbackchain.FallbackChain` (``_sync``) and :class:`~fallbackchain.AsyncFallbackChain`
(``_async``) are drivers of one decision core (``_flow`` over ``_core.RequestRun``): they
differ only in how they do the I/O its steps name (``sleep`` vs ``await``) and how they bound
a wait (the SDK's per-read timeout plus a check after each chunk in threads; a watchdog timer
re-armed per chunk in asyncio).
"""

from __future__ import annotations

import logging
import random as _random
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Self, TypeVar, Unpack, cast

import openai

from .._backends import gate_store, response_cache
from .._config import ChainConfig, OpenAIConfig, RouteConfig
from .._errors import ChainClosedError, StreamNotFinishedError
from .._hooks import BreakerChanged, Hooks, RequestStarted, next_request_id
from .._redact import mask_url
from .._results import ChainResponse
from .._timing import Clock, SystemClock, TimeSource, time_source
from ..breaker import BreakerGate, BreakerState
from ._assembly import Piece
from ._call_options import CacheUse, CallKeywords, CallOptions, call_options
from ._core import RequestRun
from ._endpoint import CHAT, Endpoint, StreamAssembly
from ._flow import Steps, request_flow
from ._request import Request, ResponseSlot, prepare
from ._steps import Tier

if TYPE_CHECKING:
    from ..cache import Cache, CachedAnswer  # the cache's modules load when a chain builds one

__all__ = ["ChainBase", "ChainStreamBase", "OpenedStream", "make_clients"]

logger = logging.getLogger("fallbackchain")


StreamT = TypeVar("StreamT")
ClientT = TypeVar("ClientT", openai.OpenAI, openai.AsyncOpenAI)
SleepT = TypeVar("SleepT")
AnswerT = TypeVar("AnswerT")
ChatT = TypeVar("ChatT")
ResponsesT = TypeVar("ResponsesT")


@dataclass(slots=True)
class OpenedStream:
    """A streamed attempt read up to its first content: what was read, and how to go on."""

    stream: Any  # the SDK's Stream or AsyncStream, entered
    items: Any  # its item iterator (sync or async)
    assembler: StreamAssembly[Any]
    after: float  # when the last read ended
    pieces: list[Piece] = field(default_factory=list)  # read, not shown yet
    ended: bool = False  # the stream ended before any content

    def finish(self, model: str) -> Any:
        """The assembled answer, carrying the stream's ``x-request-id`` as ``_request_id``.

        As the SDK's whole answers carry theirs: what a caller quotes to the provider's
        support. ``None`` for a stream without an HTTP response (a stand-in's).
        """
        answer = self.assembler.finish(model=model)
        if isinstance(answer, openai.BaseModel):
            try:
                request_id = self.stream.response.headers.get("x-request-id")
            except (AttributeError, TypeError):  # no HTTP response: a stand-in's stream
                request_id = None
            answer._request_id = request_id if isinstance(request_id, str) else None
        return answer


EventsT = TypeVar("EventsT")


class ChainStreamBase(Generic[EventsT]):
    """What both chains' streams hold: the driver's events and the slot the answer lands in."""

    def __init__(self, events: EventsT, slot: ResponseSlot) -> None:
        self._events = events
        self._slot = slot

    @property
    def response(self) -> ChainResponse:
        """The whole answer; raises :class:`StreamNotFinishedError` before the end."""
        if self._slot.response is None:
            raise StreamNotFinishedError("iterate the stream to its end before reading .response")
        return self._slot.response


class ChainBase(Generic[StreamT, ClientT, SleepT, AnswerT, ChatT, ResponsesT]):
    """Set-up and surface shared by both chains.

    A driver names its stream type (``StreamT``), its SDK client type (``ClientT``), its
    sleep (``SleepT``), what ``complete()`` returns (``AnswerT``: the response, or a
    coroutine of it) and its two drop-in surfaces (``ChatT``, ``ResponsesT``, named in
    :attr:`_SURFACES`), and implements :meth:`_stream` and :meth:`_answer`.
    """

    _SURFACES: ClassVar[tuple[str, str]]
    """The drop-in surfaces' class names, in ``_dropin`` and ``_responses_dropin``."""

    def __init__(
        self,
        config: ChainConfig | None = None,
        *,
        client: ClientT | None = None,
        fallback_clients: Mapping[str, ClientT] | None = None,
        cache: Cache | None = None,
        clock: TimeSource | Clock | None = None,
        sleep: SleepT | None = None,
        random: Callable[[], float] | None = None,
        listeners: Sequence[object] = (),
    ) -> None:
        """A chain over ``config`` (``None``: the defaults).

        ``client`` may be your own SDK client; the chain uses a copy with the SDK's own
        retries switched off (stacked retries multiply) and never closes yours.
        ``fallback_clients``: a client per fallback name. ``cache``: a cache to use instead
        of the one the config describes (then the chain never closes it). ``clock``,
        ``sleep`` and ``random`` are injectable for tests; ``listeners`` get the hooks' events.
        """
        config = config or ChainConfig()
        self.config = config
        self._hooks = Hooks(listeners)
        self._time = time_source(clock)
        # every interval; stored stamps use the wall clock. The system's is read per chunk:
        # bound straight to time.monotonic (SystemClock's method only wraps it).
        self._clock: Clock = (
            time.monotonic if type(self._time) is SystemClock else self._time.monotonic
        )
        self._random = random or _random.random

        def gate(name: str, route: RouteConfig) -> BreakerGate:
            # A limited permit holds its slot until its first content (or its end): what that
            # may take.
            longest = max(route.first_token_timeout, route.idle_timeout, route.timeout)
            return BreakerGate(
                name,
                fail_max=route.fail_max,
                reset_timeout=route.reset_timeout,
                clock=self._clock,
                store=gate_store(config, name),
                probe_lease=config.retry.deadline + route.timeout,
                limited_lease=longest + 1.0,
                on_state_change=self._breaker_changed,
            )

        self._tiers = tuple(
            Tier(name, streams, gate(name, route), route)
            for route in config.routes()
            for name, streams in route.tiers
        )
        self._whole_first = not config.openai.complete_streams
        self._gates = {tier.name: tier.gate for tier in self._tiers}
        self.cache = cache if cache is not None else response_cache(config, self._time.wall)
        self._owns_cache = cache is None
        # A request's cache key is work (~10 µs): skipped when no cache and no listener needs it.
        self._caching = cache is not None or config.cache.enabled
        self._closed = False
        clients, owned = make_clients(config, self._client_type(), client, fallback_clients)
        self._clients: dict[str, ClientT] = clients
        self._owned_clients: list[ClientT] = owned
        self._sleep: SleepT = sleep or self._default_sleep()

    # -- what a driver implements -----------------------------------------------------------

    def _client_type(self) -> type[ClientT]:
        raise NotImplementedError

    def _default_sleep(self) -> SleepT:
        raise NotImplementedError

    def _stream(self, request: Request) -> StreamT:
        """The stream object that drives ``request`` when iterated."""
        raise NotImplementedError

    def _answer(self, prepare: Callable[[], Request]) -> AnswerT:
        """The whole answer to the request ``prepare`` gives (prepared when the call runs)."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise ChainClosedError(f"this {type(self).__name__} is closed")

    def _is_closed(self) -> bool:
        return self._closed

    def _breaker_changed(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self._hooks.emit(BreakerChanged(name, old, new))

    def _start(self, request: Request, slot: ResponseSlot) -> tuple[RequestRun, Steps]:
        """A new run of ``request`` (its clock starts now) and the steps of its flow."""
        options = request.options
        run = RequestRun(
            self._tiers,
            self.config,
            clock=self._clock,
            random=self._random,
            hooks=self._hooks,
            request_id=next_request_id(),
            whole_first=request.whole_first,
            deadline=options.deadline if options else None,
            max_attempts=options.max_attempts if options else None,
            routes=options.routes if options else None,
        )
        if self._hooks:
            started = RequestStarted(
                run.request_id, request.key, request.model, True, request.endpoint.name
            )
            self._hooks.emit(started)
        flow = request_flow(
            run,
            request,
            slot,
            hooks=self._hooks,
            closed=self._is_closed,
            check_open=self._check_open,
        )
        return run, Steps(flow)

    def __repr__(self) -> str:
        cfg = self.config.openai
        return (
            f"<{type(self).__name__} model={cfg.model!r} base_url={mask_url(cfg.base_url)!r} "
            f"breakers={self.breaker_states()}>"
        )

    def breaker_states(self) -> dict[str, BreakerState]:
        """Each live tier's breaker state: ``"closed"``, ``"open"`` or ``"half-open"``."""
        return {name: gate.state for name, gate in self._gates.items()}

    def cache_key(
        self, messages: Sequence[Any], model: str | None = None, **params: Any
    ) -> str | None:
        """The cache key this chain uses for that request (``None`` if it cannot be cached).

        The same key whichever tier answers; transport-only options do not change it.
        """
        return self._prepare(messages, model, params).key

    def request_key(self, endpoint: Endpoint[Any], request: Mapping[str, Any]) -> str | None:
        """The cache key of ``request`` (an ``endpoint`` request; ``model`` may be left out)."""
        return self._prepare_request(endpoint, request).key

    @classmethod
    def from_config(cls, path: str | PathLike[str], **kwargs: Any) -> Self:
        """Load ``path`` (TOML) and build a chain with its own SDK client."""
        from .._config_file import load_config  # noqa: PLC0415 - tomllib only when a file is read

        return cls(load_config(path), **kwargs)

    @property
    def sleep(self) -> SleepT:
        """The sleep this chain waits with between attempts (injected, or the default)."""
        return self._sleep

    @property
    def clock(self) -> Clock:
        """The monotonic clock this chain measures intervals with (injected, or the system's)."""
        return self._clock

    @property
    def chat(self) -> ChatT:
        """The openai SDK's shape: ``chain.chat.completions.create(...)`` (awaited when async)."""
        from . import _dropin  # noqa: PLC0415 - the drop-in surfaces load on first use

        return cast(ChatT, getattr(_dropin, self._SURFACES[0])(self))

    @property
    def responses(self) -> ResponsesT:
        """The openai SDK's shape: ``chain.responses.create(...)`` (awaited when async)."""
        from . import _responses_dropin  # noqa: PLC0415 - loaded on first use

        return cast(ResponsesT, getattr(_responses_dropin, self._SURFACES[1])(self, self.config))

    @property
    def breakers(self) -> Mapping[str, BreakerGate]:
        """The live tiers' breaker gates, by tier name (read-only use)."""
        return dict(self._gates)

    def stream(
        self,
        messages: Sequence[Any],
        model: str | None = None,
        *,
        deadline: float | None = None,
        max_attempts: int | None = None,
        cache: CacheUse = "use",
        fallbacks: bool | Collection[str] = True,
        **params: Any,
    ) -> StreamT:
        """Stream an answer as events; ``params`` as for ``chat.completions.create``.

        Nothing is sent until the first event is asked for (``next()`` / ``async for``).
        This call's own options, never sent: ``deadline`` (seconds of upstream time),
        ``max_attempts`` (every route's budget), ``cache`` (see :data:`CacheUse`) and
        ``fallbacks`` (``False``: the primary only; or the names of the fallbacks allowed).
        """
        own = call_options(self.config, deadline, max_attempts, cache, fallbacks)
        return self._stream(self._prepare(messages, model, params, options=own, keyed=False))

    def complete(
        self,
        messages: Sequence[Any],
        model: str | None = None,
        *,
        deadline: float | None = None,
        max_attempts: int | None = None,
        cache: CacheUse = "use",
        fallbacks: bool | Collection[str] = True,
        **params: Any,
    ) -> AnswerT:
        """The whole answer: the same chain and options as :meth:`stream` (asyncio: awaited).

        Streaming first, unless ``openai.complete_streams`` is false: then each route's
        non-streaming tier comes before its streaming one (see that setting's trade-off).
        """

        def prepare() -> Request:
            own = call_options(self.config, deadline, max_attempts, cache, fallbacks)
            whole_first = self._whole_first
            return self._prepare(
                messages, model, params, whole_first=whole_first, options=own, keyed=False
            )

        return self._answer(prepare)

    def stream_request(
        self, endpoint: Endpoint[Any], request: Mapping[str, Any], **options: Unpack[CallKeywords]
    ) -> StreamT:
        """:meth:`stream` for another API: ``request`` as ``endpoint``'s ``create`` takes it.

        ``model`` may be left out (the config's); ``timeout`` is the call's own, as in
        :meth:`stream`; ``options`` as :meth:`stream`'s. ``response.completion`` is then
        ``endpoint``'s answer type.
        """
        own = _own_options(self.config, options)
        return self._stream(self._prepare_request(endpoint, request, options=own, keyed=False))

    def complete_request(
        self, endpoint: Endpoint[Any], request: Mapping[str, Any], **options: Unpack[CallKeywords]
    ) -> AnswerT:
        """:meth:`complete` for another API (see :meth:`stream_request`)."""

        def prepare() -> Request:
            own = _own_options(self.config, options)
            whole_first = self._whole_first
            return self._prepare_request(
                endpoint, request, whole_first=whole_first, options=own, keyed=False
            )

        return self._answer(prepare)

    def _prepare(
        self,
        messages: Sequence[Any],
        model: str | None,
        params: Mapping[str, Any],
        *,
        whole_first: bool = False,
        options: CallOptions | None = None,
        keyed: bool = True,
    ) -> Request:
        # ChatEndpoint.validate refuses ``stream`` and empty messages, as for any endpoint
        body = {"model": model, "messages": messages, **params}
        return self._prepare_request(
            CHAT, body, whole_first=whole_first, options=options, keyed=keyed
        )

    def _prepare_request(
        self,
        endpoint: Endpoint[Any],
        request: Mapping[str, Any],
        *,
        whole_first: bool = False,
        options: CallOptions | None = None,
        keyed: bool = True,
    ) -> Request:
        """The request to run. ``keyed=False``: its key only if a cache or a listener uses it."""
        self._check_open()
        if not keyed:
            uses_cache = self._caching and (options is None or options.cache != "off")
            keyed = uses_cache or bool(self._hooks)  # a listener sees RequestStarted.key
        return prepare(
            endpoint,
            request,
            default_model=self.config.openai.model,
            whole_first=whole_first,
            options=options,
            keyed=keyed,
        )

    def _store(self, key: str, stored: Any) -> bool:
        """Write to the cache: memory at once, the disk write behind (flushed by close)."""
        try:
            return bool(self.cache.put_later(key, stored))
        except Exception:  # the cache must never break a request
            logger.exception("cache write failed (ignored)")
            return False

    def _lookup(self, key: str) -> CachedAnswer | None:
        try:
            return self.cache.get(key)
        except Exception:
            logger.exception("cache read failed (ignored)")
            return None




def _own_options(config: ChainConfig, options: CallKeywords) -> CallOptions | None:
    return call_options(
        config,
        options.get("deadline"),
        options.get("max_attempts"),
        options.get("cache", "use"),
        options.get("fallbacks", True),
    )


def make_clients(
    config: ChainConfig,
    factory: type[ClientT],
    client: ClientT | None,
    fallback_clients: Mapping[str, ClientT] | None,
) -> tuple[dict[str, ClientT], list[ClientT]]:
    """One SDK client per provider (``"primary"`` and each fallback), SDK retries off.

    Injected clients are used through ``with_options(max_retries=0)`` copies and never closed;
    a fallback with the primary's ``base_url`` and ``api_key_env`` shares the primary's client.
    Returns the clients by provider and the ones the chain created (and must close).
    """
    owned: list[ClientT] = []

    def make(cfg: OpenAIConfig) -> ClientT:
        created = factory(
            base_url=cfg.base_url,
            api_key=cfg.api_key(file=config.source),
            max_retries=0,
            timeout=cfg.timeout,
        )
        owned.append(created)
        return created

    given = dict(fallback_clients or {})
    unknown = set(given) - {fb.name for fb in config.fallbacks}
    if unknown:
        raise ValueError(f"fallback_clients names no configured fallback: {sorted(unknown)}")
    primary = client.with_options(max_retries=0) if client is not None else make(config.openai)
    clients = {"primary": primary}
    for fb in config.fallbacks:
        resolved = fb.resolved(config.openai)
        if fb.name in given:
            clients[fb.name] = given[fb.name].with_options(max_retries=0)
        elif (resolved.base_url, resolved.api_key_env) == (
            config.openai.base_url,
            config.openai.api_key_env,
        ):
            clients[fb.name] = primary
        else:
            clients[fb.name] = make(resolved)
    return clients, owned


