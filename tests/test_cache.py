"""Tests for the disk cache: keys, the two layers, expiry, failures and the safe Disk."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import pickle
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from typing import Any

import diskcache
import diskcache.core
import openai
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion, ChatCompletionMessage

from fallbackchain._config import CacheConfig
from fallbackchain._errors import CacheCorruptError, UnsafeCacheRowError
from fallbackchain.cache import (
    CachedAnswer,
    CacheStats,
    ResponseCache,
    SafeJSONDisk,
    cache_key,
)
from fallbackchain.cache._rows import decode_row, encode_row

LOGGER = "fallbackchain.cache"
T0 = 1_000_000.0
TTL = 100.0
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def completion(
    text: str = "Paris.", finish_reason: str | None = "stop", *, n: int = 1, cid: str = "c1"
) -> ChatCompletion:
    c = ChatCompletion.model_validate(
        {
            "id": cid,
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": "gpt-4o-mini",
            "choices": [
                {
                    "index": i,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text},
                }
                for i in range(n)
            ],
        }
    )
    c.choices[-1].finish_reason = finish_reason  # type: ignore[assignment]
    return c


def text_of(answer: CachedAnswer | None) -> str | None:
    assert answer is not None
    return answer.completion.choices[0].message.content


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def cache_dir(tmp_path: pathlib.Path) -> pathlib.Path:
    return tmp_path / "cache"


def make_config(directory: pathlib.Path, **overrides: Any) -> CacheConfig:
    values: dict[str, Any] = {"directory": str(directory), "ttl": TTL, "memory_items": 16}
    values.update(overrides)
    return CacheConfig(**values)


@pytest.fixture
def open_cache(cache_dir: pathlib.Path, clock: FakeClock) -> Iterator[Any]:
    opened: list[ResponseCache] = []

    def factory(**overrides: Any) -> ResponseCache:
        rc = ResponseCache(make_config(cache_dir, **overrides), clock=clock)
        opened.append(rc)
        return rc

    yield factory
    for rc in opened:
        rc.close()


@pytest.fixture
def key() -> str:
    return cache_key("gpt-4o-mini", MESSAGES, {"temperature": 0})


def cache_warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno >= logging.WARNING]


def plant_row(
    directory: pathlib.Path,
    db_key: Any,
    *,
    raw: int = 1,
    mode: int = diskcache.core.MODE_RAW,
    value: Any = None,
    filename: str | None = None,
) -> None:
    """Write a row straight into diskcache's table, as an attacker with write access could."""
    con = sqlite3.connect(directory / "cache.db")
    try:
        now = time.time()
        con.execute("DELETE FROM Cache WHERE key = ? AND raw = ?", (db_key, raw))
        con.execute(
            "INSERT INTO Cache (key, raw, store_time, expire_time, access_time, access_count,"
            " tag, size, mode, filename, value) VALUES (?, ?, ?, NULL, ?, 0, NULL, 0, ?, ?, ?)",
            (db_key, raw, now, now, mode, filename, value),
        )
        con.commit()
    finally:
        con.close()


class _TouchOnUnpickle:
    """Unpickling this creates ``marker``: proof that pickle ran code from the cache."""

    def __init__(self, marker: pathlib.Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (pathlib.Path.touch, (self.marker,))


def evil_pickle(marker: pathlib.Path) -> bytes:
    return pickle.dumps(_TouchOnUnpickle(marker))


def row_json(stored_at: float, body: Any) -> str:
    return json.dumps({"format": 1, "stored_at": stored_at, "completion": body})


# --------------------------------------------------------------------------------------------
# cache_key
# --------------------------------------------------------------------------------------------


def test_key_format_is_pinned() -> None:
    messages = [{"role": "user", "content": "Grüße, 東京"}]
    canonical = json.dumps(
        {"model": "m", "messages": messages, "params": {"temperature": 0.5}},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    expected = "fc1-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    got = cache_key("m", messages, {"temperature": 0.5, "stream": True})
    assert got == expected
    assert re.fullmatch(r"fc1-[0-9a-f]{64}", got)


def test_key_ignores_dict_order() -> None:
    a = cache_key(
        "m",
        [{"role": "user", "content": "hi", "name": "x"}],
        {"temperature": 0, "response_format": {"type": "json_schema", "json_schema": {"a": 1}}},
    )
    b = cache_key(
        "m",
        [{"name": "x", "content": "hi", "role": "user"}],
        {"response_format": {"json_schema": {"a": 1}, "type": "json_schema"}, "temperature": 0},
    )
    assert a == b


@settings(max_examples=30, deadline=None)
@given(
    st.dictionaries(
        st.text(min_size=1, max_size=8).filter(lambda s: s not in {"stream", "user"}),
        st.one_of(st.integers(), st.text(max_size=5), st.booleans(), st.none()),
        max_size=6,
    ),
    st.randoms(),
)
def test_key_is_invariant_under_param_order(params: dict[str, Any], rnd: Any) -> None:
    items = list(params.items())
    rnd.shuffle(items)
    assert cache_key("m", MESSAGES, params) == cache_key("m", MESSAGES, dict(items))


TRANSPORT_ONLY = {
    "stream": True,
    "stream_options": {"include_usage": True},
    "timeout": 12.5,
    "extra_headers": {"X-Trace": "1"},
    "extra_query": {"q": "1"},
    "user": "alice",
    "metadata": {"run": "7"},
    "store": True,
    "service_tier": "flex",
    "safety_identifier": "abc",
    "prompt_cache_key": "pk",
    "prompt_cache_retention": "24h",
}


@pytest.mark.parametrize(("name", "value"), sorted(TRANSPORT_ONLY.items()))
def test_key_ignores_transport_only_param(name: str, value: Any) -> None:
    base = {"temperature": 0.2}
    assert cache_key("m", MESSAGES, {**base, name: value}) == cache_key("m", MESSAGES, base)


SHAPING = {
    "temperature": 0.7,
    "top_p": 0.9,
    "max_tokens": 10,
    "max_completion_tokens": 10,
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
    "tool_choice": "auto",
    "response_format": {"type": "json_object"},
    "seed": 42,
    "stop": ["\n"],
    "n": 2,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "logit_bias": {"50256": -100},
    "logprobs": True,
    "reasoning_effort": "low",
    "extra_body": {"custom": 1},
    "some_future_param": "x",
}


@pytest.mark.parametrize(("name", "value"), sorted(SHAPING.items()))
def test_key_includes_answer_shaping_param(name: str, value: Any) -> None:
    assert cache_key("m", MESSAGES, {name: value}) != cache_key("m", MESSAGES, {})


def test_key_depends_on_model_and_messages() -> None:
    base = cache_key("m", MESSAGES, {})
    assert cache_key("other", MESSAGES, {}) != base
    assert cache_key("m", [{"role": "user", "content": "Something else"}], {}) != base


def test_key_dumps_pydantic_models_as_sent() -> None:
    as_model = ChatCompletionMessage(role="assistant", content="hi")
    as_dict = {"role": "assistant", "content": "hi"}
    assert cache_key("m", [as_model], {}) == cache_key("m", [as_dict], {})

    class Shape(pydantic.BaseModel):
        kind: str
        size: int = 3

    assert cache_key("m", MESSAGES, {"response_format": Shape(kind="a", size=3)}) == cache_key(
        "m", MESSAGES, {"response_format": {"kind": "a", "size": 3}}
    )


def test_key_drops_not_given_and_omit() -> None:
    base = cache_key("m", MESSAGES, {"temperature": 0})
    params = {"temperature": 0, "top_p": openai.NOT_GIVEN, "seed": openai.omit}
    assert cache_key("m", MESSAGES, params) == base
    messages = [{**MESSAGES[0], "name": openai.NOT_GIVEN}]
    assert cache_key("m", messages, {"temperature": 0}) == base


def test_key_rejects_values_without_json_form() -> None:
    with pytest.raises(TypeError):
        cache_key("m", MESSAGES, {"stop": {"a", "b"}})


# --------------------------------------------------------------------------------------------
# Round trips
# --------------------------------------------------------------------------------------------


def test_round_trip_memory_hit_does_not_touch_disk(
    open_cache: Any, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc = open_cache()
    assert rc.put(key, completion("Paris.")) is True

    def no_disk(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("memory hit went to disk")

    monkeypatch.setattr(rc._disk, "get", no_disk)
    answer = rc.get(key)
    assert text_of(answer) == "Paris."
    assert answer is not None
    assert answer.stored_at == T0
    assert answer.age == 0.0


def test_round_trip_disk_hit_in_fresh_instance(open_cache: Any, key: str) -> None:
    original = completion("Paris.")
    assert open_cache().put(key, original) is True
    fresh = open_cache()
    answer = fresh.get(key)
    assert answer is not None
    assert answer.completion.model_dump() == original.model_dump()
    assert answer.stored_at == T0
    assert fresh.stats().memory_entries == 1  # promoted


def sparse_completion(text: str = "Paris.") -> ChatCompletion:
    """An answer as some compatible servers send it (no ``object``, no ``created``), built the
    SDK's lenient way, as the chain reads it live: it does not validate."""
    return ChatCompletion.construct(
        id="c1",
        model="gpt-4o-mini",
        choices=[{"index": 0, "finish_reason": "stop", "message": assistant(text)}],
    )


def assistant(content: object) -> dict[str, object]:
    return {"role": "assistant", "content": content}


def test_an_answer_read_leniently_round_trips_memory_disk_and_export(
    open_cache: Any, key: str, tmp_path: pathlib.Path, clock: FakeClock
) -> None:
    rc = open_cache()
    assert rc.put(key, sparse_completion()) is True
    assert text_of(rc.get(key)) == "Paris."  # memory
    fresh = open_cache()
    hit = fresh.get(key)  # disk
    assert hit is not None and text_of(hit) == "Paris."
    assert (hit.completion.created, hit.completion.object) == (None, None)
    target = tmp_path / "export.jsonl"
    assert fresh.export_jsonl(target) == 1
    other = ResponseCache(make_config(tmp_path / "other"), clock=clock)
    try:
        assert other.import_jsonl(target).imported == 1
        assert text_of(other.get(key)) == "Paris."
    finally:
        other.close()
    assert rc.stats().errors == fresh.stats().errors == 0


def sparse_body(**message: object) -> dict[str, Any]:
    choice = {"index": 0, "finish_reason": "stop", "message": {"content": "hi", **message}}
    return {"id": "c1", "model": "m", "choices": [choice]}


@pytest.mark.parametrize(
    "body",
    [
        {**sparse_body(), "choices": [{"finish_reason": ["stop"], "message": assistant("hi")}]},
        sparse_body(tool_calls="abc"),
        sparse_body(tool_calls=[5]),
        sparse_body(tool_calls=[{"id": 5, "function": {"name": "f", "arguments": "{}"}}]),
        sparse_body(content=["hi"]),
        {**sparse_body(), "choices": {"0": {"finish_reason": "stop"}}},
    ],
    ids=["finish-reason", "calls-str", "calls-int", "call-id", "content", "choices-object"],
)
def test_a_stored_answer_that_only_builds_leniently_must_still_be_usable(
    body: dict[str, Any],
) -> None:
    """A tampered row is corrupt (skipped by scans, a miss), never an error elsewhere."""
    with pytest.raises(CacheCorruptError):
        decode_row(row_json(T0, body))


def test_a_body_key_named_like_constructs_own_parameter_is_kept_apart() -> None:
    entry = decode_row(row_json(T0, {**sparse_body(), "_fields_set": ["x"]}))
    assert entry.completion.choices[0].message.content == "hi"


def test_large_answer_round_trips_through_a_file(open_cache: Any, key: str) -> None:
    big = "x" * 100_000  # above diskcache's 32 KiB inline limit: stored as a text file
    assert open_cache().put(key, completion(big)) is True
    assert text_of(open_cache().get(key)) == big


def test_missing_key_is_a_miss(open_cache: Any, key: str) -> None:
    assert open_cache().get(key) is None


def test_put_overwrites_with_newer_answer(open_cache: Any, key: str, clock: FakeClock) -> None:
    rc = open_cache()
    rc.put(key, completion("old"))
    clock.now += 5
    rc.put(key, completion("new"))
    assert text_of(rc.get(key)) == "new"
    assert text_of(open_cache().get(key)) == "new"


def test_memory_copy_is_isolated_from_caller_mutation(open_cache: Any, key: str) -> None:
    rc = open_cache()
    c = completion("Paris.")
    rc.put(key, c)
    c.choices[0].message.content = "mutated after put"
    assert text_of(rc.get(key)) == "Paris."


# --------------------------------------------------------------------------------------------
# What is stored
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reason", [None, "content_filter"])
def test_incomplete_answer_is_not_stored(open_cache: Any, key: str, reason: str | None) -> None:
    rc = open_cache()
    assert rc.put(key, completion(finish_reason=reason)) is False
    assert rc.get(key) is None
    assert rc.stats().stores == 0
    assert open_cache().get(key) is None


def test_answer_with_one_incomplete_choice_is_not_stored(open_cache: Any, key: str) -> None:
    assert open_cache().put(key, completion(n=2, finish_reason=None)) is False


def test_answer_without_choices_is_not_stored(open_cache: Any, key: str) -> None:
    empty = completion()
    empty.choices = []
    assert open_cache().put(key, empty) is False


@pytest.mark.parametrize("reason", ["stop", "length", "tool_calls", "function_call"])
def test_complete_answer_is_stored(open_cache: Any, key: str, reason: str) -> None:
    assert open_cache().put(key, completion(finish_reason=reason)) is True


def test_row_is_versioned_json(open_cache: Any, key: str, cache_dir: pathlib.Path) -> None:
    open_cache().put(key, completion("Paris."))
    con = sqlite3.connect(cache_dir / "cache.db")
    try:
        ((raw, mode, value, expire_time),) = con.execute(
            "SELECT raw, mode, value, expire_time FROM Cache WHERE key = ?", (key,)
        ).fetchall()
    finally:
        con.close()
    assert (raw, mode) == (1, diskcache.core.MODE_RAW)
    row = json.loads(value)
    assert row["format"] == 1
    assert row["stored_at"] == T0
    assert row["completion"]["choices"][0]["message"]["content"] == "Paris."
    assert expire_time == pytest.approx(time.time() + TTL, abs=30)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@pytest.mark.slow  # a property test: a few seconds
@settings(max_examples=200, deadline=None)
@given(body=st.dictionaries(st.text(), _JSON, max_size=6), stored_at=st.floats())
def test_a_row_reads_back_as_json_dumps_wrote_it(body: dict[str, Any], stored_at: float) -> None:
    """The fast encoder (#14) keeps the format: compact JSON that reads back to the same values.

    (It may spell a number differently, ``1e-05`` as ``0.00001``; NaN is compared by its dump.)
    """
    row = {"format": 1, "stored_at": stored_at, "completion": body}

    def dump(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))

    text = encode_row(body, stored_at)
    assert dump(json.loads(text)) == dump(row)


def test_a_row_with_a_lone_surrogate_is_encoded_as_before_and_fails_at_the_write(
    open_cache: Any, key: str
) -> None:
    body = {"choices": [{"message": {"content": "bad \ud800"}}]}
    assert encode_row(body, T0) == json.dumps(
        {"format": 1, "stored_at": T0, "completion": body}, ensure_ascii=False, separators=(",", ":")
    )
    rc = open_cache()
    assert rc.put(key, completion("bad \ud800")) is False  # SQLite cannot store it: logged
    assert text_of(rc.get(key)) == "bad \ud800"  # the memory layer still holds it
    assert rc.stats().errors == 1


# --------------------------------------------------------------------------------------------
# Expiry
# --------------------------------------------------------------------------------------------


def test_memory_entry_reports_age_until_ttl(open_cache: Any, key: str, clock: FakeClock) -> None:
    rc = open_cache()
    rc.put(key, completion())
    clock.now = T0 + 99.5
    answer = rc.get(key)
    assert answer is not None
    assert answer.age == pytest.approx(99.5)
    clock.now = T0 + TTL
    assert rc.get(key) is None


def test_disk_entry_older_than_ttl_is_not_served(
    open_cache: Any, key: str, clock: FakeClock
) -> None:
    open_cache().put(key, completion())
    clock.now = T0 + TTL  # diskcache's own (real-time) expiry has not pruned the row
    assert open_cache(memory_items=0).get(key) is None


def test_disk_entry_reports_age(open_cache: Any, key: str, clock: FakeClock) -> None:
    open_cache().put(key, completion())
    clock.now = T0 + 42
    answer = open_cache().get(key)
    assert answer is not None
    assert answer.age == pytest.approx(42)


def test_promoted_entry_keeps_its_original_age(open_cache: Any, key: str, clock: FakeClock) -> None:
    open_cache().put(key, completion())
    reader = open_cache()
    clock.now = T0 + 90
    assert reader.get(key) is not None  # promoted to memory at age 90
    clock.now = T0 + TTL
    assert reader.get(key) is None


# --------------------------------------------------------------------------------------------
# Security: nothing from the directory is ever unpickled
# --------------------------------------------------------------------------------------------


def test_hazard_plain_diskcache_runs_a_planted_pickle(tmp_path: pathlib.Path) -> None:
    """Documents the hazard SafeJSONDisk removes: the default Disk unpickles planted rows."""
    marker = tmp_path / "pwned"
    directory = tmp_path / "plain"
    plain = diskcache.Cache(str(directory))
    try:
        plant_row(directory, "k", mode=diskcache.core.MODE_PICKLE, value=evil_pickle(marker))
        plain.get("k")
    finally:
        plain.close()
    assert marker.exists()


def test_hazard_plain_diskcache_runs_a_planted_pickled_key(tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    directory = tmp_path / "plain"
    plain = diskcache.Cache(str(directory))
    try:
        plant_row(directory, sqlite3.Binary(evil_pickle(marker)), raw=0, value="x")
        list(plain.iterkeys())
    finally:
        plain.close()
    assert marker.exists()


@pytest.mark.parametrize("in_file", [False, True], ids=["inline", "file"])
def test_planted_pickled_row_is_refused(
    open_cache: Any,
    key: str,
    cache_dir: pathlib.Path,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
    in_file: bool,
) -> None:
    marker = tmp_path / "pwned"
    rc = open_cache()
    payload = evil_pickle(marker)
    if in_file:
        (cache_dir / "ab" / "cd").mkdir(parents=True)
        (cache_dir / "ab" / "cd" / "evil.val").write_bytes(payload)
        plant_row(cache_dir, key, mode=diskcache.core.MODE_PICKLE, filename="ab/cd/evil.val")
    else:
        plant_row(cache_dir, key, mode=diskcache.core.MODE_PICKLE, value=payload)
    caplog.set_level(logging.WARNING, logger=LOGGER)

    assert rc.get(key) is None
    assert not marker.exists()
    (record,) = cache_warnings(caplog)
    assert "UnsafeCacheRowError" in record.getMessage()
    assert str(cache_dir) in record.getMessage()


def test_planted_pickled_key_is_skipped_by_iter_keys(
    open_cache: Any,
    key: str,
    cache_dir: pathlib.Path,
    tmp_path: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    marker = tmp_path / "pwned"
    rc = open_cache()
    rc.put(key, completion())
    plant_row(cache_dir, sqlite3.Binary(evil_pickle(marker)), raw=0, value="x")
    caplog.set_level(logging.WARNING, logger=LOGGER)

    assert list(rc.iter_keys()) == [key]
    assert not marker.exists()
    (record,) = cache_warnings(caplog)
    assert "UnsafeCacheRowError" in record.getMessage()


def test_disk_fetch_refuses_pickle_without_calling_pickle(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("pickle was called")

    monkeypatch.setattr(pickle, "load", forbidden)
    monkeypatch.setattr(pickle, "loads", forbidden)
    disk = SafeJSONDisk(str(tmp_path))
    with pytest.raises(UnsafeCacheRowError):
        disk.fetch(diskcache.core.MODE_PICKLE, None, b"\x80\x04N.", False)
    with pytest.raises(UnsafeCacheRowError):
        disk.get(sqlite3.Binary(b"\x80\x04N."), 0)


@pytest.mark.parametrize("value", [{"a": 1}, b"bytes", 7, 1.5, type("S", (str,), {})("sub")])
def test_disk_store_accepts_only_str(tmp_path: pathlib.Path, value: Any) -> None:
    with pytest.raises(TypeError):
        SafeJSONDisk(str(tmp_path)).store(value, False)


@pytest.mark.parametrize("db_key", [b"bytes", 7, ("t",), type("S", (str,), {})("sub")])
def test_disk_put_accepts_only_str_keys(tmp_path: pathlib.Path, db_key: Any) -> None:
    with pytest.raises(TypeError):
        SafeJSONDisk(str(tmp_path)).put(db_key)


def test_disk_stores_text_modes_only(tmp_path: pathlib.Path) -> None:
    disk = SafeJSONDisk(str(tmp_path), min_file_size=10)
    assert disk.store("short", False)[1] == diskcache.core.MODE_RAW
    _size, mode, filename, _ = disk.store("long enough for a file", False)
    assert mode == diskcache.core.MODE_TEXT
    assert disk.fetch(mode, filename, None, False) == "long enough for a file"
    assert disk.put("k") == ("k", True)


def test_disk_rejects_rows_that_are_not_text(tmp_path: pathlib.Path) -> None:
    disk = SafeJSONDisk(str(tmp_path))
    with pytest.raises(CacheCorruptError):
        disk.get(7, 1)
    with pytest.raises(CacheCorruptError):
        disk.fetch(diskcache.core.MODE_RAW, None, sqlite3.Binary(b"\xff"), False)
    with pytest.raises(CacheCorruptError):
        disk.fetch(diskcache.core.MODE_RAW, None, 12, False)
    with pytest.raises(CacheCorruptError):
        disk.fetch(99, None, "x", False)
    assert disk.fetch(diskcache.core.MODE_RAW, None, sqlite3.Binary(b"ok"), False) == "ok"


@pytest.mark.parametrize("filename", ["../outside.val", "/etc/passwd"])
def test_row_naming_a_file_outside_the_directory_is_refused(
    open_cache: Any,
    key: str,
    cache_dir: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
    filename: str,
) -> None:
    rc = open_cache()
    (cache_dir.parent / "outside.val").write_text(row_json(T0, completion().model_dump()))
    plant_row(cache_dir, key, mode=diskcache.core.MODE_TEXT, filename=filename)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert rc.get(key) is None
    (record,) = cache_warnings(caplog)
    assert "CacheCorruptError" in record.getMessage()


def test_overwriting_a_planted_row_never_deletes_outside_files(
    open_cache: Any, key: str, cache_dir: pathlib.Path
) -> None:
    rc = open_cache()
    victim = cache_dir.parent / "victim.txt"
    victim.write_text("precious")
    plant_row(cache_dir, key, mode=diskcache.core.MODE_TEXT, filename="../victim.txt")
    rc.put(key, completion("new"))  # diskcache would remove the old row's file
    rc.clear()
    assert victim.read_text() == "precious"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_planted_fifo_does_not_block(open_cache: Any, key: str, cache_dir: pathlib.Path) -> None:
    rc = open_cache()
    (cache_dir / "ab" / "cd").mkdir(parents=True)
    os.mkfifo(cache_dir / "ab" / "cd" / "fifo.val")
    plant_row(cache_dir, key, mode=diskcache.core.MODE_TEXT, filename="ab/cd/fifo.val")
    assert rc.get(key) is None


# --------------------------------------------------------------------------------------------
# Failures: always a miss or a skipped write, logged, never raised
# --------------------------------------------------------------------------------------------


def test_corrupt_database_means_memory_only(
    cache_dir: pathlib.Path, clock: FakeClock, key: str, caplog: pytest.LogCaptureFixture
) -> None:
    cache_dir.mkdir(mode=0o700)
    (cache_dir / "cache.db").write_bytes(os.urandom(64) * 100)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with ResponseCache(make_config(cache_dir), clock=clock) as rc:
        assert rc.disk_available is False
        assert rc.get(key) is None
        assert rc.put(key, completion()) is False
        assert text_of(rc.get(key)) == "Paris."  # the memory layer still answers
        (record,) = cache_warnings(caplog)
        message = record.getMessage()
        assert "CacheCorruptError" in message
        assert str(cache_dir) in message


def test_disk_is_reopened_at_most_every_60_seconds(
    cache_dir: pathlib.Path, clock: FakeClock, key: str
) -> None:
    cache_dir.mkdir(mode=0o700)
    (cache_dir / "cache.db").write_bytes(b"garbage" * 1000)
    with ResponseCache(make_config(cache_dir), clock=clock) as rc:
        (cache_dir / "cache.db").unlink()  # repaired
        clock.now += 30
        assert rc.put(key, completion()) is False
        assert rc.disk_available is False
        clock.now += 31
        assert rc.put(key, completion()) is True
        assert rc.disk_available is True


def test_sqlite_error_during_get_is_a_miss(
    open_cache: Any, key: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rc = open_cache(memory_items=0)
    rc.put(key, completion())

    def locked(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(rc._disk, "get", locked)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert rc.get(key) is None
    assert rc.disk_available is True
    (record,) = cache_warnings(caplog)
    assert "CacheError" in record.getMessage()
    assert "OperationalError" in record.getMessage()


def test_corruption_found_during_get_drops_the_disk(
    open_cache: Any, key: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rc = open_cache(memory_items=0)

    def malformed(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(rc._disk, "get", malformed)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert rc.get(key) is None
    assert rc.disk_available is False
    assert "CacheCorruptError" in cache_warnings(caplog)[0].getMessage()


def test_disk_full_during_put_skips_the_write(
    open_cache: Any, key: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rc = open_cache()

    def full(*args: Any, **kwargs: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rc._disk, "set", full)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert rc.put(key, completion()) is False
    assert rc.stats().errors == 1
    assert "ENOSPC" in cache_warnings(caplog)[0].getMessage()


@pytest.mark.parametrize(
    "value",
    [
        "not json {",
        json.dumps([1, 2]),
        json.dumps({"format": 2, "stored_at": T0, "completion": {}}),
        json.dumps({"format": 1, "stored_at": "yesterday", "completion": {}}),
        json.dumps({"format": 1, "stored_at": T0, "completion": {"id": 1}}),
        row_json(T0, completion(finish_reason=None).model_dump()),
        row_json(T0, {"id": "c1", "choices": [{"finish_reason": "stop", "message": assistant(5)}]}),
        b"\xff\xfe not utf-8",
    ],
    ids=["bad-json", "not-object", "format", "stored_at", "schema", "incomplete", "text", "bytes"],
)
def test_bad_row_is_a_logged_miss(
    open_cache: Any,
    key: str,
    cache_dir: pathlib.Path,
    caplog: pytest.LogCaptureFixture,
    value: Any,
) -> None:
    rc = open_cache()
    plant_row(cache_dir, key, value=value)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert rc.get(key) is None
    assert "CacheCorruptError" in cache_warnings(caplog)[0].getMessage()


def test_repeated_failure_is_logged_once_per_minute(
    open_cache: Any,
    key: str,
    cache_dir: pathlib.Path,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
) -> None:
    rc = open_cache()
    plant_row(cache_dir, key, value="not json {")
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert rc.get(key) is None
    assert rc.get(key) is None
    assert len(cache_warnings(caplog)) == 1
    assert rc.stats().errors == 2
    clock.now += 61
    rc.get(key)
    assert len(cache_warnings(caplog)) == 2


def test_logs_never_contain_prompt_or_answer(
    open_cache: Any,
    cache_dir: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    prompt, answer = "PROMPT-SECRET-1234", "ANSWER-SECRET-5678"
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    rc = open_cache()
    keys = [cache_key("m", [{"role": "user", "content": f"{prompt} {i}"}], {}) for i in range(4)]
    bad_body = {"id": answer, "choices": answer, "model": answer}
    plant_row(cache_dir, keys[0], value=row_json(T0, bad_body))
    plant_row(cache_dir, keys[1], value="{" + answer)
    plant_row(cache_dir, keys[2], value=json.dumps({"format": 9, "x": answer}))
    for k in keys[:3]:
        assert rc.get(k) is None
    rc.put(keys[3], completion(answer, finish_reason="content_filter"))

    def failing_set(*args: Any, **kwargs: Any) -> Any:
        raise sqlite3.OperationalError(f"database or disk is full {answer}")

    monkeypatch.setattr(rc._disk, "set", failing_set)
    rc.put(keys[3], completion(answer))

    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(cache_warnings(caplog)) >= 4
    for record in records:
        text = record.getMessage() + str(record.args) + str(record.exc_text)
        assert prompt not in text
        assert answer not in text


# --------------------------------------------------------------------------------------------
# Directory, configuration, stats
# --------------------------------------------------------------------------------------------


def test_directory_is_private(tmp_path: pathlib.Path, clock: FakeClock) -> None:
    directory = tmp_path / "a" / "b"
    old = os.umask(0)
    try:
        ResponseCache(make_config(directory), clock=clock).close()
    finally:
        os.umask(old)
    assert directory.stat().st_mode & 0o777 == 0o700


def test_memory_items_zero_uses_disk_only(open_cache: Any, key: str) -> None:
    rc = open_cache(memory_items=0)
    assert rc.put(key, completion()) is True
    assert text_of(rc.get(key)) == "Paris."
    assert rc.stats().memory_entries == 0


def test_disabled_cache_creates_nothing(cache_dir: pathlib.Path, key: str) -> None:
    with ResponseCache(make_config(cache_dir, enabled=False)) as rc:
        assert rc.put(key, completion()) is False
        assert rc.get(key) is None
        assert list(rc.iter_keys()) == []
        assert rc.clear() == 0
        assert rc.disk_available is False
        assert rc.stats().entries == 0
    assert not cache_dir.exists()


def test_stats_count_calls(open_cache: Any, cache_dir: pathlib.Path) -> None:
    rc = open_cache()
    rc.put("fc1-a", completion())
    rc.put("fc1-b", completion())
    rc.get("fc1-a")
    rc.get("fc1-missing")
    stats = rc.stats()
    assert isinstance(stats, CacheStats)
    assert stats.directory == str(cache_dir)
    assert (stats.hits, stats.misses, stats.stores, stats.errors) == (1, 1, 2, 0)
    assert stats.entries == 2
    assert stats.bytes > 0
    assert stats.memory_entries == 2


def test_clear_removes_everything(open_cache: Any) -> None:
    rc = open_cache()
    rc.put("fc1-a", completion())
    rc.put("fc1-b", completion())
    assert rc.clear() == 2
    assert rc.get("fc1-a") is None
    assert rc.stats().entries == 0


def test_close_is_idempotent_and_later_calls_miss(open_cache: Any, key: str) -> None:
    rc = open_cache()
    rc.put(key, completion())
    rc.close()
    rc.close()
    assert rc.get(key) is None
    assert rc.put(key, completion()) is False


def test_iter_keys_lists_stored_keys(open_cache: Any) -> None:
    rc = open_cache()
    for name in ("fc1-c", "fc1-a", "fc1-b"):
        rc.put(name, completion())
    assert sorted(rc.iter_keys()) == ["fc1-a", "fc1-b", "fc1-c"]


# --------------------------------------------------------------------------------------------
# Threads
# --------------------------------------------------------------------------------------------


def test_concurrent_puts_and_gets_stay_consistent(open_cache: Any) -> None:
    rc = open_cache()
    keys = [f"fc1-shared-{i}" for i in range(4)]
    rounds = 20
    problems: list[str] = []
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        start.wait()
        for i in range(rounds):
            k = keys[(t + i) % len(keys)]
            text = f"thread {t} round {i}"
            rc.put(k, completion(text, cid=f"id:{text}"))
            got = rc.get(k)
            if got is None:
                problems.append(f"miss on {k}")
            elif got.completion.id != f"id:{text_of(got)}":
                problems.append(f"torn entry on {k}")

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    assert problems == []
    stats = rc.stats()
    assert (stats.stores, stats.hits, stats.misses, stats.errors) == (160, 160, 0, 0)
    fresh = open_cache(memory_items=0)
    for k in keys:
        got = fresh.get(k)
        assert got is not None
        assert got.completion.id == f"id:{text_of(got)}"


# --------------------------------------------------------------------------------------------
# Dated writes, scanning stats, pruning
# --------------------------------------------------------------------------------------------


def real_key(n: int) -> str:
    return cache_key("gpt-4o-mini", [{"role": "user", "content": f"prompt {n}"}], {})


def test_put_with_stored_at_keeps_the_original_age(
    open_cache: Any, key: str, clock: FakeClock
) -> None:
    rc = open_cache()
    assert rc.put(key, completion("old"), stored_at=T0 - 30) is True
    answer = open_cache().get(key)
    assert answer is not None
    assert (answer.stored_at, answer.age) == (T0 - 30, 30.0)


def test_put_with_stored_at_older_than_ttl_is_not_stored(open_cache: Any, key: str) -> None:
    rc = open_cache()
    assert rc.put(key, completion(), stored_at=T0 - TTL) is False
    assert rc.get(key) is None


def test_put_with_a_future_stored_at_counts_as_now(open_cache: Any, key: str) -> None:
    rc = open_cache()
    rc.put(key, completion(), stored_at=T0 + 500)
    answer = open_cache().get(key)
    assert answer is not None
    assert answer.stored_at == T0


def test_stats_scan_reports_oldest_newest_and_expired(open_cache: Any, clock: FakeClock) -> None:
    rc = open_cache()
    rc.put(real_key(1), completion(), stored_at=T0 - 150)
    rc.put(real_key(2), completion(), stored_at=T0 - 60)
    rc.put(real_key(3), completion(), stored_at=T0 - 10)
    clock.now += 50  # the first two are now at least TTL (100 s) old
    rc.put(real_key(4), completion())
    stats = rc.stats(scan=True)
    assert (stats.oldest, stats.newest, stats.expired) == (T0 - 10, T0 + 50, 1)
    assert stats.entries == 3  # the first was never written: already expired


def test_stats_without_scan_leaves_ages_unknown(open_cache: Any, key: str) -> None:
    rc = open_cache()
    rc.put(key, completion())
    stats = rc.stats()
    assert (stats.oldest, stats.newest, stats.expired) == (None, None, None)


def test_stats_scan_does_not_count_hits_or_misses(open_cache: Any, key: str) -> None:
    rc = open_cache()
    rc.put(key, completion())
    stats = rc.stats(scan=True)
    assert (stats.hits, stats.misses) == (0, 0)


def test_prune_removes_only_entries_older_than_ttl(open_cache: Any, clock: FakeClock) -> None:
    rc = open_cache()
    rc.put(real_key(1), completion("old"))
    clock.now += 60
    rc.put(real_key(2), completion("young"))
    clock.now += 50  # real_key(1) is 110 s old, real_key(2) 50 s
    assert rc.prune() == 1
    assert sorted(rc.iter_keys()) == [real_key(2)]
    assert rc.get(real_key(1)) is None
    assert text_of(rc.get(real_key(2))) == "young"


def test_prune_also_empties_the_memory_layer_of_expired_entries(
    open_cache: Any, clock: FakeClock
) -> None:
    rc = open_cache()
    rc.put(real_key(1), completion())
    clock.now += TTL
    rc.prune()
    assert rc.stats().memory_entries == 0


def test_prune_leaves_unreadable_rows_alone(
    open_cache: Any, cache_dir: pathlib.Path, clock: FakeClock
) -> None:
    rc = open_cache()
    plant_row(cache_dir, real_key(1), value="not json")
    clock.now += 10 * TTL
    assert rc.prune() == 0
    assert list(rc.iter_keys()) == [real_key(1)]


# --------------------------------------------------------------------------------------------
# Export and import
# --------------------------------------------------------------------------------------------


def body(text: str = "Paris.", finish_reason: str = "stop") -> dict[str, Any]:
    return completion(text, finish_reason).model_dump(mode="json")


def export_line(key: str, stored_at: float, text: str = "Paris.", **extra: Any) -> str:
    return json.dumps({"key": key, "stored_at": stored_at, "completion": body(text), **extra})


def test_export_rows_lists_only_servable_entries(
    open_cache: Any, cache_dir: pathlib.Path, clock: FakeClock
) -> None:
    rc = open_cache()
    rc.put(real_key(1), completion("old"), stored_at=T0 - 99)
    rc.put(real_key(2), completion("fresh"))
    plant_row(cache_dir, real_key(3), value="not json")
    clock.now += 2  # real_key(1) expires
    rows = list(rc.export_rows())
    assert [(r.key, r.stored_at, r.completion.choices[0].message.content) for r in rows] == [
        (real_key(2), T0, "fresh")
    ]
    assert rc.stats().hits == 0


def test_export_then_import_round_trips_answers_and_ages(
    open_cache: Any, tmp_path: pathlib.Path, clock: FakeClock
) -> None:
    source = open_cache()
    source.put(real_key(1), completion("one"), stored_at=T0 - 40)
    source.put(real_key(2), completion("x" * 100_000))  # stored as a file
    target_file = tmp_path / "export.jsonl"
    assert source.export_jsonl(target_file) == 2
    other = ResponseCache(make_config(tmp_path / "other"), clock=clock)
    try:
        report = other.import_jsonl(target_file)
        assert (report.imported, report.invalid, report.ok) == (2, 0, True)
        first = other.get(real_key(1))
        assert first is not None
        assert (text_of(first), first.age) == ("one", 40.0)
        assert text_of(other.get(real_key(2))) == "x" * 100_000
    finally:
        other.close()


def test_export_lines_are_plain_json_with_three_keys(
    open_cache: Any, tmp_path: pathlib.Path
) -> None:
    rc = open_cache()
    rc.put(real_key(1), completion("Paris."))
    target = tmp_path / "export.jsonl"
    rc.export_jsonl(target)
    (line,) = target.read_text(encoding="utf-8").splitlines()
    row = json.loads(line)
    assert set(row) == {"key", "stored_at", "completion"}
    assert row["key"] == real_key(1)
    assert row["stored_at"] == T0
    assert ChatCompletion.model_validate(row["completion"]).choices[0].message.content == "Paris."


def test_export_file_is_private(open_cache: Any, tmp_path: pathlib.Path) -> None:
    rc = open_cache()
    rc.put(real_key(1), completion())
    target = tmp_path / "export.jsonl"
    rc.export_jsonl(target)
    assert stat_mode(target) == 0o600


def stat_mode(path: pathlib.Path) -> int:
    return path.stat().st_mode & 0o777


def test_a_failed_export_leaves_the_previous_file_intact(
    open_cache: Any, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rc = open_cache()
    rc.put(real_key(1), completion())
    target = tmp_path / "export.jsonl"
    target.write_text("previous export\n")

    def broken_rows() -> Iterator[Any]:
        yield from ResponseCache.export_rows(rc)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rc, "export_rows", broken_rows)
    with pytest.raises(OSError, match="No space"):
        rc.export_jsonl(target)
    assert target.read_text() == "previous export\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "export.jsonl"]


def test_export_to_an_open_text_stream(open_cache: Any) -> None:
    import io

    rc = open_cache()
    rc.put(real_key(1), completion())
    out = io.StringIO()
    assert rc.export_jsonl(out) == 1
    assert json.loads(out.getvalue())["key"] == real_key(1)


def test_import_never_replaces_a_newer_entry_with_an_older_one(open_cache: Any) -> None:
    rc = open_cache()
    rc.put(real_key(1), completion("newer"), stored_at=T0 - 5)
    assert rc.import_row(real_key(1), completion("older"), T0 - 50) == "kept"
    assert rc.import_row(real_key(1), completion("same age"), T0 - 5) == "kept"
    assert text_of(open_cache().get(real_key(1))) == "newer"


def test_import_replaces_an_older_entry_with_a_newer_one(open_cache: Any) -> None:
    rc = open_cache()
    rc.put(real_key(1), completion("older"), stored_at=T0 - 50)
    assert rc.import_row(real_key(1), completion("newer"), T0 - 5) == "imported"
    assert text_of(rc.get(real_key(1))) == "newer"
    assert text_of(open_cache().get(real_key(1))) == "newer"


def test_import_skips_rows_older_than_ttl(open_cache: Any) -> None:
    rc = open_cache()
    assert rc.import_row(real_key(1), completion(), T0 - TTL) == "expired"
    assert rc.get(real_key(1)) is None


@pytest.mark.parametrize(
    ("key_value", "answer", "stored_at", "message"),
    [
        ("fc1-abc", completion(), T0, "'key' must be a cache key"),
        ("FC1-" + "a" * 64, completion(), T0, "'key' must be a cache key"),
        ("fc1-" + "a" * 64, completion(finish_reason=None), T0, "not a complete answer"),
        ("fc1-" + "a" * 64, completion(finish_reason="content_filter"), T0, "not a complete"),
        ("fc1-" + "a" * 64, completion(), float("nan"), "'stored_at' must be a finite"),
        ("fc1-" + "a" * 64, completion(), -1.0, "'stored_at' must be a finite"),
        ("fc1-" + "a" * 64, completion(), True, "'stored_at' must be a finite"),
    ],
)
def test_import_row_rejects_bad_input(
    open_cache: Any, key_value: str, answer: ChatCompletion, stored_at: Any, message: str
) -> None:
    rc = open_cache()
    with pytest.raises(ValueError, match=re.escape(message)):
        rc.import_row(key_value, answer, stored_at)
    assert list(rc.iter_keys()) == []


def test_import_into_a_closed_cache_fails_without_raising(open_cache: Any) -> None:
    rc = open_cache()
    rc.close()
    assert rc.import_row(real_key(1), completion(), T0) == "failed"


def test_import_reports_each_bad_line_by_number_and_imports_the_rest(
    open_cache: Any, tmp_path: pathlib.Path
) -> None:
    source = tmp_path / "in.jsonl"
    lines = [
        export_line(real_key(1), T0),  # 1: good
        "{not json",  # 2
        "# a comment",  # 3: skipped
        "",  # 4: skipped
        json.dumps([1, 2]),  # 5
        export_line(real_key(2), T0, extra_key=1),  # 6
        json.dumps({"key": real_key(3), "stored_at": T0}),  # 7
        json.dumps({"key": real_key(3), "stored_at": T0, "completion": {"id": 1}}),  # 8
        json.dumps({"key": "fc1-xyz", "stored_at": T0, "completion": body()}),  # 9
        json.dumps({"key": real_key(4), "stored_at": T0, "completion": body("", "content_filter")}),
        json.dumps({"key": real_key(5), "stored_at": "yesterday", "completion": body()}),  # 11
        '{"key": "' + real_key(6) + '", "stored_at": NaN, "completion": {}}',  # 12
        export_line(real_key(7), T0),  # 13: good
    ]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    rc = open_cache()
    report = rc.import_jsonl(source)
    assert (report.imported, report.invalid) == (2, 9)
    assert [(e.line, e.file) for e in report.errors] == [
        (n, str(source)) for n in (2, 5, 6, 7, 8, 9, 10, 11, 12)
    ]
    messages = {e.line: e.message for e in report.errors}
    assert messages[2].startswith("not valid JSON")
    assert messages[5] == "expected a JSON object, got an array"
    assert messages[6] == "unknown key(s) 'extra_key'"
    assert messages[7] == "missing key(s) 'completion'"
    assert messages[8].startswith("'completion' is not a valid chat completion")
    assert messages[9].startswith("'key' must be a cache key")
    assert messages[10].startswith("'completion' is not a complete answer")
    assert messages[11].startswith("'stored_at' must be a finite number")
    assert "NaN is not valid JSON" in messages[12]
    assert str(report.errors[0]) == f"{source}:2: {messages[2]}"
    assert sorted(rc.iter_keys()) == sorted([real_key(1), real_key(7)])


def test_import_refuses_a_pickle_and_never_runs_it(open_cache: Any, tmp_path: pathlib.Path) -> None:
    marker = tmp_path / "pwned"
    source = tmp_path / "in.jsonl"
    payload = {"key": real_key(1), "stored_at": T0, "completion": evil_pickle(marker).hex()}
    source.write_bytes(json.dumps(payload).encode() + b"\n" + evil_pickle(marker) + b"\n")
    report = open_cache().import_jsonl(source)
    assert report.imported == 0
    assert report.invalid == len(report.errors) >= 2  # the raw pickle: one error per line
    assert report.errors[0].message == "'completion' must be an object, got a string"
    assert not marker.exists()


def test_import_of_a_missing_file_is_an_input_file_error(
    open_cache: Any, tmp_path: pathlib.Path
) -> None:
    from fallbackchain.cache import InputFileError

    missing = tmp_path / "nope.jsonl"
    with pytest.raises(InputFileError, match=re.escape(f"{missing}: file not found")):
        open_cache().import_jsonl(missing)


def test_import_from_lines_in_memory(open_cache: Any) -> None:
    report = open_cache().import_jsonl([export_line(real_key(1), T0), "oops"], name="shipped")
    assert report.imported == 1
    assert str(report.errors[0]).startswith("shipped:2: not valid JSON")


# --------------------------------------------------------------------------------------------
# Numbers in keys
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"temperature": 1}, {"temperature": 1.0}),
        ({"temperature": 0}, {"temperature": 0.0}),
        ({"temperature": 0}, {"temperature": -0.0}),
        ({"max_tokens": 100}, {"max_tokens": 100.0}),
        ({"extra_body": {"k": [2, {"x": 3}]}}, {"extra_body": {"k": [2.0, {"x": 3.0}]}}),
    ],
)
def test_key_counts_numbers_by_value(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert cache_key("m", MESSAGES, a) == cache_key("m", MESSAGES, b)


def test_key_counts_numbers_in_messages_by_value() -> None:
    tool = [{"role": "tool", "tool_call_id": "t", "content": [{"type": "text", "n": 1}]}]
    tool_float = [{"role": "tool", "tool_call_id": "t", "content": [{"type": "text", "n": 1.0}]}]
    assert cache_key("m", tool, {}) == cache_key("m", tool_float, {})


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ({"logprobs": True}, {"logprobs": 1}),
        ({"logprobs": True}, {"logprobs": 1.0}),
        ({"logprobs": False}, {"logprobs": 0}),
        ({"temperature": 0.5}, {"temperature": 1}),
        ({"temperature": 1}, {"temperature": "1"}),
    ],
)
def test_key_keeps_different_values_apart(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert cache_key("m", MESSAGES, a) != cache_key("m", MESSAGES, b)


def test_key_of_an_int_parameter_is_unchanged() -> None:
    """Keys stored before numbers were canonicalised stay readable when no whole float is used."""
    canonical = json.dumps(
        {"model": "m", "messages": MESSAGES, "params": {"max_tokens": 100, "temperature": 0.5}},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    expected = "fc1-" + hashlib.sha256(canonical.encode("utf-8")).hexdigest()
    assert cache_key("m", MESSAGES, {"max_tokens": 100, "temperature": 0.5}) == expected
    assert cache_key("m", MESSAGES, {"max_tokens": 100.0, "temperature": 0.5}) == expected


def test_a_prompts_file_float_and_app_code_int_share_the_cached_answer(
    open_cache: Any,
) -> None:
    rc = open_cache()
    from_file = json.loads('{"temperature": 1.0, "top_p": 1.0}')
    assert rc.put(cache_key("m", MESSAGES, from_file), completion("warm"))
    assert text_of(rc.get(cache_key("m", MESSAGES, {"temperature": 1, "top_p": 1}))) == "warm"
