"""The disk cache under abuse: killed writers, a full disk budget, a corrupted database.

* ``kill -9`` a process in the middle of a stream of cache writes (some rows inline, some in
  files), three times over the same directory: the cache still opens, serves every write that
  had returned before the kill, and takes new writes; a chain answers from it in an outage.
* write far more than ``size_limit`` through a chain: the oldest answers are evicted, the disk
  stays near its limit, no write and no request fails.
* corrupt ``cache.db`` (before opening, and under an open chain): the chain keeps answering from
  the live tiers, and no cache error ever reaches the caller.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import select
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from fallbackchain import (
    AllTiersFailedError,
    CacheConfig,
    FallbackChain,
    ResponseCache,
    cache_key,
)
from fallbackchain.testing import Fault, FaultServer

from .conftest import make_config, user

MODEL = "test-model"

WRITER = textwrap.dedent(
    """
    import sys
    from openai.types.chat import ChatCompletion
    from fallbackchain import CacheConfig, ResponseCache, cache_key

    directory, start = sys.argv[1], int(sys.argv[2])
    cache = ResponseCache(CacheConfig(directory=directory, memory_items=0))
    assert cache.disk_available
    i = start
    while True:
        # every 7th answer is large enough to be stored in its own file, not inline
        text = f"answer {i} " + ("x" * 40_000 if i % 7 == 0 else "y" * 200)
        completion = ChatCompletion.model_validate({
            "id": f"c{i}", "object": "chat.completion", "created": 0, "model": "test-model",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": text}}],
        })
        key = cache_key("test-model", [{"role": "user", "content": f"prompt {i % 5000}"}], {})
        if not cache.put(key, completion):
            print(f"FAILED {i}", flush=True)
        else:
            print(i, flush=True)
        i += 1
    """
)


def _text(i: int) -> str:
    return f"answer {i} " + ("x" * 40_000 if i % 7 == 0 else "y" * 200)


def _key(i: int) -> str:
    return cache_key(MODEL, user(f"prompt {i % 5000}"), {})


def _write_then_kill(directory: Path, start: int, at_least: int) -> list[int]:
    """Run the writer, SIGKILL it once it has confirmed ``at_least`` writes; the confirmed."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(directory), str(start)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    confirmed: list[int] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    try:
        while len(confirmed) < at_least and time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 5.0)
            if not ready:
                continue
            line = proc.stdout.readline()
            if not line:
                break
            assert not line.startswith("FAILED"), line
            confirmed.append(int(line))
        assert len(confirmed) >= at_least, proc.stderr.read() if proc.stderr else ""
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # mid-write: it never stops between writes
        proc.wait(timeout=10)
        # writes confirmed after our last read still count: read what was printed
        rest = proc.stdout.read()
        confirmed += [int(x) for x in rest.split() if x.isdigit()]
        proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    return confirmed


@pytest.mark.slow  # writer subprocesses killed mid-write
def test_a_writer_killed_mid_write_leaves_a_cache_that_opens_and_serves(
    tmp_path: Path, server: FaultServer
) -> None:
    directory = tmp_path / "cache"
    confirmed: list[int] = []
    start = 0
    for at_least in (150, 60, 300):  # three kills at different points
        confirmed += _write_then_kill(directory, start, at_least)
        start = max(confirmed) + 1
        with ResponseCache(CacheConfig(directory=str(directory), memory_items=0)) as cache:
            assert cache.disk_available
            for i in confirmed:
                hit = cache.get(_key(i))
                assert hit is not None, f"write {i} returned before the kill but was lost"
                assert hit.completion.choices[0].message.content == _text(i)
            assert cache.stats().errors == 0
            assert cache.put(cache_key(MODEL, user("new"), {}), _completion("after the kill"))

    # a chain on that directory answers from it while the API is down
    config = make_config(
        tmp_path, server.base_url, cache__directory=str(directory), retry__max_attempts=1
    )
    server.default = Fault.status(503)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
    with FallbackChain(config, client=client) as chain:
        for i in confirmed[-20:]:
            response = chain.complete(user(f"prompt {i % 5000}"))
            assert response.source == "cache"
            assert response.text == _text(i)
    client.close()


def _completion(text: str, finish: str = "stop") -> Any:
    from openai.types.chat import ChatCompletion

    return ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": MODEL,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish,
                    "message": {"role": "assistant", "content": text},
                }
            ],
        }
    )


# --------------------------------------------------------------------------------------------
# past the size limit: eviction, not failure
# --------------------------------------------------------------------------------------------

BIG_WORDS = 8
WORD = 2_500  # characters per streamed word: ~20 KB per answer


def _big_answer(messages: Any, model: str) -> str:
    prompt = messages[-1]["content"]
    return " ".join(f"{prompt}-{i}-" + "z" * WORD for i in range(BIG_WORDS))


@pytest.fixture
def big_server() -> Iterator[FaultServer]:
    with FaultServer(responder=_big_answer) as server:
        yield server


@pytest.mark.slow  # fills the cache past its size limit
def test_writing_past_the_size_limit_evicts_the_oldest_and_never_fails(
    tmp_path: Path, big_server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    limit = 1 << 20  # the smallest size_limit the config accepts
    assert CacheConfig(size_limit=limit).size_limit == limit
    config = make_config(
        tmp_path, big_server.base_url, cache__size_limit=limit, cache__memory_items=0
    )
    prompts = [f"big {i}" for i in range(160)]  # ~3.2 MB of answers, 3x the limit
    client = openai.OpenAI(base_url=big_server.base_url, api_key="sk-test")
    with caplog.at_level(logging.WARNING, logger="fallbackchain"), FallbackChain(
        config, client=client
    ) as chain:
        for prompt in prompts:
            response = chain.complete(user(prompt))
            assert response.source == "stream"
            assert response.text == _big_answer(user(prompt), MODEL)
        assert chain.cache.flush(timeout=30)  # the disk writes run behind the requests
        stats = chain.cache.stats()
        assert stats.stores == len(prompts)  # every write succeeded...
        assert stats.errors == 0
        assert stats.bytes <= limit * 1.25, stats  # ...and the disk stayed near its limit
        assert 0 < stats.entries < len(prompts) / 2
        # least-recently-stored went first: the newest are there, the oldest are not
        keys = [chain.cache_key(user(p)) for p in prompts]
        assert chain.cache.get(keys[-1]) is not None
        assert all(chain.cache.get(k) is None for k in keys[:20])

        # an outage now: the newest answers come from the cache, the evicted ones fail honestly
        big_server.default = Fault.status(503)
        assert chain.complete(user(prompts[-1])).source == "cache"
        with pytest.raises(AllTiersFailedError):
            chain.complete(user(prompts[0]))
    client.close()
    assert not [r for r in caplog.records if r.name.startswith("fallbackchain.cache")]


@pytest.mark.slow  # fills a cache past its size limit, then imports it into another
def test_importing_past_the_size_limit_keeps_the_newest_rows(
    tmp_path: Path, big_server: FaultServer
) -> None:
    """An import over the size limit evicts the oldest rows as writes do, never all of them."""
    limit = 1 << 20
    source = make_config(tmp_path / "a", big_server.base_url, cache__size_limit=8 * limit)
    prompts = [f"big {i}" for i in range(120)]  # ~2.4 MB of answers, over twice the limit
    client = openai.OpenAI(base_url=big_server.base_url, api_key="sk-test")
    with FallbackChain(source, client=client) as chain:
        for prompt in prompts:
            chain.complete(user(prompt))
        assert chain.cache.flush(timeout=30)
        exported = tmp_path / "answers.jsonl"
        with exported.open("w", encoding="utf-8") as out:
            chain.cache.export_jsonl(out)
        keys = [chain.cache_key(user(p)) for p in prompts]
    client.close()
    target = dataclasses.replace(source.cache, directory=str(tmp_path / "b"), size_limit=limit)
    with ResponseCache(target) as cache:
        with exported.open(encoding="utf-8") as rows:
            report = cache.import_jsonl(rows)
        assert report.imported == len(prompts), report
        stats = cache.stats()
        assert stats.bytes <= limit * 1.25, stats
        assert 0 < stats.entries < len(prompts) / 2, stats
        assert cache.get(keys[-1]) is not None  # the newest rows stayed


# --------------------------------------------------------------------------------------------
# a corrupted database: the live tiers keep answering
# --------------------------------------------------------------------------------------------


def _corrupt(db: Path) -> None:
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.write(b"this is not an SQLite database" * 4)  # the header
        f.seek(max(size // 2, 200))
        f.write(os.urandom(4096))


def test_a_corrupt_cache_file_is_bypassed_and_the_live_tiers_answer(
    tmp_path: Path, server: FaultServer, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path, server.base_url, retry__max_attempts=1)
    directory = Path(config.cache.directory)
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
    with FallbackChain(config, client=client) as chain:
        for i in range(20):
            chain.complete(user(f"before {i}"))
    db = directory / "cache.db"
    assert db.exists()
    _corrupt(db)

    with caplog.at_level(logging.WARNING, logger="fallbackchain"):
        with FallbackChain(config, client=client) as chain:  # opening must not raise
            for i in range(10):
                response = chain.complete(user(f"after {i}"))
                assert response.source == "stream"
                assert response.text == server.answer_for(user(f"after {i}"), MODEL)
            server.push(Fault.drop(after_chunks=1), stream=True)  # the stream breaks: not the model
            response = chain.complete(user("the stream tier is down"))
            assert response.source == "completion"
        assert any("cache" in r.getMessage() for r in caplog.records)
        assert not any("after " in r.getMessage() for r in caplog.records)  # no prompt logged
    client.close()


@pytest.mark.slow
def test_corrupting_the_cache_under_an_open_chain_never_fails_a_request(
    tmp_path: Path, server: FaultServer
) -> None:
    # the memory layer off, so every read and write goes to the damaged file
    config = make_config(tmp_path, server.base_url, cache__memory_items=0)
    config = dataclasses.replace(config, retry=dataclasses.replace(config.retry, max_attempts=1))
    client = openai.OpenAI(base_url=server.base_url, api_key="sk-test")
    with FallbackChain(config, client=client) as chain:
        for i in range(30):
            chain.complete(user(f"prompt {i}"))
        _corrupt(Path(config.cache.directory) / "cache.db")
        for i in range(30):
            response = chain.complete(user(f"prompt {i}"))  # a read miss, then a write: ignored
            assert response.source == "stream"
            assert response.text == server.answer_for(user(f"prompt {i}"), MODEL)
        server.push(Fault.drop(after_chunks=1), stream=True)  # the stream breaks: not the model
        assert chain.complete(user("prompt 1")).source == "completion"
        # with the whole API down, a cache that cannot be read is an honest miss
        server.default = Fault.status(503)
        with pytest.raises(AllTiersFailedError):
            chain.complete(user("never answered"))
    client.close()
