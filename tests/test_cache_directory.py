"""The cache directory must be private: refused when others could write it, created 0700/0600."""

from __future__ import annotations

import logging
import os
import pathlib
import stat
from collections.abc import Iterator

import pytest

from fallbackchain._errors import ConfigError
from fallbackchain.cache._cache import ResponseCache
from fallbackchain.cli import main

from .test_cache import LOGGER, FakeClock, cache_warnings, completion, make_config, real_key

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")

ROOT = os.name == "posix" and os.geteuid() == 0
OTHER_UID = 65534  # nobody


def mode_of(path: pathlib.Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    """The most permissive umask: whatever is private must be made so on purpose."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def refusal(directory: pathlib.Path) -> str:
    with pytest.raises(ConfigError) as info:
        ResponseCache(make_config(directory), clock=FakeClock())
    message = str(info.value)
    assert message.startswith("key 'cache.directory': refusing the cache directory ")
    assert str(directory) in message
    return message


# --------------------------------------------------------------------------------------------
# Refused
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o707, 0o1777], ids=lambda m: f"{m:04o}")
def test_an_existing_directory_writable_by_others_is_refused(
    tmp_path: pathlib.Path, mode: int
) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    directory.chmod(mode)
    message = refusal(directory)
    assert f"it is writable by other users (mode {stat.S_IMODE(mode):04o})" in message
    assert list(directory.iterdir()) == []  # nothing was created in it


@pytest.mark.skipif(not ROOT, reason="needs root to give a directory to another user")
def test_an_existing_directory_owned_by_another_user_is_refused(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    os.chown(directory, OTHER_UID, OTHER_UID)
    message = refusal(directory)
    assert f"it is owned by another user (uid {OTHER_UID}, not 0)" in message
    assert list(directory.iterdir()) == []


def test_a_symlink_into_a_shared_directory_is_refused(tmp_path: pathlib.Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # anyone can swap the cache directory for their own
    target = shared / "cache"
    target.mkdir(mode=0o700)
    link = tmp_path / "cache"
    link.symlink_to(target)
    message = refusal(link)
    assert f"{shared}, above it, is writable by every user (mode 0777)" in message
    assert f"(the symlink leads to {target})" in message


def test_a_symlink_into_a_directory_others_can_write_is_refused(tmp_path: pathlib.Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    link = tmp_path / "cache"
    link.symlink_to(shared)
    assert "it is writable by other users (mode 0777)" in refusal(link)


@pytest.mark.skipif(not ROOT, reason="needs root to give a symlink to another user")
def test_a_symlink_owned_by_another_user_is_refused(tmp_path: pathlib.Path) -> None:
    target = tmp_path / "real"
    target.mkdir(mode=0o700)
    link = tmp_path / "cache"
    link.symlink_to(target)
    os.lchown(link, OTHER_UID, OTHER_UID)
    assert f"{link} is a symlink owned by another user (uid {OTHER_UID})" in refusal(link)


def test_the_cli_names_the_path_and_the_reason_without_a_traceback(
    tmp_path: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    directory = tmp_path / "cache"
    directory.mkdir()
    directory.chmod(0o777)
    config = tmp_path / "cfg.toml"
    config.write_text(f'[cache]\ndirectory = "{directory}"\n', encoding="utf-8")
    for command in (["cache", "stats"], ["cache", "export", str(tmp_path / "out.jsonl")]):
        code = main([*command, "--config", str(config)])
        captured = capsys.readouterr()
        assert code == 2
        assert captured.err.startswith(
            f"fallbackchain: error: key 'cache.directory': refusing the cache directory "
            f"{directory}: it is writable by other users (mode 0777)"
        )
        assert "Traceback" not in captured.err
        assert captured.err.count("\n") == 1


def test_a_directory_made_unsafe_after_start_is_logged_on_reopen_not_raised(
    tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "cache"
    clock = FakeClock()
    directory.mkdir(mode=0o700)
    (directory / "cache.db").write_bytes(b"not a database" * 100)  # the first open fails
    rc = ResponseCache(make_config(directory), clock=clock)
    assert not rc.disk_available
    directory.chmod(0o777)
    clock.now += 61  # the reopen is due
    caplog.set_level(logging.WARNING, logger=LOGGER)
    assert rc.get(real_key(1)) is None
    assert not rc.disk_available
    assert any("refusing the cache directory" in r.getMessage() for r in cache_warnings(caplog))
    rc.close()


# --------------------------------------------------------------------------------------------
# Accepted, and made private
# --------------------------------------------------------------------------------------------


def test_a_private_directory_under_a_sticky_shared_one_is_accepted(tmp_path: pathlib.Path) -> None:
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    sticky.chmod(0o1777)  # like /tmp: others cannot rename or remove what is ours
    with ResponseCache(make_config(sticky / "cache"), clock=FakeClock()) as rc:
        assert rc.disk_available
        assert rc.put(real_key(1), completion())


@pytest.mark.usefixtures("umask_zero")
def test_new_directories_are_0700_and_files_0600(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "a" / "b" / "cache"
    with ResponseCache(make_config(directory), clock=FakeClock()) as rc:
        assert rc.put(real_key(1), completion())
        assert rc.put(real_key(2), completion("x" * 100_000))  # stored in a file of its own
        files = [p for p in directory.rglob("*") if p.is_file()]
        names = {p.name for p in files}
        assert {"cache.db", "cache.db-wal", "cache.db-shm"} <= names
        row_files = [p for p in files if p.suffix == ".val"]
        assert len(row_files) == 1
        for path in files:
            assert mode_of(path) == 0o600, path
        for path in [tmp_path / "a", tmp_path / "a" / "b", directory] + [
            p for p in directory.rglob("*") if p.is_dir()
        ]:
            assert mode_of(path) == 0o700, path
        assert rc.get(real_key(2)) is not None


def test_an_existing_database_readable_by_others_is_made_private(tmp_path: pathlib.Path) -> None:
    directory = tmp_path / "cache"
    with ResponseCache(make_config(directory), clock=FakeClock()) as rc:
        rc.put(real_key(1), completion())
    (directory / "cache.db").chmod(0o644)
    with ResponseCache(make_config(directory), clock=FakeClock()) as rc:
        assert rc.get(real_key(1)) is not None
        assert mode_of(directory / "cache.db") == 0o600


def test_a_chain_refuses_an_unsafe_cache_directory_at_construction(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fallbackchain import FallbackChain

    directory = tmp_path / "cache"
    directory.mkdir()
    directory.chmod(0o777)
    monkeypatch.setenv("FALLBACKCHAIN_TEST_KEY", "sk-test")
    config = tmp_path / "cfg.toml"
    config.write_text(
        '[openai]\nbase_url = "http://127.0.0.1:9/v1"\napi_key_env = "FALLBACKCHAIN_TEST_KEY"\n'
        f'[cache]\ndirectory = "{directory}"\n',
        encoding="utf-8",
    )
    with pytest.raises(ConfigError, match=r"refusing the cache directory .*\(mode 0777\)"):
        FallbackChain.from_config(config)
    assert list(directory.iterdir()) == []
