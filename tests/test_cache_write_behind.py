"""The cache's write-behind path (``put_later``) and the rule against rewriting an identical answer.

* ``put_later`` holds the answer in memory at once, and a lookup right after it hits, even with
  no memory layer and the disk write still waiting (the database locked by another connection);
  the caller never waits for the disk.
* everything queued is on disk after ``close()`` / ``flush()`` / a clean interpreter exit, and
  after a chain's ``close()`` / ``aclose()``; a ``kill -9`` mid-writes leaves a readable cache.
* a full queue drops its oldest write, counted and logged once.
* an answer identical to the one a key holds (same model and choices) is not rewritten while the
  held one is younger than half the ttl; a different or older one is.
* storing an answer validates nothing: the memory layer validates on the first hit only.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import select
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion

from fallbackchain import AsyncFallbackChain, CacheConfig, FallbackChain, ResponseCache
from fallbackchain.cache._rows import LocalAnswer
from fallbackchain.cache._writer import QueuedWrite, WriteBehind
from fallbackchain.testing import FaultServer

from .conftest import make_config, user

MODEL = "test-model"
TTL = 3600


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def completion(text: str, cid: str = "c", created: int = 0) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": cid,
            "object": "chat.completion",
            "created": created,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
        }
    )


def key(i: int | str) -> str:
    return f"fc1-{i}"


def text_at(cache: ResponseCache, k: str) -> str | None:
    hit = cache.get(k)
    return None if hit is None else hit.completion.choices[0].message.content


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def open_cache(directory: Path) -> Iterator[Callable[..., ResponseCache]]:
    opened: list[ResponseCache] = []

    def factory(**kwargs: Any) -> ResponseCache:
        settings = {"directory": str(directory), "ttl": TTL}
        settings.update({k: v for k, v in kwargs.items() if k in ("memory_items", "ttl")})
        rest = {k: v for k, v in kwargs.items() if k not in ("memory_items", "ttl")}
        cache = ResponseCache(CacheConfig(**settings), **rest)
        opened.append(cache)
        return cache

    yield factory
    for cache in opened:
        cache.close()


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold SQLite's write lock on the cache database from another connection (readers go on)."""
    con = sqlite3.connect(directory / "cache.db", isolation_level=None, timeout=5)
    con.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        con.execute("ROLLBACK")
        con.close()


def disk_value(directory: Path, k: str) -> str:
    """The stored row for ``k``, read with plain SQLite (no cache involved)."""
    uri = (directory / "cache.db").as_uri() + "?mode=ro"
    with contextlib.closing(sqlite3.connect(uri, uri=True)) as con:
        (value,) = con.execute("SELECT value FROM Cache WHERE key = ?", (k,)).fetchone()
    return str(value)


# --------------------------------------------------------------------------------------------
# put_later: seen at once, written behind, flushed
# --------------------------------------------------------------------------------------------


def test_everything_put_later_is_on_disk_after_close(open_cache: Any) -> None:
    cache = open_cache()
    for i in range(300):
        assert cache.put_later(key(i), completion(f"answer {i}"))
    cache.close()
    fresh = open_cache(memory_items=0)
    assert [text_at(fresh, key(i)) for i in range(300)] == [f"answer {i}" for i in range(300)]
    assert fresh.stats().entries == 300


def test_the_writer_waits_briefly_so_one_transaction_carries_several_answers() -> None:
    """Sequential requests: the writer lingers before a write rather than waking per answer."""
    batches: list[tuple[float, list[str]]] = []
    written = threading.Event()

    def write_batch(batch: list[tuple[str, QueuedWrite]]) -> None:
        batches.append((time.monotonic(), [key for key, _ in batch]))
        written.set()

    writes = WriteBehind(
        8,
        write_batch=write_batch,
        write_one=lambda key, item: None,
        on_drop=lambda: None,
        on_thread_end=lambda: None,
    )
    item = QueuedWrite(LocalAnswer({}, 0.0), check_disk=False)
    start = time.monotonic()
    writes.enqueue("a", item)
    writes.enqueue("b", item)
    assert written.wait(10)
    ((at, keys),) = batches
    assert at - start >= 0.04  # it waited for more (0.05 s) before writing
    assert sorted(keys) == ["a", "b"]
    writes.enqueue("c", item)
    assert writes.flush(timeout=10)  # a flush does not wait for the linger
    assert [keys for _, keys in batches] == [["a", "b"], ["c"]]
    writes.stop()


def test_flush_writes_the_queue_and_the_cache_stays_open(open_cache: Any) -> None:
    cache = open_cache()
    for i in range(50):
        cache.put_later(key(i), completion(f"answer {i}"))
    assert cache.flush(timeout=30)
    stats = cache.stats()
    assert (stats.stores, stats.queued, stats.errors) == (50, 0, 0)
    other = open_cache(memory_items=0)  # another handle on the same directory sees them
    assert text_at(other, key(49)) == "answer 49"
    assert cache.put_later(key("after"), completion("after the flush"))


def test_a_lookup_right_after_put_later_hits_while_the_disk_write_waits(
    open_cache: Any, directory: Path
) -> None:
    cache = open_cache(memory_items=0)  # no memory layer: only the queue can answer
    assert cache.put(key("k"), completion("old"))  # put() is synchronous: on disk now
    with locked(directory):
        started = time.perf_counter()
        assert cache.put_later(key("k"), completion("new"))
        assert time.perf_counter() - started < 0.05  # the caller never waits for the disk
        assert text_at(cache, key("k")) == "new"  # the pending answer, not the disk's "old"
        assert '"old"' in disk_value(directory, key("k"))  # not written yet
    assert cache.flush(timeout=30)
    assert text_at(open_cache(memory_items=0), key("k")) == "new"


def test_put_later_is_held_in_memory_at_once(open_cache: Any, directory: Path) -> None:
    cache = open_cache()
    with locked(directory):
        cache.put_later(key("k"), completion("answer"))
        assert cache.get_held(key("k")) is not None
        assert cache.stats().memory_entries == 1


def test_put_stays_synchronous(open_cache: Any) -> None:
    cache = open_cache()
    assert cache.put(key("k"), completion("answer"))
    assert cache.stats().queued == 0
    assert text_at(open_cache(memory_items=0), key("k")) == "answer"


def test_put_supersedes_an_older_queued_answer(open_cache: Any, directory: Path) -> None:
    cache = open_cache(memory_items=0)
    with locked(directory):
        cache.put_later(key("a"), completion("blocker"))  # the writer waits on this one
        cache.put_later(key("k"), completion("queued"))
    assert cache.put(key("k"), completion("direct"))
    assert cache.flush(timeout=30)
    assert text_at(open_cache(memory_items=0), key("k")) == "direct"


def test_an_answer_put_later_and_then_mutated_is_stored_as_it_was(open_cache: Any) -> None:
    cache = open_cache()
    answer = completion("original")
    cache.put_later(key("k"), answer)
    answer.choices[0].message.content = "changed by the caller"
    assert text_at(cache, key("k")) == "original"
    cache.close()
    assert text_at(open_cache(memory_items=0), key("k")) == "original"


def test_incomplete_answers_and_closed_caches_are_refused(open_cache: Any) -> None:
    cache = open_cache()
    cut = completion("cut")
    cut.choices[0].finish_reason = None  # type: ignore[assignment]
    assert cache.put_later(key("cut"), cut) is False
    cache.close()
    assert cache.put_later(key("k"), completion("late")) is False


def test_storing_validates_nothing_and_the_first_hit_validates_once(
    open_cache: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = open_cache()
    answer = completion("answer")
    calls = 0
    original = ChatCompletion.model_validate.__func__  # type: ignore[attr-defined]

    def counting(cls: type[ChatCompletion], *args: Any, **kwargs: Any) -> ChatCompletion:
        nonlocal calls
        calls += 1
        return original(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(ChatCompletion, "model_validate", classmethod(counting))
    assert cache.put_later(key("k"), answer)
    assert cache.put(key("j"), answer)
    assert cache.flush(timeout=30)
    assert calls == 0
    assert text_at(cache, key("k")) == "answer"
    assert text_at(cache, key("k")) == "answer"
    assert calls == 1


# --------------------------------------------------------------------------------------------
# A full queue
# --------------------------------------------------------------------------------------------


def test_a_full_queue_drops_its_oldest_write_counted_and_logged_once(
    open_cache: Any, directory: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = open_cache(write_queue=2)
    with caplog.at_level(logging.WARNING, logger="fallbackchain"), locked(directory):
        for i in range(6):
            assert cache.put_later(key(i), completion(f"answer {i}"))
        stats = cache.stats()
        assert stats.queued <= 3  # two waiting, perhaps one taken by the blocked writer
        assert stats.dropped >= 3
        assert all(text_at(cache, key(i)) == f"answer {i}" for i in range(6))  # memory has all
    assert cache.flush(timeout=30)
    stats = cache.stats()
    assert stats.stores + stats.dropped == 6
    fresh = open_cache(memory_items=0)
    assert [text_at(fresh, key(i)) for i in (4, 5)] == ["answer 4", "answer 5"]  # the newest
    assert sum(text_at(fresh, key(i)) is not None for i in range(6)) == stats.stores
    warnings = [r for r in caplog.records if "queue is full" in r.getMessage()]
    assert len(warnings) == 1
    assert not any(f"answer {i}" in warnings[0].getMessage() for i in range(6))


def test_write_queue_must_be_positive(directory: Path) -> None:
    with pytest.raises(ValueError, match="write_queue"):
        ResponseCache(CacheConfig(directory=str(directory)), write_queue=0)


# --------------------------------------------------------------------------------------------
# No rewrite of an identical answer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("memory_items", [1000, 0])
@pytest.mark.parametrize("method", ["put", "put_later"])
def test_an_identical_answer_is_not_rewritten(
    open_cache: Any, memory_items: int, method: str
) -> None:
    clock = Clock()
    cache = open_cache(memory_items=memory_items, clock=clock)
    store = getattr(cache, method)
    assert store(key("k"), completion("same", cid="first", created=1))
    assert cache.flush(timeout=30)
    first = open_cache(memory_items=0, clock=clock).get(key("k"))
    assert first is not None
    clock.now += TTL * 0.5 - 1  # just younger than half the ttl
    assert store(key("k"), completion("same", cid="second", created=2))  # only metadata differs
    assert cache.flush(timeout=30)
    stats = cache.stats()
    assert (stats.stores, stats.unchanged) == (1, 1)
    again = open_cache(memory_items=0, clock=clock).get(key("k"))
    assert again is not None
    assert (again.stored_at, again.completion.id) == (first.stored_at, "first")  # untouched


@pytest.mark.parametrize("memory_items", [1000, 0])
def test_an_identical_answer_older_than_half_the_ttl_is_rewritten(
    open_cache: Any, memory_items: int
) -> None:
    clock = Clock()
    cache = open_cache(memory_items=memory_items, clock=clock)
    cache.put_later(key("k"), completion("same"))
    assert cache.flush(timeout=30)
    clock.now += TTL * 0.5
    cache.put_later(key("k"), completion("same"))
    assert cache.flush(timeout=30)
    assert (cache.stats().stores, cache.stats().unchanged) == (2, 0)
    hit = open_cache(memory_items=0, clock=clock).get(key("k"))
    assert hit is not None and hit.stored_at == clock.now  # refreshed: it will not expire soon


def test_a_different_answer_is_rewritten(open_cache: Any) -> None:
    cache = open_cache()
    cache.put_later(key("k"), completion("one"))
    cache.put_later(key("k"), completion("two"))
    cache.put_later(key("k"), completion("two"))  # identical to the queued one: not queued again
    assert cache.flush(timeout=30)
    assert cache.stats().unchanged == 1
    assert text_at(open_cache(memory_items=0), key("k")) == "two"


@pytest.mark.slow
def test_an_answer_whose_disk_write_failed_is_written_again(
    open_cache: Any, directory: Path
) -> None:
    # held in memory but never on disk: the identical rule must not keep it off the disk
    cache = open_cache()
    cache.put(key("seed"), completion("seed"))  # create the database
    with locked(directory):
        assert cache.put(key("k"), completion("same")) is False  # locked past the timeout
    assert cache.put(key("k"), completion("same"))
    assert text_at(open_cache(memory_items=0), key("k")) == "same"


# --------------------------------------------------------------------------------------------
# Chains: the answer is on disk once the chain is closed
# --------------------------------------------------------------------------------------------


def test_a_chains_answers_are_on_disk_after_close(tmp_path: Path, server: FaultServer) -> None:
    config = make_config(tmp_path, server.base_url)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
    with FallbackChain(config, client=client) as chain:
        answers = {f"p{i}": chain.complete(user(f"p{i}")).text for i in range(20)}
        keys = {p: chain.cache_key(user(p)) for p in answers}
    client.close()
    with ResponseCache(dataclass_replace(config.cache, memory_items=0)) as fresh:
        assert {p: text_at(fresh, keys[p]) for p in answers} == answers


def test_a_chain_flushes_a_cache_it_was_given_on_close(tmp_path: Path, server: FaultServer) -> None:
    config = make_config(tmp_path, server.base_url)
    cache = ResponseCache(config.cache)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
    with FallbackChain(config, client=client, cache=cache) as chain:
        text = chain.complete(user("given")).text
        k = chain.cache_key(user("given"))
    client.close()
    with ResponseCache(dataclass_replace(config.cache, memory_items=0)) as fresh:
        assert text_at(fresh, k) == text
    assert text_at(cache, k) == text  # the chain did not close a cache it did not open
    cache.close()


@pytest.mark.slow
def test_an_async_chains_answers_are_on_disk_after_aclose(
    tmp_path: Path, server: FaultServer
) -> None:
    config = make_config(tmp_path, server.base_url)

    async def main() -> dict[str, tuple[str, str]]:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="sk-test")
        chain = AsyncFallbackChain(config, client=client)
        prompts = [f"a{i}" for i in range(20)]
        responses = await asyncio.gather(*(chain.complete(user(p)) for p in prompts))
        pairs = zip(prompts, responses, strict=True)
        out = {p: (chain.cache_key(user(p)) or "", r.text) for p, r in pairs}
        await chain.aclose()
        await client.close()
        return out

    answers = asyncio.run(main())
    with ResponseCache(dataclass_replace(config.cache, memory_items=0)) as fresh:
        assert all(text_at(fresh, k) == text for k, text in answers.values())


def dataclass_replace(config: CacheConfig, **changes: Any) -> CacheConfig:
    return dataclasses.replace(config, **changes)


# --------------------------------------------------------------------------------------------
# Processes: a clean exit flushes; kill -9 loses the queue, never a row
# --------------------------------------------------------------------------------------------

EXITER = textwrap.dedent(
    """
    import sys
    from openai.types.chat import ChatCompletion
    from fallbackchain import CacheConfig, ResponseCache

    cache = ResponseCache(CacheConfig(directory=sys.argv[1]))
    for i in range(int(sys.argv[2])):
        cache.put_later(f"fc1-{i}", ChatCompletion.model_validate({
            "id": "c", "object": "chat.completion", "created": 0, "model": "test-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"answer {i}"}}],
        }))
    # no close(): the interpreter's exit writes the queue
    """
)


@pytest.mark.slow
def test_a_clean_exit_without_close_writes_the_queue(open_cache: Any, directory: Path) -> None:
    subprocess.run([sys.executable, "-c", EXITER, str(directory), "200"], check=True, timeout=60)
    fresh = open_cache(memory_items=0)
    assert [text_at(fresh, key(i)) for i in range(200)] == [f"answer {i}" for i in range(200)]


WRITER = textwrap.dedent(
    """
    import sys
    from openai.types.chat import ChatCompletion
    from fallbackchain import CacheConfig, ResponseCache

    cache = ResponseCache(CacheConfig(directory=sys.argv[1], memory_items=0))
    i = 0
    while True:
        # every 7th answer is large enough to be stored in its own file, not inline
        text = f"answer {i} " + ("x" * 40_000 if i % 7 == 0 else "y" * 200)
        cache.put_later(f"fc1-{i % 3000}", ChatCompletion.model_validate({
            "id": f"c{i}", "object": "chat.completion", "created": 0, "model": "test-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
        }))
        if i % 10 == 9:
            cache.flush()
            print(i, flush=True)  # every answer up to i is on disk
        i += 1
    """
)


@pytest.mark.slow  # writer subprocesses killed mid-write
def test_kill_9_mid_writes_leaves_a_readable_cache(open_cache: Any, directory: Path) -> None:
    for at_least in (20, 7, 35):  # three kills at different points
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        confirmed = -1
        lines = 0
        deadline = time.monotonic() + 60
        try:
            while lines < at_least and time.monotonic() < deadline:
                ready, _, _ = select.select([proc.stdout], [], [], 5.0)
                if ready:
                    line = proc.stdout.readline()
                    if not line:
                        break
                    confirmed, lines = int(line), lines + 1
            assert lines >= at_least, proc.stderr.read() if proc.stderr else ""
        finally:
            os.kill(proc.pid, signal.SIGKILL)  # the writer never pauses: mid-write, queue full
            proc.wait(timeout=10)
            rest = proc.stdout.read()
            confirmed = max([confirmed, *(int(x) for x in rest.split() if x.isdigit())])
            proc.stdout.close()
            if proc.stderr is not None:
                proc.stderr.close()
        assert proc.returncode == -signal.SIGKILL
        cache = open_cache(memory_items=0)
        assert cache.disk_available
        rows = list(cache.export_rows())  # every row reads back whole
        stats = cache.stats()
        assert (stats.errors, stats.skipped) == (0, 0)
        assert len(rows) == stats.entries
        for i in range(max(confirmed - 50, 0), confirmed + 1):  # flushed before the kill
            text = text_at(cache, key(i))
            assert text is not None and text.startswith(f"answer {i} "), i
        assert cache.put(key("after"), completion("after the kill"))
        cache.close()


LOCKER = textwrap.dedent(
    """
    import sqlite3, sys, time
    con = sqlite3.connect(sys.argv[1], isolation_level=None)
    con.execute("BEGIN IMMEDIATE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
    """
)


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_writes_its_own_answers_while_the_parents_writer_is_blocked(
    open_cache: Any, directory: Path
) -> None:
    cache = open_cache()
    cache.put(key("seed"), completion("seed"))
    # another process holds the database's write lock for 0.6 s (SQLite connections of this
    # process must not be open across a fork)
    locker = subprocess.Popen(
        [sys.executable, "-c", LOCKER, str(directory / "cache.db"), "0.6"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    cache.put_later(key("parent"), completion("parent"))
    time.sleep(0.2)  # the parent's writer now waits on the database, holding the write lock
    pid = os.fork()
    if pid == 0:  # the child: its own writer, its own queue
        status = 1
        try:
            time.sleep(1.0)  # the locker is gone by now
            cache.put_later(key("child"), completion("child"))
            drained = cache.flush(timeout=5)  # the parent's write in flight is not the child's
            queued = cache.stats().queued
            cache.close()
            status = 0 if drained and queued == 0 else 3
        finally:
            os._exit(status)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on its parent's cache locks")
    locker.wait(timeout=10)
    locker.stdout.close()
    assert os.waitstatus_to_exitcode(status) == 0
    assert cache.flush(timeout=30)
    fresh = open_cache(memory_items=0)
    assert text_at(fresh, key("child")) == "child"
    assert text_at(fresh, key("parent")) == "parent"  # written once, by the parent


def test_put_with_rewrite_restamps_an_identical_answer(open_cache: Any) -> None:
    clock = Clock()
    cache = open_cache(clock=clock)
    cache.put(key("k"), completion("same"))
    clock.now += 10
    assert cache.put(key("k"), completion("same"), rewrite=True)  # a refresh, e.g. warm
    assert (cache.stats().stores, cache.stats().unchanged) == (2, 0)
    hit = open_cache(memory_items=0, clock=clock).get(key("k"))
    assert hit is not None and hit.age == 0.0


@pytest.mark.slow
def test_scans_and_exports_include_queued_answers(open_cache: Any, directory: Path) -> None:
    cache = open_cache()
    cache.put(key("seed"), completion("seed"))
    for scan in ("export", "keys", "stats"):
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(directory / "cache.db"), "0.4"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
        cache.put_later(key(scan), completion(scan))  # the write waits for the lock
        if scan == "export":
            assert key(scan) in {row.key for row in cache.export_rows()}
        elif scan == "keys":
            assert key(scan) in set(cache.iter_keys())
        else:
            assert cache.stats(scan=True).entries == 4
        locker.wait(timeout=10)
        locker.stdout.close()
