"""``warm()`` and ``awarm()``: fill the fallback cache before an outage rather than during one.

Each prompt goes through the chain's own live path (:meth:`FallbackChain.complete`: breakers,
retries, write-through), so a warmed entry sits under exactly the key the chain looks up at run
time. The two functions are thin drivers over one :class:`~._run.WarmRun`: they carry out the
steps it names (a cache lookup, a send, a pause, a wait for what is in flight), in threads or
on the running event loop, and nothing else. What a run decides is documented in ``_run.py``
(skip, resume, dry run), ``_pacing.py`` (concurrency, outage pauses, Retry-After, ``max_wait``),
``_outcome.py`` (what counts as warmed) and ``_prompts.py`` (the input).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Unpack

from ..chain import FallbackChain, Sleep
from ._outcome import Prompt, SendResult, ask, ask_async
from ._prompts import PromptSource, resolve_prompts
from ._run import Collect, LookUp, Send, WarmOptions, WarmReport, WarmRun

if TYPE_CHECKING:
    from ..chain import AsyncFallbackChain  # the async driver loads on first use

__all__ = ["awarm", "warm"]


def warm(
    chain: FallbackChain,
    prompts: PromptSource,
    *,
    sleep: Callable[[float], None] | None = None,
    **options: Unpack[WarmOptions],
) -> WarmReport:
    """Answer every prompt through ``chain``'s live tiers so its cache holds the answers.

    ``prompts`` is a JSON Lines file path or an iterable of :class:`WarmRequest` / mappings in
    the file's line format. ``options`` are :class:`WarmOptions` (``concurrency``, ``refresh``,
    ``strict``, ``dry_run``, ``progress``, ``max_wait``, ``clock``). ``progress`` is called in
    the calling thread once per prompt; an exception it raises (``KeyboardInterrupt``
    included) stops the run after the requests in flight finish (their answers are kept).
    ``clock`` and ``sleep`` default to the chain's.

    Raises :class:`InputFileError` for a missing or unreadable file, or any bad line when
    ``strict``; :class:`ValueError` when ``concurrency < 1`` or the chain's cache is disabled.
    """
    run = WarmRun(chain, *resolve_prompts(prompts), options)
    return _drive_threads(chain, run, sleep or chain.sleep)


async def awarm(
    chain: AsyncFallbackChain,
    prompts: PromptSource,
    *,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    **options: Unpack[WarmOptions],
) -> WarmReport:
    """The asyncio form of :func:`warm` for an :class:`AsyncFallbackChain`.

    Requests run as tasks on the running loop; file and cache reads run in worker threads.
    Cancelling the task cancels the requests in flight (neutral for the breakers); answers
    already written stay in the cache.
    """
    run = WarmRun(chain, *await asyncio.to_thread(resolve_prompts, prompts), options)
    return await _drive_tasks(chain, run, sleep or chain.sleep)


def _drive_threads(
    chain: FallbackChain, run: WarmRun, pause: Callable[[float], None]
) -> WarmReport:
    in_flight: dict[concurrent.futures.Future[SendResult], Prompt] = {}
    pool = concurrent.futures.ThreadPoolExecutor(
        max_workers=run.concurrency, thread_name_prefix="fallbackchain-warm"
    )
    try:
        while (step := run.next_step(len(in_flight))) is not None:
            match step:
                case LookUp(item):
                    run.looked_up(item, chain.cache.get(item.key or ""))
                case Send(item):
                    in_flight[pool.submit(ask, chain, item)] = item
                case Sleep(seconds):
                    pause(seconds)
                case Collect(timeout):
                    done, _ = concurrent.futures.wait(
                        in_flight, timeout=timeout, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    run.collect(in_flight, done)
    finally:
        for future in in_flight:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    return run.report()


async def _drive_tasks(
    chain: AsyncFallbackChain, run: WarmRun, pause: Callable[[float], Awaitable[None]]
) -> WarmReport:
    in_flight: dict[asyncio.Task[SendResult], Prompt] = {}
    try:
        while (step := run.next_step(len(in_flight))) is not None:
            match step:
                case LookUp(item):
                    cached = await asyncio.to_thread(chain.cache.get, item.key or "")
                    run.looked_up(item, cached)
                case Send(item):
                    in_flight[asyncio.create_task(ask_async(chain, item))] = item
                case Sleep(seconds):
                    await pause(seconds)
                case Collect(timeout):
                    done, _ = await asyncio.wait(
                        in_flight, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                    )
                    run.collect(in_flight, done)
    finally:
        for task in in_flight:
            task.cancel()
        if in_flight:
            with contextlib.suppress(BaseException):
                await asyncio.gather(*in_flight, return_exceptions=True)
    return run.report()
