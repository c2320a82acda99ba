""":class:`FallbackChain`: the chain for threads, a driver that performs the core's steps.

Every decision is the core's (``_flow``, ``_core``, ``_race``); this module only does what a
step names, blocking: sleeping, asking a gate, sending an attempt and reading its stream,
reporting a permit, reading and writing the cache, and handing events to the consumer. A
wait is bounded by the SDK's per-read timeout, and each read is checked by the attempt's
:class:`~fallbackchain.chain._watch.AttemptWatch` when it ends.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from typing import TYPE_CHECKING, Any, Self

import openai

from .._results import ChainEvent, ChainResponse
from .._timing import Sleep as SleepFunc
from .._timing import default_sleep, is_testing, sleep_unless_testing
from ..breaker import Permit
from . import _steps as kind
from ._chain import ChainBase, ChainStreamBase, OpenedStream
from ._core import RequestRun
from ._race import Dismissal, Entrant, Race
from ._request import Request, ResponseSlot
from ._watch import AttemptWatch

if TYPE_CHECKING:  # the drop-in surfaces load on first use: named as strings in the base
    from ._dropin import ChainChat  # noqa: F401
    from ._responses_dropin import ChainResponses  # noqa: F401

__all__ = ["ChainStream", "FallbackChain"]


class ChainStream(ChainStreamBase[Iterator[ChainEvent]]):
    """A chain's answer as an iterator of :class:`~fallbackchain.ChainEvent`.

    Nothing is sent until the first ``next()``. ``response`` is available once iteration ends.
    ``close()`` (or leaving the ``with`` block) stops early; that is never counted as a failure.
    """

    def __iter__(self) -> Iterator[ChainEvent]:
        return self._events  # iterate the driver directly: one call less per event

    def __next__(self) -> ChainEvent:
        return next(self._events)

    def close(self) -> None:
        """Stop early, release the connection; neutral for the breakers.

        From another thread while one is iterating, as the SDK's ``Stream.close()``: the
        upstream stream is closed and that thread's iteration ends.
        """
        close = getattr(self._events, "close", None)
        if close is None:
            return
        try:
            close()
        except ValueError:  # "generator already executing": another thread is reading
            if (reading := self._slot.cancel()) is not None:
                with contextlib.suppress(Exception):
                    reading.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FallbackChain(
    ChainBase[
        ChainStream, openai.OpenAI, SleepFunc, ChainResponse, "ChainChat", "ChainResponses"
    ]
):
    """A resilient chat-completions caller for threads. Thread-safe; share one per app.

    ``client`` may be your own ``openai.OpenAI``; the chain uses a copy with the SDK's own
    retries switched off (stacked retries multiply) and never closes yours. ``clock``,
    ``sleep`` (``time.sleep`` by default) and ``random`` are injectable for tests.
    """

    _SURFACES = ("ChainChat", "ChainResponses")

    def _client_type(self) -> type[openai.OpenAI]:
        return openai.OpenAI

    def _default_sleep(self) -> SleepFunc:
        return default_sleep

    def _answer(self, prepare: Callable[[], Request]) -> ChainResponse:
        with self._stream(prepare()) as stream:
            for _ in stream:
                pass
            return stream.response

    def _stream(self, request: Request) -> ChainStream:
        slot = ResponseSlot(request.endpoint)
        return ChainStream(self._drive(request, slot), slot)

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

    def _drive(self, request: Request, slot: ResponseSlot) -> Iterator[ChainEvent]:
        """Perform the steps of ``request``'s flow (see ``_flow`` for the protocol).

        A stream (``ReadStream``: what :meth:`_open_stream` read, then the rest) is read
        here, inline: each event is yielded straight to the consumer, with no generator in
        between.
        """
        run, steps = self._start(request, slot)
        clock = self._clock
        try:
            for step in steps:
                try:
                    if not isinstance(step, kind.ReadStream):
                        if isinstance(step, kind.Show):
                            yield from self._show(step.events, run)
                            steps.done()
                        else:
                            steps.done(self._perform(request, run, step))
                        continue
                    opened: OpenedStream = step.opened
                    attempt = step.attempt
                    slot.reading = opened.stream
                    with opened.stream:
                        assembler = opened.assembler
                        add = assembler.add
                        check = step.watch.after_wait
                        delta = run.display.delta
                        source = attempt.tier.name
                        for read in opened.pieces:
                            yield from delta(read, source)
                        if not opened.ended:
                            items = opened.items
                            after = opened.after
                            limited = attempt.permit.limited
                            watch = step.watch
                            display = run.display
                            record = display.record_text
                            while True:
                                before = clock()
                                # Between two waits the consumer held the stream: not upstream time.
                                gap = before - after
                                if gap > 0:
                                    run.paused += gap
                                try:
                                    item = next(items)
                                except StopIteration:
                                    break
                                after = clock()
                                piece = add(item)
                                if watch.content_seen:  # watch.after_wait's checks, inline
                                    if after - before > watch.idle or (
                                        after - run.started - run.paused > run.deadline
                                    ):
                                        raise watch.expired(before)  # noqa: TRY301
                                elif (
                                    check(before, after, got_content=assembler.content_seen)
                                    and limited
                                ):
                                    attempt.permit.first_content()
                                if piece:
                                    if piece.__class__ is str and display.plain:
                                        record(piece)  # display.delta's common case, inline
                                        yield ChainEvent("delta", piece, source)
                                    else:
                                        yield from delta(piece, source)
                        answer = opened.finish(request.model)
                    steps.done(answer)
                except BaseException as exc:  # noqa: BLE001 - back into the flow, which decides
                    steps.failed(exc)
        except GeneratorExit:
            if not slot.cancelled:
                raise  # an ordinary close(): the generator must exit
            # closed from another thread: the request ended neutrally, and so does iteration

    def _perform(self, request: Request, run: RequestRun, step: kind.Step) -> Any:
        """Do what ``step`` names (every step but ``ReadStream`` and ``Show``)."""
        if isinstance(step, kind.Report):
            return step.permit.end(step.outcome)
        if isinstance(step, kind.Acquire):
            return step.tier.gate.acquire()
        if isinstance(step, kind.OpenStream):
            if step.hedge_after is None:
                return self._open_stream(request, run, step.attempt, step.watch)
            return self._race(request, run, step)
        if isinstance(step, kind.FetchWhole):
            return self._fetch_whole(request, run, step)
        if isinstance(step, kind.CloseStream):
            return step.opened.stream.close()
        if isinstance(step, kind.Sleep):
            if step.tier is not None and self._sleep is default_sleep and not is_testing():
                return step.tier.gate.sleep_unless_open(step.seconds)
            return sleep_unless_testing(self._sleep, step.seconds)
        if isinstance(step, kind.AwaitSlot):
            return step.tier.gate.wait(step.seconds, since=step.since)
        if isinstance(step, kind.ReadCache):
            return self._lookup(step.key)
        if isinstance(step, kind.WriteCache):
            return self._store(step.key, step.stored)
        raise TypeError(f"not a step for this driver: {step!r}")

    def _show(self, events: Sequence[ChainEvent], run: RequestRun) -> Iterator[ChainEvent]:
        clock = self._clock
        for event in events:
            handed = clock()
            yield event
            run.pause(clock() - handed)  # the consumer held the stream: not upstream time

    def _open_stream(
        self, request: Request, run: RequestRun, attempt: kind.TryTier, watch: AttemptWatch
    ) -> OpenedStream:
        """Send the attempt and read until its first content (or its end); nothing is shown.

        Safe to run off the caller's thread (a hedge race): it reads the run, never changes it.
        """
        clock = self._clock
        tier = attempt.tier
        before = clock()
        read = run.read_budget(tier, before, request.timeout)
        kwargs = request.kwargs(tier, streaming=True, read=read)
        stream = request.endpoint.create(self._clients[tier.provider], kwargs)
        watch.responded = True
        try:
            after = clock()
            watch.after_wait(before, after, got_content=False)
            opened = OpenedStream(stream, iter(stream), request.endpoint.assembler(), after)
            assembler = opened.assembler
            while not assembler.content_seen:
                before = clock()
                try:
                    item = next(opened.items)
                except StopIteration:
                    opened.ended = True
                    break
                opened.after = clock()
                piece = assembler.add(item)
                first = watch.after_wait(before, opened.after, got_content=assembler.content_seen)
                if first and attempt.permit.limited:
                    attempt.permit.first_content()  # its first content lets waiting callers in
                if piece:
                    opened.pieces.append(piece)
        except BaseException:
            stream.close()
            raise
        return opened

    def _race(self, request: Request, run: RequestRun, step: kind.OpenStream) -> kind.Opened:
        """Open ``step``'s attempt in a thread, hedge it when silent; the race's end.

        The rules are :class:`Race`'s; here entrants run, and the ones that do not go on are
        closed and released (a loser still running: whenever it ends; neutral).
        """
        race = Race(run, step.attempt, step.watch)
        pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fallbackchain-hedge")
        running: dict[Future[OpenedStream], Entrant] = {}

        def enter(entrant: Entrant) -> None:
            context = contextvars.copy_context()  # the caller's tracing context, in the thread
            future = pool.submit(
                context.run, self._open_stream, request, run, entrant.attempt, entrant.watch
            )
            running[future] = entrant

        try:
            enter(race.first)
            done, _ = wait_futures(running, timeout=step.hedge_after)
            acquire = None if done else race.hedge()
            if acquire is not None:
                hedge = race.start_hedge(acquire, acquire.tier.gate.acquire(), request.timeout)
                if hedge is not None:
                    enter(hedge)
            while True:
                if not done:
                    done, _ = wait_futures(running, return_when=FIRST_COMPLETED)
                ended = [(running.pop(future), _outcome(future)) for future in done]
                done = set()
                verdict = race.judge(ended, tuple(running.values()))
                for dismissal in verdict.dismissed:
                    _dismiss(dismissal)
                if verdict.end is not None:
                    for future, entrant in running.items():
                        _close_when_done(future, entrant.attempt.permit)
                    running.clear()
                    return verdict.end
        except BaseException:
            for future, entrant in running.items():  # the caller reports the first attempt
                _close_when_done(future, None if entrant is race.first else entrant.attempt.permit)
            raise
        finally:
            pool.shutdown(wait=False)

    def _fetch_whole(self, request: Request, run: RequestRun, step: kind.FetchWhole) -> Any:
        tier = step.attempt.tier
        read = run.read_budget(tier, self._clock(), request.timeout)
        kwargs = request.kwargs(tier, streaming=False, read=read)
        answer = request.endpoint.create(self._clients[tier.provider], kwargs)
        step.watch.answered_whole(self._clock())
        return request.endpoint.check(answer)


def _outcome(future: Future[OpenedStream]) -> object:
    """What a race entrant ended with: its opened stream, or the exception it raised."""
    return future.exception() or future.result()


def _dismiss(dismissal: Dismissal) -> None:
    try:
        if dismissal.opened is not None:
            dismissal.opened.stream.close()
    finally:
        dismissal.entrant.attempt.permit.end(dismissal.outcome)


def _close_when_done(future: Future[OpenedStream], permit: Permit | None) -> None:
    """Once a race entrant nobody waits for ends: close its stream, release ``permit``."""

    def close(done: Future[OpenedStream]) -> None:
        try:
            if not done.cancelled() and done.exception() is None:
                done.result().stream.close()
        finally:
            if permit is not None:
                permit.release()

    future.add_done_callback(close)
