"""``clear`` and ``cache clear`` report what really happened, also when clearing fails part way."""

from __future__ import annotations

import logging
import pathlib

import diskcache.core
import pytest

from fallbackchain._config import CacheConfig
from fallbackchain.cache._cache import ResponseCache
from fallbackchain.cli import main

from .test_cache import LOGGER, cache_warnings, completion, plant_row, real_key


def populate(directory: pathlib.Path, count: int) -> None:
    with ResponseCache(CacheConfig(directory=str(directory), ttl=3600)) as rc:
        for n in range(count):
            assert rc.put(real_key(n), completion(f"answer {n}"))


def plant_row_with_outside_file(directory: pathlib.Path) -> pathlib.Path:
    """A planted row naming a file outside the cache: its file must never be removed."""
    victim = directory.parent / "victim.txt"
    victim.write_text("precious")
    plant_row(directory, real_key(999), mode=diskcache.core.MODE_TEXT, filename="../victim.txt")
    return victim


# 250 rows: more than one of diskcache's delete batches; planted first, the failure comes
# after the first batch, and clearing must go on.
@pytest.mark.parametrize(("count", "planted_first"), [(5, False), (250, False), (250, True)])
def test_clear_counts_every_row_removed_even_when_one_row_fails(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture, count: int, planted_first: bool
) -> None:
    directory = tmp_path / "cache"
    populate(directory, 0 if planted_first else count)
    victim = plant_row_with_outside_file(directory)
    if planted_first:
        populate(directory, count)
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with ResponseCache(CacheConfig(directory=str(directory), ttl=3600)) as rc:
        assert rc.stats().entries == count + 1
        assert rc.clear() == count + 1
        assert rc.stats().entries == 0
    assert victim.read_text() == "precious"
    (record,) = cache_warnings(caplog)
    message = record.getMessage()
    assert "during clear" in message
    assert "not cleared" not in message
    assert message.endswith(f"{count + 1} rows removed, 0 left")


def test_cli_clear_reports_the_rows_really_removed(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "cache"
    populate(directory, 5)
    plant_row_with_outside_file(directory)
    config = tmp_path / "cfg.toml"
    config.write_text(f'[cache]\ndirectory = "{directory}"\n', encoding="utf-8")
    code = main(["cache", "clear", "--yes", "--config", str(config)])
    captured = capsys.readouterr()
    assert code == 0
    assert captured.out == f"removed 6 entries from {directory}\n"
    assert "not cleared" not in captured.err
    assert "6 rows removed, 0 left" in captured.err


@pytest.mark.slow
def test_a_clear_blocked_by_a_locked_database_says_nothing_was_removed(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    import sqlite3

    directory = tmp_path / "cache"
    populate(directory, 3)
    with ResponseCache(CacheConfig(directory=str(directory), ttl=3600)) as rc:
        assert rc.disk_available
        locker = sqlite3.connect(directory / "cache.db", isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")  # another writer holds the lock past the busy timeout
        try:
            caplog.set_level(logging.WARNING, logger=LOGGER)
            assert rc.clear() == 0
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        (record,) = cache_warnings(caplog)
        assert record.getMessage().endswith("0 rows removed, 3 left")
        assert rc.stats().entries == 3
