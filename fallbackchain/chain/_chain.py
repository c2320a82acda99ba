"""The chains: :class:`FallbackChain` (threads) and :class:`AsyncFallbackChain` (asyncio).

For each request a chain tries, in order: the streaming tier, the non-streaming completion
tier (each behind its own circuit breaker, with retries), then the last good answer for the
same request from the cache; otherwise it raises :class:`~fallbackchain.AllTiersFailedError`.
Every complete live answer is stored in the cache (memory at once, the disk write behind it).

The two classes are thin drivers of the same decision core (``_core.RequestRun``), stream
assembly (``_assembly``) and error mapping (``_errors.map_error``): they differ only in how
they wait (``sleep`` vs ``await``) and how they bound a wait (the SDK's per-read timeout plus a
check after each chunk in threads; ``asyncio.Timeout`` rescheduled per chunk in asyncio).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import random as _random
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Collection,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from contextlib import aclosing
from dataclasses import dataclass, field
from os import PathLike
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar

import httpx2
import openai

from .._backends import gate_store, response_cache
from .._config import ChainConfig, OpenAIConfig, RouteConfig, load_config
from .._errors import (
    AllTiersFailedError,
    ChainClosedError,
    DeadlineExceededError,
    FirstTokenTimeoutError,
    StreamNotFinishedError,
    TierError,
)
from .._hooks import (
    BreakerChanged,
    CacheEvent,
    Hooks,
    RequestEnded,
    RequestStarted,
    next_request_id,
)
from .._redact import mask_url
from .._results import ChainEvent, ChainResponse
from .._timing import (
    AsyncSleep,
    Clock,
    TimeSource,
    async_sleep_unless_testing,
    default_async_sleep,
    default_sleep,
    sleep_unless_testing,
    time_source,
)
from .._timing import Sleep as SleepFunc
from ..breaker import BreakerGate, BreakerState, Permit
from ..cache import CachedAnswer, ResponseCache
from ._assembly import Piece
from ._call_options import CacheUse, CallOptions, call_options, call_timeout
from ._core import AttemptWatch, AwaitSlot, RequestRun, Sleep, Tier, TryTier, UseCache
from ._dropin import AsyncChainChat, ChainChat
from ._endpoint import CHAT, Endpoint, StreamAssembly

if TYPE_CHECKING:
    from ..responses import AsyncChainResponses, ChainResponses

__all__ = [
    "AsyncChainStream",
    "AsyncFallbackChain",
    "ChainStream",
    "FallbackChain",
]

logger = logging.getLogger("fallbackchain")

_RESERVED = frozenset({"stream", "messages", "model"})  # stream()'s own arguments


@dataclass(slots=True)
class _OpenStream:
    """A streamed attempt read up to its first content: what was read, and how to go on."""

    stream: Any  # the SDK's Stream or AsyncStream, entered
    chunks: Any  # its chunk iterator (sync or async)
    assembler: StreamAssembly[Any]
    after: float  # when the last read ended
    texts: list[Piece] = field(default_factory=list)  # read, not shown yet
    ended: bool = False  # the stream ended before any content


def _unwrap(raced: _OpenStream | BaseException) -> _OpenStream:
    if isinstance(raced, BaseException):
        raise raced
    return raced


def _settle_when_done(future: Future[_OpenStream], permit: Permit | None) -> None:
    """Once a race entrant nobody waits for ends: close its stream, release ``permit``."""

    def settle(done: Future[_OpenStream]) -> None:
        try:
            if not done.cancelled() and done.exception() is None:
                done.result().stream.close()
        finally:
            if permit is not None:
                permit.release()

    future.add_done_callback(settle)


@dataclass(frozen=True, slots=True)
class _Request:
    endpoint: Endpoint[Any]
    body: Mapping[str, Any]
    """The caller's request as the endpoint takes it: ``model`` set, no ``timeout``."""
    model: str
    key: str | None
    timeout: float | None = None
    """A per-call ``timeout=``: bounds each attempt's connect and every wait for data."""
    whole_first: bool = False
    """``complete()`` with ``openai.complete_streams = false``: whole completions first."""
    options: CallOptions | None = None
    """This call's own deadline, budget, cache use and routes (``None``: the config's)."""

    @property
    def reads_cache(self) -> bool:
        return self.options is None or self.options.cache == "use"

    @property
    def writes_cache(self) -> bool:
        return self.options is None or self.options.cache != "off"


class ResponseSlot:
    """Where a request's driver leaves its :class:`ChainResponse` once it has one.

    The stream object reads it (``response``); ``endpoint`` is the API the request is for.
    """

    __slots__ = ("endpoint", "response")

    def __init__(self, endpoint: Endpoint[Any]) -> None:
        self.endpoint = endpoint
        self.response: ChainResponse | None = None


class _ChainBase:
    """Set-up shared by both drivers: config, tiers, cache, request preparation."""

    def __init__(
        self,
        config: ChainConfig,
        *,
        clock: TimeSource | Clock | None,
        random: Callable[[], float] | None,
        cache: ResponseCache | None,
        listeners: Sequence[object] = (),
    ) -> None:
        self.config = config
        self._hooks = Hooks(listeners)
        self._time = time_source(clock)
        self._clock = self._time.monotonic  # every interval; stored stamps use the wall clock
        self._random = random or _random.random

        def gate(name: str, route: RouteConfig) -> BreakerGate:
            # A trial holds its slot until its first content (or its end): what it may take.
            longest = max(route.first_token_timeout, route.idle_timeout, route.timeout)
            return BreakerGate(
                name,
                fail_max=route.fail_max,
                reset_timeout=route.reset_timeout,
                clock=self._clock,
                store=gate_store(config, name),
                probe_lease=config.retry.deadline + route.timeout,
                trial_lease=longest + 1.0,
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
        self._closed = False

    def _check_open(self) -> None:
        if self._closed:
            raise ChainClosedError(f"this {type(self).__name__} is closed")

    def _breaker_changed(self, name: str, old: BreakerState, new: BreakerState) -> None:
        self._hooks.emit(BreakerChanged(name, old, new))

    def _new_run(self, request: _Request) -> RequestRun:
        run = RequestRun(
            self._tiers,
            self.config,
            clock=self._clock,
            random=self._random,
            hooks=self._hooks,
            request_id=next_request_id(),
            whole_first=request.whole_first,
            deadline=options.deadline if (options := request.options) else None,
            max_attempts=options.max_attempts if options else None,
            routes=options.routes if options else None,
        )
        if self._hooks:
            self._hooks.emit(RequestStarted(run.request_id, request.key, request.model, True))
        return run

    def _ended(self, run: RequestRun, out: ResponseSlot, failure: BaseException | None) -> None:
        if not self._hooks:
            return
        response = out.response
        tokens: tuple[int | None, int | None] = (None, None)
        if response is not None:
            source, error = response.source, None
            tokens = out.endpoint.tokens(response.completion)
        else:
            source = None
            error = type(failure).__name__ if failure is not None else "closed early"
        self._hooks.emit(
            RequestEnded(
                run.request_id, source, error, run.elapsed(), len(run.attempts), *tokens
            )
        )

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

    @property
    def clock(self) -> Clock:
        """The monotonic clock this chain measures intervals with (injected, or the system's)."""
        return self._clock

    @property
    def breakers(self) -> Mapping[str, BreakerGate]:
        """The live tiers' breaker gates, by tier name (read-only use)."""
        return dict(self._gates)

    def _prepare(
        self,
        messages: Sequence[Any],
        model: str | None,
        params: Mapping[str, Any],
        *,
        whole_first: bool = False,
        options: CallOptions | None = None,
    ) -> _Request:
        self._check_open()
        bad = _RESERVED.intersection(params)
        if bad:
            raise TypeError(f"unexpected keyword argument(s): {', '.join(sorted(bad))}")
        if not messages:
            raise ValueError("messages must not be empty")
        body = {"model": model, "messages": messages, **params}
        return self._prepare_request(CHAT, body, whole_first=whole_first, options=options)

    def _prepare_request(
        self,
        endpoint: Endpoint[Any],
        request: Mapping[str, Any],
        *,
        whole_first: bool = False,
        options: CallOptions | None = None,
    ) -> _Request:
        self._check_open()
        body = dict(request)
        body["model"] = model = body.get("model") or self.config.openai.model
        timeout = call_timeout(body.pop("timeout", None))
        endpoint.validate(body)
        try:
            key: str | None = endpoint.cache_key(body)
        except TypeError:  # a value with no JSON form: answer live, never cache it
            logger.warning("request cannot be cached: a parameter has no JSON form")
            key = None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("request %s %s %r", endpoint.name, (key or "-")[:16], body)
        return _Request(endpoint, body, model, key, timeout, whole_first, options)

    def _kwargs(
        self, request: _Request, tier: Tier, *, streaming: bool, read: float
    ) -> dict[str, Any]:
        kwargs = request.endpoint.kwargs(
            request.body,
            model=tier.model or request.model,
            streaming=streaming,
            stream_usage=tier.stream_usage,
        )
        # connect, write and pool waits: no longer than a read may wait (so never past the
        # deadline either), nor than the route's timeout or the call's own
        read = max(read, 0.001)
        bound = tier.timeout if request.timeout is None else min(tier.timeout, request.timeout)
        kwargs["timeout"] = httpx2.Timeout(min(bound, read), read=read)
        return kwargs

    def _read_budget(
        self, run: RequestRun, tier: Tier, now: float, call_timeout: float | None = None
    ) -> float:
        if tier.streaming:
            per_read = max(tier.first_token_timeout, tier.idle_timeout)
        else:
            per_read = tier.timeout
        if call_timeout is not None:
            per_read = min(per_read, call_timeout)
        return min(per_read, max(run.remaining(now), 0.0))

    def _new_watch(
        self, run: RequestRun, step: TryTier, call_timeout: float | None
    ) -> AttemptWatch:
        tier = step.tier
        first_token, idle = tier.first_token_timeout, tier.idle_timeout
        if call_timeout is not None:
            first_token, idle = min(first_token, call_timeout), min(idle, call_timeout)
        return AttemptWatch(run, started=step.started, first_token=first_token, idle=idle)

    def _done(
        self,
        run: RequestRun,
        step: TryTier,
        watch: AttemptWatch,
        completion: Any,
        out: ResponseSlot,
    ) -> tuple[ChainEvent, ...]:
        """Record a live answer; return the events that finish showing it."""
        run.succeeded(step, time_to_first_token=watch.time_to_first_token())
        endpoint = out.endpoint
        source = step.tier.name
        out.response = ChainResponse(
            text=endpoint.text(completion),
            source=source,
            completion=completion,
            attempts=tuple(run.attempts),
        )
        shown = endpoint.fragments(completion)
        if step.tier.streaming:
            return run.display.settle(shown, source)
        return run.display.whole(shown, source)

    def _from_cache(
        self, run: RequestRun, cached: CachedAnswer | None, out: ResponseSlot, consulted: bool
    ) -> tuple[ChainEvent, ...]:
        """Answer from the cache (the events that show it), or raise AllTiersFailedError.

        ``consulted``: whether the cache was asked at all (a call may keep it out).
        """
        if self._hooks and consulted:
            kind: Literal["hit", "miss"] = "miss" if cached is None else "hit"
            age = None if cached is None else cached.age
            self._hooks.emit(CacheEvent(run.request_id, kind, age))
        if cached is None:
            logger.info("all tiers failed and the cache has no answer")
            raise AllTiersFailedError(run.attempts)
        logger.info("fallback: answered from cache (age %.0fs)", cached.age)
        endpoint = out.endpoint
        answer = endpoint.decode(cached.completion)
        # nothing was billed for this answer: a copy that says so (the stored one is kept)
        unbilled, stored = endpoint.unbilled(answer)
        response = ChainResponse(
            text=endpoint.text(answer),
            source="cache",
            completion=unbilled,
            attempts=tuple(run.attempts),
            cache_age=cached.age,
            stored_usage=stored,
        )
        out.response = response
        run.display.new_attempt()
        return run.display.whole(endpoint.fragments(unbilled), "cache")

    def _store(self, request: _Request, completion: Any, run: RequestRun) -> None:
        if request.key is None:
            return
        try:  # memory at once, the disk write behind (flushed by close)
            stored = self.cache.put_later(request.key, request.endpoint.encode(completion))
        except Exception:  # the cache must never break a request
            logger.exception("cache write failed (ignored)")
            return
        if stored and self._hooks:
            self._hooks.emit(CacheEvent(run.request_id, "store"))

    def _lookup(self, request: _Request) -> CachedAnswer | None:
        if request.key is None:
            return None
        try:
            return self.cache.get(request.key)
        except Exception:
            logger.exception("cache read failed (ignored)")
            return None


_Client = TypeVar("_Client", openai.OpenAI, openai.AsyncOpenAI)
_T = TypeVar("_T")


def _make_clients(
    config: ChainConfig,
    factory: type[_Client],
    client: _Client | None,
    fallback_clients: Mapping[str, _Client] | None,
) -> tuple[dict[str, _Client], list[_Client]]:
    """One SDK client per provider (``"primary"`` and each fallback), SDK retries off.

    Injected clients are used through ``with_options(max_retries=0)`` copies and never closed;
    a fallback with the primary's ``base_url`` and ``api_key_env`` shares the primary's client.
    Returns the clients by provider and the ones the chain created (and must close).
    """
    owned: list[_Client] = []

    def make(cfg: OpenAIConfig) -> _Client:
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


# ------------------------------------------------------------------------------------------------
# Sync
# ------------------------------------------------------------------------------------------------


class ChainStream:
    """A chain's answer as an iterator of :class:`~fallbackchain.ChainEvent`.

    Nothing is sent until the first ``next()``. ``response`` is available once iteration ends.
    ``close()`` (or leaving the ``with`` block) stops early; that is never counted as a failure.
    """

    def __init__(self, events: Iterator[ChainEvent], outcome: ResponseSlot) -> None:
        self._events = events
        self._outcome = outcome

    def __iter__(self) -> Iterator[ChainEvent]:
        return self._events  # iterate the driver directly: one call less per event

    def __next__(self) -> ChainEvent:
        return next(self._events)

    @property
    def response(self) -> ChainResponse:
        """The whole answer; raises :class:`StreamNotFinishedError` before the end."""
        if self._outcome.response is None:
            raise StreamNotFinishedError("iterate the stream to its end before reading .response")
        return self._outcome.response

    def close(self) -> None:
        """Stop early, release the connection; neutral for the breakers."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FallbackChain(_ChainBase):
    """A resilient chat-completions caller for threads. Thread-safe; share one per app.

    ``client`` may be your own ``openai.OpenAI``; the chain uses a copy with the SDK's own
    retries switched off (stacked retries multiply) and never closes yours. ``clock``,
    ``sleep`` and ``random`` are injectable for tests.
    """

    def __init__(
        self,
        config: ChainConfig | None = None,
        *,
        client: openai.OpenAI | None = None,
        fallback_clients: Mapping[str, openai.OpenAI] | None = None,
        cache: ResponseCache | None = None,
        clock: TimeSource | Clock | None = None,
        sleep: SleepFunc | None = None,
        random: Callable[[], float] | None = None,
        listeners: Sequence[object] = (),
    ) -> None:
        config = config or ChainConfig()
        super().__init__(config, clock=clock, random=random, cache=cache, listeners=listeners)
        self._clients, self._owned_clients = _make_clients(
            config, openai.OpenAI, client, fallback_clients
        )
        self._sleep = sleep or default_sleep

    @property
    def sleep(self) -> SleepFunc:
        """The sleep this chain waits with between attempts (injected, or ``time.sleep``)."""
        return self._sleep

    @property
    def chat(self) -> ChainChat:
        """The openai SDK's shape: ``chain.chat.completions.create(...)`` (see ``_dropin``)."""
        return ChainChat(self)

    @property
    def responses(self) -> ChainResponses:
        """The openai SDK's shape: ``chain.responses.create(...)`` (see ``responses``)."""
        from ..responses import ChainResponses  # noqa: PLC0415 - it imports this package

        return ChainResponses(self, self.config.openai.model)

    @classmethod
    def from_config(cls, path: str | PathLike[str], **kwargs: Any) -> Self:
        """Load ``path`` (TOML) and build a chain with its own OpenAI client."""
        return cls(load_config(path), **kwargs)

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
    ) -> ChainStream:
        """Stream an answer as events; ``params`` as for ``chat.completions.create``.

        This call's own options, never sent: ``deadline`` (seconds of upstream time),
        ``max_attempts`` (every route's budget), ``cache`` (see :data:`CacheUse`) and
        ``fallbacks`` (``False``: the primary only; or the names of the fallbacks allowed).
        """
        own = call_options(self.config, deadline, max_attempts, cache, fallbacks)
        request = self._prepare(messages, model, params, options=own)
        outcome = ResponseSlot(request.endpoint)
        return ChainStream(self._drive(request, outcome), outcome)

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
    ) -> ChainResponse:
        """The whole answer: the same chain and options as :meth:`stream`.

        Streaming first, unless ``openai.complete_streams`` is false: then each route's
        non-streaming tier comes before its streaming one (see that setting's trade-off).
        """
        own = call_options(self.config, deadline, max_attempts, cache, fallbacks)
        request = self._prepare(messages, model, params, whole_first=self._whole_first, options=own)
        return self._complete(request)

    def stream_request(
        self,
        endpoint: Endpoint[Any],
        request: Mapping[str, Any],
        *,
        deadline: float | None = None,
        max_attempts: int | None = None,
        cache: CacheUse = "use",
        fallbacks: bool | Collection[str] = True,
    ) -> ChainStream:
        """:meth:`stream` for another API: ``request`` as ``endpoint``'s ``create`` takes it.

        ``model`` may be left out (the config's); ``timeout`` is the call's own, as in
        :meth:`stream`. ``response.completion`` is then ``endpoint``'s answer type.
        """
        own = call_options(self.config, deadline, max_attempts, cache, fallbacks)
        prepared = self._prepare_request(endpoint, request, options=own)
        slot = ResponseSlot(endpoint)
        return ChainStream(self._drive(prepared, slot), slot)

    def complete_request(
        self,
        endpoint: Endpoint[Any],
        request: Mapping[str, Any],
        *,
        deadline: float | None = None,
        max_attempts: int | None = None,
        cache: CacheUse = "use",
        fallbacks: bool | Collection[str] = True,
    ) -> ChainResponse:
        """:meth:`complete` for another API (see :meth:`stream_request`)."""
        own = call_options(self.config, deadline, max_attempts, cache, fallbacks)
        return self._complete(
            self._prepare_request(
                endpoint, request, whole_first=self._whole_first, options=own
            )
        )

    def _complete(self, request: _Request) -> ChainResponse:
        slot = ResponseSlot(request.endpoint)
        with ChainStream(self._drive(request, slot), slot) as stream:
            for _ in stream:
                pass
            return stream.response

    def close(self) -> None:
        """Close the client (if the chain made it) and the cache (if the chain opened it).

        Afterwards every call raises :class:`~fallbackchain.ChainClosedError` at once, and a
        request still running ends with it, counted by no breaker.
        """
        if self._closed:
            return
        self._closed = True
        for client in self._owned_clients:
            client.close()
        if self._owns_cache:
            self.cache.close()  # writes what put_later queued
        else:
            self.cache.flush()  # the answers this chain handed over are on disk when we return

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- driver -------------------------------------------------------------------------------

    def _emit(self, events: Sequence[ChainEvent], run: RequestRun) -> Iterator[ChainEvent]:
        clock = self._clock
        for event in events:
            handed = clock()
            yield event
            run.pause(clock() - handed)

    def _drive(self, request: _Request, out: ResponseSlot) -> Iterator[ChainEvent]:
        run = self._new_run(request)
        failure: BaseException | None = None
        since: int | None = None
        try:
            while not isinstance(step := run.next_step(), UseCache):
                self._check_open()
                if isinstance(step, Sleep):
                    sleep_unless_testing(self._sleep, step.seconds)
                    continue
                if isinstance(step, AwaitSlot):
                    step.tier.gate.wait(step.seconds, since=since)
                    continue
                since = step.tier.gate.generation  # a change from here on ends a busy wait
                attempt = run.granted(step, step.tier.gate.acquire())
                if attempt is None:
                    continue
                watch = self._new_watch(run, attempt, request.timeout)
                try:
                    if attempt.tier.streaming:
                        hedge_after = run.hedge_delay(attempt)
                        if hedge_after is None:
                            opened = self._open_stream(request, run, attempt, watch)
                        else:  # the attempt that shows content first goes on
                            attempt, watch, raced = self._race(
                                request, run, attempt, watch, hedge_after
                            )
                            opened = _unwrap(raced)
                        completion = yield from self._continue_stream(
                            request, run, attempt, watch, opened
                        )
                    else:
                        completion = self._complete_once(request, run, attempt, watch)
                except Exception as exc:
                    verdict = run.classify(attempt, exc, watch, closed=self._closed)
                    if isinstance(verdict, TierError):
                        run.failed(
                            attempt,
                            verdict,
                            breaker_opened=attempt.permit.failure(),
                            time_to_first_token=watch.time_to_first_token(),
                        )
                        continue
                    attempt.permit.release()
                    if verdict == "reroute":
                        continue
                    run.abandoned(attempt)
                    self._check_open()
                    raise
                except BaseException:  # GeneratorExit, KeyboardInterrupt: neutral
                    attempt.permit.release()
                    run.abandoned(attempt)
                    raise
                attempt.permit.success()
                final = self._done(run, attempt, watch, completion, out)
                if request.writes_cache:
                    self._store(request, completion, run)
                yield from self._emit(final, run)
                return
            self._check_open()
            cached = self._lookup(request) if request.reads_cache else None
            yield from self._emit(self._from_cache(run, cached, out, request.reads_cache), run)
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._ended(run, out, failure)

    def _open_stream(
        self, request: _Request, run: RequestRun, step: TryTier, watch: AttemptWatch
    ) -> _OpenStream:
        """Send the attempt and read until its first content (or its end); nothing is shown.

        Safe to run off the caller's thread (a hedge race): it reads the run, never changes it.
        """
        clock = self._clock
        before = clock()
        kwargs = self._kwargs(
            request,
            step.tier,
            streaming=True,
            read=self._read_budget(run, step.tier, before, request.timeout),
        )
        stream = request.endpoint.create(self._clients[step.tier.provider], kwargs)
        watch.responded = True
        try:
            after = clock()
            watch.after_wait(before, after, got_content=False)
            opened = _OpenStream(stream, iter(stream), request.endpoint.assembler(), after)
            texts = opened.texts
            while not opened.assembler.content_seen:
                before = clock()
                try:
                    chunk = next(opened.chunks)
                except StopIteration:
                    opened.ended = True
                    break
                opened.after = clock()
                text = opened.assembler.add(chunk)
                watch.after_wait(before, opened.after, got_content=opened.assembler.content_seen)
                if text:
                    texts.append(text)
            if opened.assembler.content_seen and step.permit.trial:
                step.permit.vouch()  # a trial's first content lets waiting callers in
        except BaseException:
            stream.close()
            raise
        return opened

    def _continue_stream(
        self,
        request: _Request,
        run: RequestRun,
        step: TryTier,
        watch: AttemptWatch,
        opened: _OpenStream,
    ) -> Generator[ChainEvent, None, Any]:
        """Show what :meth:`_open_stream` read, then the rest of the stream."""
        clock = self._clock
        with opened.stream:
            assembler = opened.assembler
            add = assembler.add
            check = watch.after_wait
            delta = run.display.delta
            source = step.tier.name
            for shown in opened.texts:
                yield from delta(shown, source)
            if not opened.ended:
                chunks = opened.chunks
                after = opened.after
                unvouched = step.permit.trial and not assembler.content_seen
                while True:
                    before = clock()
                    # Between two waits the consumer held the stream: not the upstream's time.
                    run.pause(before - after)
                    try:
                        chunk = next(chunks)
                    except StopIteration:
                        break
                    after = clock()
                    text = add(chunk)
                    check(before, after, got_content=assembler.content_seen)
                    if unvouched and assembler.content_seen:
                        unvouched = False
                        step.permit.vouch()
                    if text:
                        yield from delta(text, source)
        return assembler.finish(model=request.model)

    def _race(
        self,
        request: _Request,
        run: RequestRun,
        step: TryTier,
        watch: AttemptWatch,
        hedge_after: float,
    ) -> tuple[TryTier, AttemptWatch, _OpenStream | BaseException]:
        """Open ``step``; if it shows no content within ``hedge_after``, hedge it.

        Returns the attempt that goes on, with its first content read, or with the error it
        ended with when no entrant answered: the run then treats that attempt as its current
        one, and the caller settles it. Every other entrant is settled here (a loser still
        running: its stream closed and its permit released when it ends; neutral).
        """
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fallbackchain-hedge")
        entrants: dict[Future[_OpenStream], tuple[TryTier, AttemptWatch]] = {}
        pending: set[Future[_OpenStream]] = set()

        def enter(attempt: TryTier, attempt_watch: AttemptWatch) -> None:
            context = contextvars.copy_context()  # the caller's tracing context, in the thread
            future = pool.submit(
                context.run, self._open_stream, request, run, attempt, attempt_watch
            )
            entrants[future] = (attempt, attempt_watch)
            pending.add(future)

        def leave(futures: Iterable[Future[_OpenStream]]) -> None:
            for future in futures:  # still running: neutral, settled whenever it ends
                run.lost_race(entrants[future][0])
                _settle_when_done(future, entrants[future][0].permit)

        try:
            enter(step, watch)
            done, pending = wait_futures(pending, timeout=hedge_after)
            acquire = run.hedge(step) if pending else None
            if acquire is not None:
                hedge = run.hedge_granted(acquire, acquire.tier.gate.acquire())
                if hedge is not None:
                    enter(hedge, self._new_watch(run, hedge, request.timeout))
            while True:
                if not done:
                    done, pending = wait_futures(pending, return_when=FIRST_COMPLETED)
                # every entrant that ended: the hedged one wins a tie, and fails last
                ended = sorted(done, key=lambda f: entrants[f][0] is not step)
                done = set()
                winner = next((f for f in ended if f.exception() is None), None)
                for future in reversed(ended):
                    attempt, attempt_watch = entrants[future]
                    exc = future.exception()
                    if future is winner:
                        continue
                    if exc is None:  # answered too, but later in the tie: neutral
                        run.lost_race(attempt)
                        future.result().stream.close()
                        attempt.permit.release()
                        continue
                    final = winner is None and not pending and future is ended[0]
                    if final or not isinstance(exc, Exception):
                        leave(pending)
                        pending = set()
                        if attempt is not step:
                            run.adopt(attempt, step)
                        return attempt, attempt_watch, exc
                    verdict = run.raced(attempt, exc, attempt_watch, hedge=attempt is not step)
                    if verdict == "end":  # the caller's own mistake: raised, as without a race
                        leave(pending)
                        pending = set()
                        return attempt, attempt_watch, exc
                    if verdict == "neutral":
                        attempt.permit.release()
                    else:
                        attempt.permit.failure()
                if winner is not None:
                    leave(pending)
                    pending = set()
                    attempt, attempt_watch = entrants[winner]
                    if attempt is not step:
                        run.adopt(attempt, step)
                    return attempt, attempt_watch, winner.result()
        except BaseException:
            for future in pending:  # the caller settles ``step``; a hedge is settled here
                attempt = entrants[future][0]
                _settle_when_done(future, None if attempt is step else attempt.permit)
            raise
        finally:
            pool.shutdown(wait=False)

    def _complete_once(
        self, request: _Request, run: RequestRun, step: TryTier, watch: AttemptWatch
    ) -> Any:
        before = self._clock()
        budget = self._read_budget(run, step.tier, before, request.timeout)
        kwargs = self._kwargs(request, step.tier, streaming=False, read=budget)
        completion = request.endpoint.create(self._clients[step.tier.provider], kwargs)
        watch.responded = watch.content_seen = True
        watch.first_token_at = self._clock()
        return request.endpoint.check(completion)


# ------------------------------------------------------------------------------------------------
# Async
# ------------------------------------------------------------------------------------------------


class _Watchdog:
    """Cancels the current task when a wait outlives its budget.

    Cheaper per chunk than rescheduling an ``asyncio.timeout`` twice: arming stores a float,
    and the one timer only fires once per budget period, re-arming itself if the deadline
    moved on meanwhile. :meth:`expired` tells a cancellation it caused from any other one.
    """

    __slots__ = ("_deadline", "_fired", "_handle", "_loop", "_task")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._task = asyncio.current_task()
        self._handle: asyncio.TimerHandle | None = None
        self._deadline: float | None = None
        self._fired = False

    def arm(self, seconds: float) -> None:
        # The task waiting now: a consumer may iterate from another task (wait_for does).
        self._task = asyncio.current_task()
        self._fired = False
        when = self._deadline = self._loop.time() + seconds
        handle = self._handle
        if handle is None or when < handle.when():
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)

    def disarm(self) -> None:
        self._deadline = None

    def _fire(self) -> None:
        self._handle = None
        deadline = self._deadline
        if deadline is None or self._task is None:
            return
        if self._loop.time() >= deadline:
            self._fired = True
            self._task.cancel()
        else:
            self._handle = self._loop.call_at(deadline, self._fire)

    def expired(self) -> bool:
        """True if the cancellation being handled is this watchdog's own (and undo it)."""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        return self._task.uncancel() == 0  # another cancel pending: let it through

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._deadline = None
        if self._fired and self._task is not None:  # our cancel was swallowed somewhere below
            self._fired = False
            self._task.uncancel()


async def _drop(task: asyncio.Task[_OpenStream], permit: Permit | None) -> None:
    """Cancel a race entrant nobody waits for: its request closed, ``permit`` released."""
    try:
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is None:
            await task.result().stream.close()
    finally:
        if permit is not None:
            await permit.arelease()


async def _close_and_release(opened: _OpenStream, permit: Permit | None) -> None:
    try:
        await opened.stream.close()
    finally:
        if permit is not None:
            await permit.arelease()


async def _shielded(settle: Coroutine[Any, Any, _T]) -> _T:
    """Settle a permit even if the task is cancelled meanwhile (the settle still completes).

    With a shared store settling awaits the network; a cancel there must not leave a
    half-open probe slot taken or an outcome unrecorded.
    """
    return await asyncio.shield(settle)


class AsyncChainStream:
    """A chain's answer as an async iterator of :class:`~fallbackchain.ChainEvent`.

    The asyncio twin of :class:`ChainStream`: ``async for``, ``async with``, ``aclose()``.
    Cancelling the consuming task is neutral for the breakers.
    """

    def __init__(self, events: AsyncIterator[ChainEvent], outcome: ResponseSlot) -> None:
        self._events = events
        self._outcome = outcome

    def __aiter__(self) -> AsyncIterator[ChainEvent]:
        return self._events  # iterate the driver directly: one coroutine less per event

    async def __anext__(self) -> ChainEvent:
        return await anext(self._events)

    @property
    def response(self) -> ChainResponse:
        """The whole answer; raises :class:`StreamNotFinishedError` before the end."""
        if self._outcome.response is None:
            raise StreamNotFinishedError("iterate the stream to its end before reading .response")
        return self._outcome.response

    async def aclose(self) -> None:
        """Stop early, release the connection; neutral for the breakers."""
        aclose = getattr(self._events, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncFallbackChain(_ChainBase):
    """The asyncio twin of :class:`FallbackChain` (same config, tiers, breakers and cache).

    Disk cache I/O runs in a worker thread, never on the event loop.
    """

    def __init__(
        self,
        config: ChainConfig | None = None,
        *,
        client: openai.AsyncOpenAI | None = None,
        fallback_clients: Mapping[str, openai.AsyncOpenAI] | None = None,
        cache: ResponseCache | None = None,
        clock: TimeSource | Clock | None = None,
        sleep: AsyncSleep | None = None,
        random: Callable[[], float] | None = None,
        listeners: Sequence[object] = (),
    ) -> None:
        config = config or ChainConfig()
        super().__init__(config, clock=clock, random=random, cache=cache, listeners=listeners)
        self._clients, self._owned_clients = _make_clients(
            config, openai.AsyncOpenAI, client, fallback_clients
        )
        self._sleep = sleep or default_async_sleep

    @property
    def sleep(self) -> AsyncSleep:
        """The sleep this chain waits with between attempts (injected, or ``asyncio.sleep``)."""
        return self._sleep

    @property
    def chat(self) -> AsyncChainChat:
        """The openai SDK's shape: ``await chain.chat.completions.create(...)``."""
        return AsyncChainChat(self)

    @property
    def responses(self) -> AsyncChainResponses:
        """The openai SDK's shape: ``await chain.responses.create(...)``."""
        from ..responses import AsyncChainResponses  # noqa: PLC0415 - it imports this package

        return AsyncChainResponses(self, self.config.openai.model)

    @classmethod
    def from_config(cls, path: str | PathLike[str], **kwargs: Any) -> Self:
        """Load ``path`` (TOML) and build a chain with its own AsyncOpenAI client."""
        return cls(load_config(path), **kwargs)

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
    ) -> AsyncChainStream:
        """Stream an answer as events (``async for``); options as the sync chain's."""
        own = call_options(self.config, deadline, max_attempts, cache, fallbacks)
        request = self._prepare(messages, model, params, options=own)
        outcome = ResponseSlot(request.endpoint)
        return AsyncChainStream(self._drive(request, outcome), outcome)

    async def complete(
        self,
        messages: Sequence[Any],
        model: str | None = None,
        *,
        deadline: float | None = None,
        max_attempts: int | None = None,
        cache: CacheUse = "use",
        fallbacks: bool | Collection[str] = True,
        **params: Any,
    ) -> ChainResponse:
        """The whole answer: the same chain as :meth:`stream` (see the sync chain's)."""
        own = call_options(self.config, deadline, max_attempts, cache, fallbacks)
        request = self._prepare(messages, model, params, whole_first=self._whole_first, options=own)
        return await self._complete(request)

    def stream_request(
        self,
        endpoint: Endpoint[Any],
        request: Mapping[str, Any],
        *,
        deadline: float | None = None,
        max_attempts: int | None = None,
        cache: CacheUse = "use",
        fallbacks: bool | Collection[str] = True,
    ) -> AsyncChainStream:
        """:meth:`stream` for another API (see the sync chain's ``stream_request``)."""
        own = call_options(self.config, deadline, max_attempts, cache, fallbacks)
        prepared = self._prepare_request(endpoint, request, options=own)
        slot = ResponseSlot(endpoint)
        return AsyncChainStream(self._drive(prepared, slot), slot)

    async def complete_request(
        self,
        endpoint: Endpoint[Any],
        request: Mapping[str, Any],
        *,
        deadline: float | None = None,
        max_attempts: int | None = None,
        cache: CacheUse = "use",
        fallbacks: bool | Collection[str] = True,
    ) -> ChainResponse:
        """:meth:`complete` for another API (see the sync chain's ``stream_request``)."""
        own = call_options(self.config, deadline, max_attempts, cache, fallbacks)
        return await self._complete(
            self._prepare_request(
                endpoint, request, whole_first=self._whole_first, options=own
            )
        )

    async def _complete(self, request: _Request) -> ChainResponse:
        slot = ResponseSlot(request.endpoint)
        async with AsyncChainStream(self._drive(request, slot), slot) as stream:
            async for _ in stream:
                pass
            return stream.response

    async def aclose(self) -> None:
        """Close the client (if the chain made it) and the cache (if the chain opened it).

        Afterwards every call raises :class:`~fallbackchain.ChainClosedError` at once, and a
        request still running ends with it, counted by no breaker.
        """
        if self._closed:
            return
        self._closed = True
        for client in self._owned_clients:
            await client.close()
        if self._owns_cache:
            aclose = getattr(self.cache, "aclose", None)
            if aclose is not None:
                await aclose()
            else:
                await asyncio.to_thread(self.cache.close)  # writes what put_later queued
        else:
            await asyncio.to_thread(self.cache.flush)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- driver -------------------------------------------------------------------------------

    async def _drive(self, request: _Request, out: ResponseSlot) -> AsyncIterator[ChainEvent]:
        run = self._new_run(request)
        failure: BaseException | None = None
        since: int | None = None
        try:
            while not isinstance(step := run.next_step(), UseCache):
                self._check_open()
                if isinstance(step, Sleep):
                    await async_sleep_unless_testing(self._sleep, step.seconds)
                    continue
                if isinstance(step, AwaitSlot):
                    await step.tier.gate.await_change(step.seconds, since=since)
                    continue
                since = step.tier.gate.generation  # a change from here on ends a busy wait
                attempt = run.granted(step, await step.tier.gate.aacquire())
                if attempt is None:
                    continue
                watch = self._new_watch(run, attempt, request.timeout)
                try:
                    if attempt.tier.streaming:
                        hedge_after = run.hedge_delay(attempt)
                        if hedge_after is None:
                            opened = await self._open_stream(request, run, attempt, watch)
                        else:  # the attempt that shows content first goes on
                            attempt, watch, raced = await self._race(
                                request, run, attempt, watch, hedge_after
                            )
                            opened = _unwrap(raced)
                        completion = None
                        items = self._continue_stream(request, run, attempt, watch, opened)
                        async with aclosing(items):
                            async for item in items:  # _continue_stream accounts for pauses
                                if isinstance(item, ChainEvent):
                                    yield item
                                else:
                                    completion = item
                        assert completion is not None  # _continue_stream always ends with one
                    else:
                        completion = await self._complete_once(request, run, attempt, watch)
                except Exception as exc:
                    verdict = run.classify(attempt, exc, watch, closed=self._closed)
                    if isinstance(verdict, TierError):
                        run.failed(
                            attempt,
                            verdict,
                            breaker_opened=await _shielded(attempt.permit.afailure()),
                            time_to_first_token=watch.time_to_first_token(),
                        )
                        continue
                    await _shielded(attempt.permit.arelease())
                    if verdict == "reroute":
                        continue
                    run.abandoned(attempt)
                    self._check_open()
                    raise
                except BaseException:  # CancelledError, GeneratorExit: neutral
                    await _shielded(attempt.permit.arelease())
                    run.abandoned(attempt)
                    raise
                await _shielded(attempt.permit.asuccess())
                final = self._done(run, attempt, watch, completion, out)
                if request.writes_cache:
                    await self._astore(request, completion, run)
                for event in final:
                    yield event
                return
            self._check_open()
            cached = await self._alookup(request) if request.reads_cache else None
            for event in self._from_cache(run, cached, out, request.reads_cache):
                yield event
        except BaseException as exc:
            failure = exc
            raise
        finally:
            self._ended(run, out, failure)

    async def _alookup(self, request: _Request) -> CachedAnswer | None:
        """Cache read off the event loop: the cache's own ``aget`` if it has one, else a thread.

        An answer the memory layer holds is served on the loop, with no thread hop (an
        outage's hot path: a hop costs far more than the lookup under concurrency).
        """
        held = getattr(self.cache, "get_held", None)
        if held is not None and request.key is not None:
            try:
                answer: CachedAnswer | None = held(request.key)
            except Exception:
                logger.exception("cache read failed (ignored)")
                answer = None
            if answer is not None:
                return answer
        aget = getattr(self.cache, "aget", None)
        if aget is None or request.key is None:
            return await asyncio.to_thread(self._lookup, request)
        try:
            result: CachedAnswer | None = await aget(request.key)
        except Exception:
            logger.exception("cache read failed (ignored)")
            return None
        return result

    async def _astore(self, request: _Request, completion: Any, run: RequestRun) -> None:
        """Cache write: the cache's own ``aput`` if it has one, else ``put_later`` on the loop.

        ``put_later`` does no I/O (a snapshot and an enqueue; a writer thread writes the
        disk), so it costs less on the loop than a hop to a thread would.
        """
        aput = getattr(self.cache, "aput", None)
        if aput is None or request.key is None:
            self._store(request, completion, run)
            return
        try:
            stored = await aput(request.key, request.endpoint.encode(completion))
        except Exception:
            logger.exception("cache write failed (ignored)")
            return
        if stored and self._hooks:
            self._hooks.emit(CacheEvent(run.request_id, "store"))

    async def _open_stream(
        self, request: _Request, run: RequestRun, step: TryTier, watch: AttemptWatch
    ) -> _OpenStream:
        """Send the attempt and read until its first content (or its end); nothing is shown.

        May run in a task of its own (a hedge race): it reads the run, never changes it.
        """
        clock = self._clock
        before = clock()
        budget = watch.budget(before)
        kwargs = self._kwargs(
            request,
            step.tier,
            streaming=True,
            read=self._read_budget(run, step.tier, before, request.timeout),
        )
        try:
            async with asyncio.timeout(budget):
                stream = await request.endpoint.acreate(self._clients[step.tier.provider], kwargs)
        except TimeoutError:
            raise watch.expired(before) from None
        watch.responded = True
        watchdog = _Watchdog(asyncio.get_running_loop())
        try:
            after = clock()
            watch.after_wait(before, after, got_content=False)
            opened = _OpenStream(stream, aiter(stream), request.endpoint.assembler(), after)
            texts = opened.texts
            while not opened.assembler.content_seen:
                before = clock()
                watchdog.arm(watch.budget(before))
                try:
                    chunk = await anext(opened.chunks)
                except StopAsyncIteration:
                    opened.ended = True
                    break
                except asyncio.CancelledError:
                    if watchdog.expired():
                        raise watch.expired(before) from None
                    raise
                watchdog.disarm()
                opened.after = clock()
                text = opened.assembler.add(chunk)
                watch.after_wait(before, opened.after, got_content=opened.assembler.content_seen)
                if text:
                    texts.append(text)
            if opened.assembler.content_seen and step.permit.trial:
                await step.permit.avouch()  # a trial's first content lets waiting callers in
        except BaseException:
            await stream.close()
            raise
        finally:
            watchdog.close()
        return opened

    async def _continue_stream(
        self,
        request: _Request,
        run: RequestRun,
        step: TryTier,
        watch: AttemptWatch,
        opened: _OpenStream,
    ) -> AsyncGenerator[Any, None]:
        """Show what :meth:`_open_stream` read, then the rest of the stream; last, the answer."""
        clock = self._clock
        async with opened.stream:
            assembler = opened.assembler
            add = assembler.add
            check = watch.after_wait
            delta = run.display.delta
            source = step.tier.name
            for shown in opened.texts:
                for event in delta(shown, source):
                    yield event
            if not opened.ended:
                chunks = opened.chunks
                after = opened.after
                unvouched = step.permit.trial and not assembler.content_seen
                watchdog = _Watchdog(asyncio.get_running_loop())
                try:
                    while True:
                        before = clock()
                        run.pause(before - after)  # the consumer held the stream meanwhile
                        watchdog.arm(watch.budget(before))
                        try:
                            chunk = await anext(chunks)
                        except StopAsyncIteration:
                            break
                        except asyncio.CancelledError:
                            if watchdog.expired():
                                raise watch.expired(before) from None
                            raise
                        watchdog.disarm()
                        after = clock()
                        text = add(chunk)
                        check(before, after, got_content=assembler.content_seen)
                        if unvouched and assembler.content_seen:
                            unvouched = False
                            await step.permit.avouch()
                        if text:
                            for event in delta(text, source):
                                yield event
                finally:
                    watchdog.close()
        yield assembler.finish(model=request.model)

    async def _race(
        self,
        request: _Request,
        run: RequestRun,
        step: TryTier,
        watch: AttemptWatch,
        hedge_after: float,
    ) -> tuple[TryTier, AttemptWatch, _OpenStream | BaseException]:
        """Open ``step``; if it shows no content within ``hedge_after``, hedge it.

        As the sync chain's ``_race``, but a loser is cancelled at once: its request closed
        and its permit released (shielded: a cancel meanwhile cannot leave a slot taken).
        """
        entrants: dict[asyncio.Task[_OpenStream], tuple[TryTier, AttemptWatch]] = {}
        pending: set[asyncio.Task[_OpenStream]] = set()
        chosen: tuple[_OpenStream, TryTier] | None = None  # the winner, until returned

        def enter(attempt: TryTier, attempt_watch: AttemptWatch) -> None:
            task = asyncio.create_task(self._open_stream(request, run, attempt, attempt_watch))
            entrants[task] = (attempt, attempt_watch)
            pending.add(task)

        async def leave(tasks: Iterable[asyncio.Task[_OpenStream]]) -> None:
            drops = []
            for task in tasks:
                run.lost_race(entrants[task][0])
                drops.append(asyncio.ensure_future(_drop(task, entrants[task][0].permit)))
            if drops:
                await asyncio.shield(asyncio.gather(*drops))

        try:
            enter(step, watch)
            done, pending = await asyncio.wait(pending, timeout=hedge_after)
            acquire = run.hedge(step) if pending else None
            if acquire is not None:
                hedge = run.hedge_granted(acquire, await acquire.tier.gate.aacquire())
                if hedge is not None:
                    enter(hedge, self._new_watch(run, hedge, request.timeout))
            while True:
                if not done:
                    done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                ended = sorted(done, key=lambda t: entrants[t][0] is not step)
                done = set()
                winner = next(
                    (t for t in ended if not t.cancelled() and t.exception() is None), None
                )
                if winner is not None:
                    chosen = winner.result(), entrants[winner][0]
                for task in reversed(ended):
                    attempt, attempt_watch = entrants[task]
                    exc = asyncio.CancelledError() if task.cancelled() else task.exception()
                    if task is winner:
                        continue
                    if exc is None:  # answered too, but later in the tie: neutral
                        run.lost_race(attempt)
                        await asyncio.shield(_close_and_release(task.result(), attempt.permit))
                        continue
                    final = winner is None and not pending and task is ended[0]
                    if final or not isinstance(exc, Exception):
                        losers, pending = pending, set()
                        await leave(losers)
                        if attempt is not step:
                            run.adopt(attempt, step)
                        return attempt, attempt_watch, exc
                    verdict = run.raced(attempt, exc, attempt_watch, hedge=attempt is not step)
                    if verdict == "end":  # the caller's own mistake: raised, as without a race
                        losers, pending = pending, set()
                        await leave(losers)
                        return attempt, attempt_watch, exc
                    if verdict == "neutral":
                        await _shielded(attempt.permit.arelease())
                    else:
                        await _shielded(attempt.permit.afailure())
                if winner is not None:
                    losers, pending = pending, set()
                    await leave(losers)
                    attempt, attempt_watch = entrants[winner]
                    if attempt is not step:
                        run.adopt(attempt, step)
                    return attempt, attempt_watch, winner.result()
        except BaseException:
            # the caller settles ``step``; a hedge, and a winner's opened stream, are here
            cleanup = [
                asyncio.ensure_future(
                    _drop(t, None if entrants[t][0] is step else entrants[t][0].permit)
                )
                for t in pending
            ]
            if chosen is not None:
                opened, winner_step = chosen
                permit = None if winner_step is step else winner_step.permit
                cleanup.append(asyncio.ensure_future(_close_and_release(opened, permit)))
            if cleanup:
                await asyncio.shield(asyncio.gather(*cleanup, return_exceptions=True))
            raise

    async def _complete_once(
        self, request: _Request, run: RequestRun, step: TryTier, watch: AttemptWatch
    ) -> Any:
        before = self._clock()
        budget = self._read_budget(run, step.tier, before, request.timeout)
        kwargs = self._kwargs(request, step.tier, streaming=False, read=budget)
        try:
            async with asyncio.timeout(budget):
                completion = await request.endpoint.acreate(
                    self._clients[step.tier.provider], kwargs
                )
        except TimeoutError:
            if run.remaining(before) <= budget:
                raise DeadlineExceededError(
                    "request deadline reached while waiting for upstream"
                ) from None
            # the same class the sync driver gets from the SDK's read timeout: a silent route
            raise FirstTokenTimeoutError(f"no answer within {budget:g}s") from None
        watch.responded = watch.content_seen = True
        watch.first_token_at = self._clock()
        return request.endpoint.check(completion)
