""":class:`AsyncFallbackChain`: the chain for asyncio, a driver that performs the core's steps.

The asyncio twin of ``_sync``: every decision is the core's; this module awaits what a step
names. A wait for data is bounded by a :class:`_Watchdog` timer re-armed per chunk (cheaper
than an ``asyncio.timeout`` rescheduled twice per chunk; one per request), a whole completion
by ``asyncio.timeout``. Reporting a permit to a store that waits (Redis) is shielded: a
cancel meanwhile cannot leave a breaker slot taken or an outcome unrecorded; the in-process
store's steps run in place, where no cancel can reach them. Disk cache I/O runs in a worker
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any, Self

import openai

from .._results import ChainEvent, ChainResponse
from .._timing import AsyncSleep, async_sleep_unless_testing, default_async_sleep, is_testing
from ..breaker import Permit
from . import _steps as kind
from ._chain import ChainBase, ChainStreamBase, OpenedStream
from ._core import RequestRun
from ._race import Dismissal, Entrant, Race
from ._request import Request, ResponseSlot
from ._watch import AttemptWatch

if TYPE_CHECKING:  # the drop-in surfaces load on first use: named as strings in the base
    from ..cache import CachedAnswer
    from ._dropin import AsyncChainChat  # noqa: F401
    from ._responses_dropin import AsyncChainResponses  # noqa: F401

__all__ = ["AsyncChainStream", "AsyncFallbackChain"]

logger = logging.getLogger("fallbackchain")
_current_task = asyncio.current_task
_SLACK = 1e-3
"""asyncio's selectors wait in whole milliseconds (rounded up): a timer may fire up to 1 ms
late anyway, so a watchdog's deadline moving earlier by less keeps the timer it has."""


class AsyncChainStream(ChainStreamBase[AsyncIterator[ChainEvent]]):
    """A chain's answer as an async iterator of :class:`~fallbackchain.ChainEvent`.

    The asyncio twin of :class:`ChainStream`: ``async for``, ``async with``, ``aclose()``.
    Cancelling the consuming task is neutral for the breakers.
    """

    def __aiter__(self) -> AsyncIterator[ChainEvent]:
        return self._events  # iterate the driver directly: one coroutine less per event

    async def __anext__(self) -> ChainEvent:
        return await anext(self._events)

    async def aclose(self) -> None:
        """Stop early, release the connection; neutral for the breakers.

        From another task while one is iterating, as the SDK's ``AsyncStream.close()``: the
        upstream stream is closed and that task's iteration ends.
        """
        aclose = getattr(self._events, "aclose", None)
        if aclose is None:
            return
        try:
            await aclose()
        except RuntimeError:  # "asynchronous generator is already running": another task
            if (reading := self._slot.cancel()) is not None:
                with contextlib.suppress(Exception):
                    await reading.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


class AsyncFallbackChain(
    ChainBase[
        AsyncChainStream,
        openai.AsyncOpenAI,
        AsyncSleep,
        Coroutine[Any, Any, ChainResponse],
        "AsyncChainChat",
        "AsyncChainResponses",
    ]
):
    """The asyncio twin of :class:`FallbackChain` (same config, tiers, breakers and cache).

    Disk cache I/O runs in a worker thread, never on the event loop.
    """

    _SURFACES = ("AsyncChainChat", "AsyncChainResponses")

    def _client_type(self) -> type[openai.AsyncOpenAI]:
        return openai.AsyncOpenAI

    def _default_sleep(self) -> AsyncSleep:
        return default_async_sleep

    async def _answer(self, prepare: Callable[[], Request]) -> ChainResponse:
        async with self._stream(prepare()) as stream:
            async for _ in stream:
                pass
            return stream.response

    def _stream(self, request: Request) -> AsyncChainStream:
        slot = ResponseSlot(request.endpoint)
        return AsyncChainStream(self._drive(request, slot), slot)

    async def aclose(self) -> None:
        """As the sync chain's ``close()``: the chain's own clients and cache are closed.

        Cache I/O runs in a worker thread unless the cache has an async ``aclose``.
        """
        if self._closed:
            return
        self._closed = True  # from here every call raises ChainClosedError
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

    async def _drive(self, request: Request, slot: ResponseSlot) -> AsyncIterator[ChainEvent]:
        """Perform the steps of ``request``'s flow (see ``_flow`` for the protocol).

        A stream is read here, inline: each event is yielded straight to the consumer, with
        no generator in between.
        """
        run, steps = self._start(request, slot)
        clock = self._clock
        # One watchdog bounds every wait for data of the request: its one timer serves them all.
        watchdog = _Watchdog(asyncio.get_running_loop())
        try:
            for step in steps:
                try:
                    if not isinstance(step, kind.ReadStream):
                        if isinstance(step, kind.Show):
                            for event in step.events:
                                handed = clock()
                                yield event
                                run.pause(clock() - handed)  # the consumer's time, not upstream
                            steps.done()
                        else:
                            steps.done(await self._perform(request, run, step, watchdog))
                        continue
                    opened: OpenedStream = step.opened
                    attempt, watch = step.attempt, step.watch
                    slot.reading = opened.stream
                    async with opened.stream:
                        assembler = opened.assembler
                        delta = run.display.delta
                        source = attempt.tier.name
                        for read in opened.pieces:
                            for event in delta(read, source):
                                yield event
                        if not opened.ended:
                            next_item = opened.items.__anext__
                            add, check = assembler.add, watch.after_wait
                            limited = attempt.permit.limited
                            after = opened.after
                            display = run.display
                            record = display.record_text
                            arm = watchdog.arm
                            try:
                                while True:
                                    before = clock()
                                    gap = before - after
                                    if gap > 0:  # the consumer held the stream: not upstream time
                                        run.paused += gap
                                    if watch.content_seen:  # watch.budget, inline: once per chunk
                                        left = run.deadline - (before - run.started - run.paused)
                                        arm(watch.idle if watch.idle < left else max(left, 0.0))
                                    else:
                                        arm(watch.budget(before))
                                    try:
                                        item = await next_item()
                                    except StopAsyncIteration:
                                        break
                                    except asyncio.CancelledError:
                                        watchdog.raise_if_expired(watch, before)
                                        raise
                                    watchdog.deadline = None  # disarmed
                                    after = clock()
                                    piece = add(item)
                                    if watch.content_seen:  # watch.after_wait's checks, inline
                                        if after - before > watch.idle or (
                                            after - run.started - run.paused > run.deadline
                                        ):
                                            raise watch.expired(before)
                                    elif (
                                        check(before, after, got_content=assembler.content_seen)
                                        and limited
                                    ):
                                        await attempt.permit.afirst_content()
                                    if piece:
                                        if piece.__class__ is str and display.plain:
                                            record(piece)  # display.delta's common case, inline
                                            yield ChainEvent("delta", piece, source)
                                        else:
                                            for event in delta(piece, source):
                                                yield event
                            finally:
                                watchdog.settle()
                    steps.done(opened.finish(request.model))
                except BaseException as exc:  # noqa: BLE001 - back into the flow, which decides
                    steps.failed(exc)
        except GeneratorExit:
            if not slot.cancelled:
                raise  # an ordinary aclose(): the generator must exit
            # closed from another task: the request ended neutrally, and so does iteration
        finally:
            watchdog.close()

    async def _perform(
        self, request: Request, run: RequestRun, step: kind.Step, watchdog: _Watchdog
    ) -> Any:
        """Do what ``step`` names (every step but ``ReadStream`` and ``Show``)."""
        if isinstance(step, kind.Report):
            permit = step.permit
            if permit.in_place:  # no I/O: no task to shield it, and no await to cancel
                return permit.end(step.outcome)
            return await asyncio.shield(permit.aend(step.outcome))
        if isinstance(step, kind.OpenStream):
            if step.hedge_after is not None:
                return await self._race(request, run, step)
            return await self._open_stream(request, run, step.attempt, step.watch, watchdog)
        if isinstance(step, kind.Acquire):
            gate = step.tier.gate
            return gate.acquire() if gate.in_place else await gate.aacquire()
        if isinstance(step, kind.FetchWhole):
            return await self._fetch_whole(request, run, step)
        if isinstance(step, kind.CloseStream):
            return await step.opened.stream.close()
        if isinstance(step, kind.ReadCache):
            return await self._read_cache(step.key)
        if isinstance(step, kind.WriteCache):
            return await self._write_cache(step.key, step.stored)
        if isinstance(step, kind.Sleep):
            if step.tier is not None and self._sleep is default_async_sleep and not is_testing():
                return await step.tier.gate.asleep_unless_open(step.seconds)
            return await async_sleep_unless_testing(self._sleep, step.seconds)
        if isinstance(step, kind.AwaitSlot):
            return await step.tier.gate.await_change(step.seconds, since=step.since)
        raise TypeError(f"not a step for this driver: {step!r}")

    async def _read_cache(self, key: str) -> CachedAnswer | None:
        """Cache read off the event loop: the cache's own ``aget`` if it has one, else a thread.

        An answer the memory layer holds is served on the loop, with no thread hop (an
        outage's hot path: a hop costs far more than the lookup under concurrency).
        """
        held = getattr(self.cache, "get_held", None)
        if held is not None:
            try:
                answer: CachedAnswer | None = held(key)
            except Exception:
                logger.exception("cache read failed (ignored)")
                answer = None
            if answer is not None:
                return answer
        aget = getattr(self.cache, "aget", None)
        if aget is None:
            return await asyncio.to_thread(self._lookup, key)
        try:
            result: CachedAnswer | None = await aget(key)
        except Exception:
            logger.exception("cache read failed (ignored)")
            return None
        return result

    async def _write_cache(self, key: str, stored: Any) -> bool:
        """Cache write: the cache's own ``aput`` if it has one, else ``put_later`` on the loop.

        ``put_later`` does no I/O (a snapshot and an enqueue; a writer thread writes the
        disk), so it costs less on the loop than a hop to a thread would.
        """
        aput = getattr(self.cache, "aput", None)
        if aput is None:
            return self._store(key, stored)
        try:
            return bool(await aput(key, stored))
        except Exception:
            logger.exception("cache write failed (ignored)")
            return False

    async def _open_stream(
        self,
        request: Request,
        run: RequestRun,
        attempt: kind.TryTier,
        watch: AttemptWatch,
        watchdog: _Watchdog,
    ) -> OpenedStream:
        """Send the attempt and read until its first content (or its end); nothing is shown.

        ``watchdog`` bounds the wait for headers and then each chunk's (cheaper than an
        ``asyncio.timeout``, which schedules and cancels a timer of its own); it is left
        disarmed. May run in a task of its own (a hedge race): it reads the run, never
        changes it.
        """
        clock = self._clock
        tier = attempt.tier
        before = clock()
        budget = watch.budget(before)
        kwargs = request.kwargs(
            tier, streaming=True, read=run.read_budget(tier, before, request.timeout)
        )
        try:
            watchdog.arm(budget)
            try:
                stream = await request.endpoint.acreate(self._clients[tier.provider], kwargs)
            except asyncio.CancelledError:
                watchdog.raise_if_expired(watch, before)
                raise
            watchdog.deadline = None  # disarmed
            watch.responded = True
            try:
                opened = OpenedStream(stream, aiter(stream), request.endpoint.assembler(), clock())
                watch.after_wait(before, opened.after, got_content=False)
                assembler = opened.assembler
                while not assembler.content_seen:
                    before = clock()
                    watchdog.arm(watch.budget(before))
                    try:
                        item = await anext(opened.items)
                    except StopAsyncIteration:
                        opened.ended = True
                        break
                    except asyncio.CancelledError:
                        watchdog.raise_if_expired(watch, before)
                        raise
                    watchdog.deadline = None  # disarmed
                    opened.after = clock()
                    piece = assembler.add(item)
                    first = watch.after_wait(
                        before, opened.after, got_content=assembler.content_seen
                    )
                    if first and attempt.permit.limited:
                        await attempt.permit.afirst_content()  # lets waiting callers in
                    if piece:
                        opened.pieces.append(piece)
            except BaseException:
                await stream.close()
                raise
        finally:
            watchdog.settle()
        return opened

    async def _open_entrant(
        self, request: Request, run: RequestRun, entrant: Entrant
    ) -> OpenedStream:
        """:meth:`_open_stream` for a race entrant, in its own task with its own watchdog."""
        watchdog = _Watchdog(asyncio.get_running_loop())
        try:
            return await self._open_stream(request, run, entrant.attempt, entrant.watch, watchdog)
        finally:
            watchdog.close()

    async def _race(self, request: Request, run: RequestRun, step: kind.OpenStream) -> kind.Opened:
        """Open ``step``'s attempt in a task, hedge it when silent; the race's end.

        As the sync chain's ``_race``, but a loser is cancelled at once: its request closed
        and its permit released (shielded: a cancel meanwhile cannot leave a slot taken).
        """
        race = Race(run, step.attempt, step.watch)
        tasks: dict[asyncio.Task[OpenedStream], Entrant] = {}
        end: kind.Opened | None = None  # the race's end, until returned

        def enter(entrant: Entrant) -> None:
            tasks[asyncio.create_task(self._open_entrant(request, run, entrant))] = entrant

        try:
            enter(race.first)
            done, _ = await asyncio.wait(tasks, timeout=step.hedge_after)
            acquire = race.hedge() if not done else None
            if acquire is not None:
                permit = await acquire.tier.gate.aacquire()
                hedge = race.start_hedge(acquire, permit, request.timeout)
                if hedge is not None:
                    enter(hedge)
            while end is None:
                if not done:
                    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                verdict = race.judge(
                    [(tasks.pop(task), _task_outcome(task)) for task in done],
                    tuple(tasks.values()),
                )
                done = set()
                end = verdict.end
                for dismissal in verdict.dismissed:
                    await asyncio.shield(_dismiss(dismissal))
            losers = [_drop(task, entrant.attempt.permit) for task, entrant in tasks.items()]
            tasks.clear()
            if losers:
                await asyncio.shield(asyncio.gather(*losers))
            return end  # noqa: TRY300 - the except below cleans up after any await here
        except BaseException:
            # the caller reports the first attempt; a hedge, and an opened winner, are here
            cleanup = [
                _drop(task, None if entrant is race.first else entrant.attempt.permit)
                for task, entrant in tasks.items()
            ]
            if end is not None and isinstance(end.stream, OpenedStream):
                permit = None if end.attempt is race.first.attempt else end.attempt.permit
                cleanup.append(_close_and_release(end.stream, permit))
            if cleanup:
                await asyncio.shield(asyncio.gather(*cleanup, return_exceptions=True))
            raise

    async def _fetch_whole(self, request: Request, run: RequestRun, step: kind.FetchWhole) -> Any:
        tier = step.attempt.tier
        before = self._clock()
        budget = run.read_budget(tier, before, request.timeout)
        kwargs = request.kwargs(tier, streaming=False, read=budget)
        try:
            async with asyncio.timeout(budget):
                answer = await request.endpoint.acreate(self._clients[tier.provider], kwargs)
        except TimeoutError:
            raise run.whole_timed_out(before, budget) from None
        step.watch.answered_whole(self._clock())
        return request.endpoint.check(answer)


class _Watchdog:
    """Cancels the current task when a wait outlives its budget.

    Cheaper per chunk than rescheduling an ``asyncio.timeout`` twice: arming stores a float,
    and the one timer only fires once per budget period, re-arming itself if the deadline
    moved on meanwhile. :meth:`expired` tells a cancellation it caused from any other one.
    """

    __slots__ = ("_fired", "_handle", "_handle_when", "_loop", "_task", "_time", "deadline")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._time = loop.time
        self._task = asyncio.current_task()
        self._handle: asyncio.TimerHandle | None = None
        self._handle_when = math.inf  # when the handle fires (inf: no handle)
        self.deadline: float | None = None
        """The loop time the current wait ends at; ``None`` (set by the driver): disarmed."""
        self._fired = False

    def arm(self, seconds: float) -> None:
        """Bound the wait that starts now to ``seconds``; once per chunk, so kept flat."""
        # The task waiting now: a consumer may iterate from another task (wait_for does).
        self._task = _current_task(self._loop)
        self._fired = False
        when = self.deadline = self._time() + seconds
        # The timer is only ever moved earlier, never per chunk; and not for less than
        # _SLACK (the first-token phase recomputes the same deadline, microseconds apart).
        if when < self._handle_when - _SLACK:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(when, self._fire)
            self._handle_when = when

    def _fire(self) -> None:
        self._handle = None
        self._handle_when = math.inf
        deadline = self.deadline
        if deadline is None or self._task is None:
            return
        if self._time() >= deadline:
            self._fired = True
            self._task.cancel()
        else:
            self._handle = self._loop.call_at(deadline, self._fire)
            self._handle_when = deadline

    def expired(self) -> bool:
        """True if the cancellation being handled is this watchdog's own (and undo it)."""
        if not self._fired or self._task is None:
            return False
        self._fired = False
        return self._task.uncancel() == 0  # another cancel pending: let it through

    def raise_if_expired(self, watch: AttemptWatch, before: float) -> None:
        """In a cancellation's handler: if it is this watchdog's own, raise the timeout.

        The error is ``watch``'s for a wait that began at ``before``; any other cancellation
        is left to go on (the caller re-raises it).
        """
        if self.expired():
            raise watch.expired(before) from None

    def settle(self) -> None:
        """Disarm after a stretch of waits; the timer stays for the next (see :meth:`close`)."""
        self.deadline = None
        if self._fired and self._task is not None:  # our cancel was swallowed somewhere below
            self._fired = False
            self._task.uncancel()

    def close(self) -> None:
        """:meth:`settle`, and cancel the timer: no more waits."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
            self._handle_when = math.inf
        self.settle()


def _task_outcome(task: asyncio.Task[OpenedStream]) -> object:
    """What a race entrant ended with: its opened stream, or the exception it raised."""
    if task.cancelled():
        return asyncio.CancelledError()
    return task.exception() or task.result()


async def _dismiss(dismissal: Dismissal) -> None:
    """Close a race entrant that does not go on (if it opened), report its permit."""
    try:
        if dismissal.opened is not None:
            await dismissal.opened.stream.close()
    finally:
        await dismissal.entrant.attempt.permit.aend(dismissal.outcome)


async def _drop(task: asyncio.Task[OpenedStream], permit: Permit | None) -> None:
    """Cancel a race entrant nobody waits for: its request closed, ``permit`` released."""
    try:
        task.cancel()
        await asyncio.wait({task})
        if not task.cancelled() and task.exception() is None:
            await task.result().stream.close()
    finally:
        if permit is not None:
            await permit.arelease()


async def _close_and_release(opened: OpenedStream, permit: Permit | None) -> None:
    try:
        await opened.stream.close()
    finally:
        if permit is not None:
            await permit.arelease()
