"""One request from start to end, as the sequence of steps a driver performs.

:func:`request_flow` is a generator over a :class:`RequestRun`: it yields each step (see
``_steps``) and is sent what the driver got, or thrown the exception the driver met; it
decides everything: which tier next, what an attempt's error means and how its permit is
reported, when to hedge, what the consumer is shown, when the cache is read and written,
and the listener events. A driver is a loop that performs steps (tenacity's
``Retrying``/``AsyncRetrying`` split: one decision core, a loop per way of waiting).

A driver follows it through :class:`Steps`::

    steps = Steps(request_flow(...))
    for step in steps:                # ends when the request is over
        try:
            steps.done(perform(step))
        except BaseException as exc:  # including GeneratorExit and CancelledError
            steps.failed(exc)

Every exception a step raised goes back into the flow, which reports the attempt's permit
(further ``Report`` steps; no events are shown after an error) and raises what the caller
must see. The flow always ends by returning or raising: a driver never abandons it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, Literal

import openai

from .._errors import AllTiersFailedError, TierError
from .._hooks import CacheEvent, Hooks, RequestEnded
from .._results import ChainEvent, ChainResponse
from ._core import RequestRun
from ._request import Request, ResponseSlot
from ._steps import (
    Acquire,
    CloseStream,
    FetchWhole,
    Opened,
    OpenStream,
    ReadCache,
    ReadStream,
    Report,
    Show,
    Step,
    TryTier,
    UseCache,
    WriteCache,
)
from ._watch import AttemptWatch

if TYPE_CHECKING:
    from ..cache import CachedAnswer  # the cache's modules load when a chain builds one

__all__ = ["Flow", "Steps", "request_flow"]

logger = logging.getLogger("fallbackchain")

Flow = Generator[Step, Any, None]
"""A request's flow: yields steps, is sent their results (see the module docstring)."""


class Steps:
    """A flow's steps, one at a time: tell it what each step gave, or the error it met.

    Iterating asks the flow for the next step, handing it the last reply; iteration ends
    with the request. An error handed back is raised inside the flow, which decides: it
    may report the attempt (more steps) and raises what the caller must see, from
    ``next()``.
    """

    __slots__ = ("_flow", "_reply", "_send")

    def __init__(self, flow: Flow) -> None:
        self._flow = flow
        self._send: Callable[[Any], Step] = flow.send
        self._reply: Any = None

    def __iter__(self) -> Steps:
        return self

    def __next__(self) -> Step:
        return self._send(self._reply)

    def done(self, reply: Any = None) -> None:
        """The step was done; ``reply`` is what it gave (see ``_steps``)."""
        self._reply = reply
        self._send = self._flow.send

    def failed(self, error: BaseException) -> None:
        """The step raised ``error``: the flow gets it next."""
        self._reply = error
        self._send = self._flow.throw


def request_flow(
    run: RequestRun,
    request: Request,
    slot: ResponseSlot,
    *,
    hooks: Hooks,
    closed: Callable[[], bool],
    check_open: Callable[[], None],
) -> Flow:
    """The steps of ``request`` over ``run``; the answer lands in ``slot``.

    ``closed`` tells whether the chain was closed meanwhile (an error then is neutral);
    ``check_open`` raises ``ChainClosedError`` once it is.
    """
    failure: BaseException | None = None
    try:
        while not isinstance(step := run.next_step(), UseCache):
            check_open()
            if slot.cancelled:  # closed from another thread or task: the request ends, neutral
                raise GeneratorExit  # noqa: TRY301 - ends the flow, as a close() would
            if not isinstance(step, Acquire):  # a Sleep or an AwaitSlot
                left = yield step
                if left:  # a Sleep cut short: its tier's breaker opened
                    run.woke_early(left)
                continue
            attempt = run.start_attempt(step, (yield step))
            if attempt is None:
                continue
            watch = run.watch(attempt, request.timeout)
            try:
                if attempt.tier.streaming:
                    opened = yield OpenStream(attempt, watch, run.hedge_delay(attempt))
                    if isinstance(opened, Opened):  # a race's end: the attempt that goes on
                        attempt, watch, opened = opened.attempt, opened.watch, opened.stream
                        if isinstance(opened, BaseException):
                            raise opened  # noqa: TRY301 - the attempt's own error, judged below
                    if slot.cancelled:  # closed while it opened: nobody will read it
                        yield CloseStream(opened)
                        raise GeneratorExit  # noqa: TRY301 - neutral, as below
                    answer = yield ReadStream(attempt, watch, opened)
                else:
                    answer = yield FetchWhole(attempt, watch)
            except Exception as exc:
                if slot.cancelled:  # the read failed because the consumer closed the stream
                    yield Report(attempt.permit, "release")
                    run.abandoned(attempt)
                    raise GeneratorExit from exc
                verdict = run.classify(attempt, exc, watch, closed=closed())
                if isinstance(verdict, TierError):
                    opened_breaker = yield Report(attempt.permit, "failure")
                    run.failed(
                        attempt,
                        verdict,
                        breaker_opened=opened_breaker,
                        time_to_first_token=watch.time_to_first_token(),
                    )
                    continue
                yield Report(attempt.permit, "release")
                if verdict == "reroute":
                    continue
                run.abandoned(attempt)
                check_open()
                raise
            except BaseException:  # GeneratorExit, CancelledError: neutral
                yield Report(attempt.permit, "release")
                run.abandoned(attempt)
                raise
            yield Report(attempt.permit, "success")
            events = _answered(run, attempt, watch, answer, slot)
            if request.writes_cache and request.key is not None:
                stored = request.endpoint.encode(answer)
                if (yield WriteCache(request.key, stored)) and hooks:
                    hooks.emit(CacheEvent(run.request_id, "store"))
            yield Show(events)
            return
        check_open()
        cached = None
        if request.reads_cache and request.key is not None:
            cached = yield ReadCache(request.key)
        yield Show(_from_cache(run, cached, slot, request.reads_cache, hooks))
    except BaseException as exc:
        failure = exc
        raise
    finally:
        if hooks:
            _emit_ended(run, slot, failure, hooks)


def _answered(
    run: RequestRun, step: TryTier, watch: AttemptWatch, answer: Any, slot: ResponseSlot
) -> tuple[ChainEvent, ...]:
    """Record a live answer; return the events that finish showing it."""
    run.succeeded(step, time_to_first_token=watch.time_to_first_token())
    endpoint = slot.endpoint
    source = step.tier.name
    slot.response = ChainResponse(
        text=endpoint.text(answer),
        source=source,
        completion=answer,
        attempts=tuple(run.attempts),
    )
    shown = endpoint.fragments(answer)
    if step.tier.streaming:
        return run.display.answered(shown, source)
    return run.display.whole(shown, source)


def _from_cache(
    run: RequestRun,
    cached: CachedAnswer | None,
    slot: ResponseSlot,
    consulted: bool,
    hooks: Hooks,
) -> tuple[ChainEvent, ...]:
    """Answer from the cache (the events that show it), or raise AllTiersFailedError.

    ``consulted``: whether the cache was asked at all (a call may keep it out).
    """
    endpoint = slot.endpoint
    answer = None
    if cached is not None:
        try:
            answer = endpoint.decode(cached.completion)
        except (TypeError, ValueError):  # another API's entry: not an answer to this request
            logger.warning("cache entry is not a %s answer (ignored)", endpoint.name)
    if hooks and consulted:
        kind: Literal["hit", "miss"] = "miss" if answer is None else "hit"
        age = None if cached is None or answer is None else cached.age
        hooks.emit(CacheEvent(run.request_id, kind, age))
    if cached is None or answer is None:
        logger.info("all tiers failed and the cache has no answer")
        raise AllTiersFailedError(run.attempts)
    logger.info("fallback: answered from cache (age %.0fs)", cached.age)
    # nothing was billed for this answer: a copy that says so (the stored one is kept)
    unbilled, stored_usage = endpoint.unbilled(answer)
    if isinstance(unbilled, openai.BaseModel):
        unbilled._request_id = None  # no request was made for it (the SDK's at worst None)
    slot.response = ChainResponse(
        text=endpoint.text(answer),
        source="cache",
        completion=unbilled,
        attempts=tuple(run.attempts),
        cache_age=cached.age,
        stored_usage=stored_usage,
    )
    run.display.new_attempt()
    return run.display.whole(endpoint.fragments(unbilled), "cache")


def _emit_ended(
    run: RequestRun, slot: ResponseSlot, failure: BaseException | None, hooks: Hooks
) -> None:
    response = slot.response
    tokens: tuple[int | None, int | None] = (None, None)
    if response is not None:
        source, error = response.source, None
        tokens = slot.endpoint.tokens(response.completion)
    else:
        source = None
        error = type(failure).__name__ if failure is not None else "closed early"
    hooks.emit(
        RequestEnded(run.request_id, source, error, run.elapsed(), len(run.attempts), *tokens)
    )
