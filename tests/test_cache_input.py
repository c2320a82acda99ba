"""Bad input to the cache: import lines and stored rows that must be reported, never fatal.

An import file or a stored row is input like any other: each bad line gives a ``FILE:LINE``
error, each unreadable row is skipped and counted, and the rest is imported or scanned.
"""

from __future__ import annotations

import json
import pathlib
import re
import sqlite3
import string
import tempfile
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openai.types.chat import ChatCompletion

from fallbackchain._config import CacheConfig
from fallbackchain.cache._cache import ResponseCache
from fallbackchain.cli import main

from .test_cache import T0, FakeClock, body, export_line, make_config, real_key

HUGE = 10**400  # a JSON integer no float can hold


def huge_row_text(stored_at: str) -> str:
    """A stored row as ResponseCache writes it, with ``stored_at`` spelled as given."""
    return '{"format":1,"stored_at":' + stored_at + ',"completion":' + json.dumps(body()) + "}"


def set_row_value(directory: pathlib.Path, key: str, text: str) -> None:
    """Rewrite one stored row's value in place, as a bad writer or a bit flip could."""
    con = sqlite3.connect(directory / "cache.db")
    try:
        assert con.execute("UPDATE Cache SET value = ? WHERE key = ?", (text, key)).rowcount == 1
        con.commit()
    finally:
        con.close()


def write_cli_config(tmp_path: pathlib.Path, directory: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "cfg.toml"
    path.write_text(f'[cache]\ndirectory = "{directory}"\nttl = 3600\n', encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# import: a 400-digit stored_at is one bad line
# --------------------------------------------------------------------------------------------


def test_a_400_digit_stored_at_is_one_bad_line_and_the_rest_is_imported(
    tmp_path: pathlib.Path,
) -> None:
    source = tmp_path / "in.jsonl"
    huge = json.dumps({"key": real_key(2), "stored_at": HUGE, "completion": body()})
    negative = json.dumps({"key": real_key(3), "stored_at": -HUGE, "completion": body()})
    lines = [export_line(real_key(1), T0), huge, negative, export_line(real_key(4), T0)]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with ResponseCache(make_config(tmp_path / "cache"), clock=FakeClock()) as rc:
        report = rc.import_jsonl(source)
        assert (report.imported, report.invalid) == (2, 2)
        assert [str(e) for e in report.errors] == [
            f"{source}:{n}: 'stored_at' must be a finite number of seconds >= 0" for n in (2, 3)
        ]
        assert sorted(rc.iter_keys()) == sorted([real_key(1), real_key(4)])


def test_import_row_refuses_a_400_digit_stored_at_with_a_value_error(
    tmp_path: pathlib.Path,
) -> None:
    rc = ResponseCache(make_config(tmp_path / "cache"), clock=FakeClock())
    with rc, pytest.raises(ValueError, match="'stored_at' must be a finite number"):
        rc.import_row(real_key(1), ChatCompletion.model_validate(body()), HUGE)


def test_cli_import_of_a_400_digit_stored_at_reports_the_line_and_exits_1(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "in.jsonl"
    huge = json.dumps({"key": real_key(2), "stored_at": HUGE, "completion": body()})
    source.write_text(export_line(real_key(1), 2e9) + "\n" + huge + "\n", encoding="utf-8")
    config = write_cli_config(tmp_path, tmp_path / "cache")
    code = main(["cache", "import", str(source), "--config", str(config)])
    captured = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in captured.err
    assert captured.err.splitlines() == [
        f"{source}:2: 'stored_at' must be a finite number of seconds >= 0"
    ]
    assert captured.out.startswith("imported 1, kept 0")


# --------------------------------------------------------------------------------------------
# scans: one unreadable row is skipped and counted, never the end of the scan
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stored_at", ["1" + "0" * 400, "-" + "9" * 400, "1e400"])
def test_a_stored_row_with_an_impossible_stored_at_is_skipped_and_counted(
    tmp_path: pathlib.Path, stored_at: str
) -> None:
    directory = tmp_path / "cache"
    clock = FakeClock()
    with ResponseCache(make_config(directory), clock=clock) as rc:
        for n in range(6):
            assert rc.put(real_key(n), ChatCompletion.model_validate(body(f"answer {n}")))
    set_row_value(directory, real_key(2), huge_row_text(stored_at))
    with ResponseCache(make_config(directory), clock=clock) as rc:
        exported = [row.key for row in rc.export_rows()]
        assert exported == [real_key(n) for n in (0, 1, 3, 4, 5)]
        assert rc.stats().skipped == 1
        stats = rc.stats(scan=True)
        assert (stats.entries, stats.expired, stats.skipped) == (6, 0, 2)
        assert rc.get(real_key(2)) is None  # a miss, not an exception
        assert rc.get(real_key(3)) is not None


def test_cli_export_writes_every_good_row_and_exits_1_when_one_was_skipped(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "cache"
    with ResponseCache(CacheConfig(directory=str(directory), ttl=3600)) as rc:
        for n in range(6):
            rc.put(real_key(n), ChatCompletion.model_validate(body(f"answer {n}")))
    set_row_value(directory, real_key(0), huge_row_text("1" + "0" * 400))
    config = write_cli_config(tmp_path, directory)
    target = tmp_path / "out.jsonl"
    code = main(["cache", "export", str(target), "--config", str(config)])
    captured = capsys.readouterr()
    assert code == 1
    assert captured.out == f"exported 5 entries to {target}\n"
    assert "skipped 1 unreadable cache row" in captured.err
    assert "Traceback" not in captured.err
    assert len(target.read_text().splitlines()) == 5

    code = main(["cache", "stats", "--config", str(config), "--json"])
    stats = json.loads(capsys.readouterr().out)
    assert (code, stats["entries"], stats["unreadable"]) == (1, 6, 1)


# --------------------------------------------------------------------------------------------
# Property: the import parser gives only FILE:LINE errors, never another exception
# --------------------------------------------------------------------------------------------

_NAME = "shipped.jsonl"
_LINE_ERROR = re.compile(re.escape(_NAME) + r":(\d+): \S")

_json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**450), max_value=10**450),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _export_like(draw: st.DrawFn) -> Any:
    """A line close to a valid export line: at most one of its parts spoiled."""
    value: dict[str, Any] = {
        "key": draw(st.sampled_from([real_key(1), real_key(2)])),
        "stored_at": draw(
            st.sampled_from([T0, 0, HUGE, -HUGE, -1, 10**20])
            | st.integers(min_value=-(10**450), max_value=10**450)
            | st.floats()
        ),
        "completion": draw(
            st.sampled_from([body(), body("x", "length"), body("", "content_filter")])
        ),
    }
    spoil = draw(st.sampled_from(["none", "key", "stored_at", "completion", "choice", "extra"]))
    if spoil in ("key", "stored_at", "completion"):
        value[spoil] = draw(_json_values)
    elif spoil == "choice":
        value["completion"]["choices"][0] = draw(_json_values)
    elif spoil == "extra":
        value[draw(st.text(max_size=6))] = draw(_json_scalars)
    return value


def _dump(value: Any) -> str:
    return json.dumps(value, allow_nan=True)


_lines = st.lists(
    st.one_of(
        _export_like().map(_dump),
        _json_values.map(_dump),
        st.text(alphabet=string.printable + '{}[]":,\ud800\ufeff\x00', max_size=40),
        st.builds(lambda n: "[" * n + "]" * n, st.integers(min_value=0, max_value=5000)),
        st.just("1" * 5000),  # beyond Python's int-from-string limit
    ),
    max_size=8,
)


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lines=_lines, as_bytes=st.booleans(), junk=st.binary(max_size=12))
def test_import_gives_only_file_line_errors_never_another_exception(
    lines: list[str], as_bytes: bool, junk: bytes
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp)
        with ResponseCache(make_config(root / "cache"), clock=FakeClock()) as rc:
            if as_bytes:
                path = root / _NAME
                data = (
                    b"".join(line.encode("utf-8", "surrogatepass") + b"\n" for line in lines) + junk
                )
                path.write_bytes(data)
                report = rc.import_jsonl(path, name=_NAME)
                physical_lines = data.count(b"\n") + 1
            else:
                report = rc.import_jsonl(lines, name=_NAME)
                physical_lines = len(lines)
        assert report.invalid == len(report.errors)
        numbers = []
        for error in report.errors:
            match = _LINE_ERROR.match(str(error))
            assert match, str(error)
            assert "\n" not in str(error)
            numbers.append(int(match.group(1)))
        assert numbers == sorted(set(numbers))
        assert all(1 <= n <= physical_lines for n in numbers)


def test_the_property_strategy_reaches_valid_lines() -> None:
    """Guard the property test: its strategy must be able to produce an importable line."""
    good = _dump({"key": real_key(1), "stored_at": T0, "completion": body()})
    with tempfile.TemporaryDirectory() as tmp:
        rc = ResponseCache(make_config(pathlib.Path(tmp) / "cache"), clock=FakeClock())
        with rc:
            assert rc.import_jsonl([good], name=_NAME).imported == 1


@st.composite
def _stored_rows(draw: st.DrawFn) -> Any:
    """A stored row close to a valid one: at most one part spoiled, or any JSON at all."""
    if draw(st.booleans()):
        return draw(_json_values)
    row: dict[str, Any] = {"format": 1, "stored_at": T0, "completion": body()}
    spoil = draw(st.sampled_from(["none", "format", "stored_at", "completion", "choice"]))
    if spoil in ("format", "stored_at", "completion"):
        row[spoil] = draw(
            st.sampled_from([HUGE, -HUGE, 10**20, True]) | _json_values
            if spoil == "stored_at"
            else _json_values
        )
    elif spoil == "choice":
        row["completion"]["choices"][0] = draw(_json_values)
    return row


@pytest.mark.slow
@settings(max_examples=300, deadline=None)
@given(row=_stored_rows(), as_bytes=st.booleans())
def test_a_stored_row_is_an_entry_or_a_cache_error_never_another_exception(
    row: Any, as_bytes: bool
) -> None:
    from fallbackchain._errors import CacheError
    from fallbackchain.cache._cache import decode_row

    text = _dump(row)
    try:
        entry = decode_row(text.encode("utf-8", "surrogatepass") if as_bytes else text)
    except CacheError:
        return
    assert isinstance(entry.stored_at, float)
    assert entry.stored_at == entry.stored_at  # finite, never NaN
