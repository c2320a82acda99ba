"""A cache that cannot be written (read-only filesystem, full disk) still serves what it holds.

The filesystems are real: as root (where ``chmod`` stops nothing) the cache directory is a
read-only bind mount, or a full tmpfs, in a private mount namespace (``unshare -m``); as
another user, the directory and its files are ``chmod``-ed read-only. Each scenario runs in a
child process that prints what it saw as JSON.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from fallbackchain._config import CacheConfig
from fallbackchain.cache import ResponseCache

from .test_cache import completion, real_key

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX filesystems")

ROOT = os.name == "posix" and os.geteuid() == 0
ANSWERS = 5

# The child: open the cache, use it as a chain and the CLI would, print what happened.
CHILD = r"""
import contextlib, io, json, logging, os, sys, time

from openai.types.chat import ChatCompletion

from fallbackchain.cache import ResponseCache, cache_key
from fallbackchain.cli import main
from fallbackchain._config import CacheConfig

directory, export_to, scenario = sys.argv[1], sys.argv[2], sys.argv[3]
config = CacheConfig(directory=directory, ttl=3600, memory_items=16)
warnings = []


class Collect(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())


logging.getLogger("fallbackchain.cache").addHandler(Collect(level=logging.WARNING))


def key(n):  # as tests.test_cache.real_key
    return cache_key("gpt-4o-mini", [{"role": "user", "content": f"prompt {n}"}], {})


def answer(text):
    return ChatCompletion.model_validate({
        "id": "c", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": text}}],
    })


def text(hit):
    return None if hit is None else hit.completion.choices[0].message.content


class Clock:  # the wall clock, which the test can move on
    now = time.time()

    def __call__(self):
        return self.now


out = {}
if scenario == "full":  # fill the cache, then the disk it lives on
    with ResponseCache(config) as rc:
        for n in range(5):
            assert rc.put(key(n), answer(f"answer {n}"))
    filler = os.path.join(os.path.dirname(directory), "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        out["filled"] = exc.strerror
    finally:
        os.close(fd)

clock = Clock()
rc = ResponseCache(config, clock=clock)
out["read_only"] = rc.read_only
out["disk_available"] = rc.disk_available
out["hits"] = [text(rc.get(key(n))) for n in range(6)]
out["put"] = rc.put(key(9), answer("new"))
out["new_from_memory"] = text(rc.get(key(9)))
stats = rc.stats(scan=True)
out["entries"], out["errors"] = stats.entries, stats.errors
out["exported"] = sorted(row.key for row in rc.export_rows())
out["keys"] = len(list(rc.iter_keys()))
out["clear"], out["prune"] = rc.clear(), rc.prune()
out["import"] = rc.import_row(key(10), answer("imported"), clock.now)
out["hits_after"] = [text(rc.get(key(n))) for n in range(5)]
out["warnings"] = list(warnings)
if scenario == "full":  # space comes back: the next reopen writes again
    os.unlink(filler)
    clock.now += 61
    out["put_after_space"] = rc.put(key(11), answer("stored"))
    out["read_only_after_space"] = rc.read_only
    out["warnings_after_space"] = warnings[len(out["warnings"]):]
rc.close()

config_file = os.path.join(os.path.dirname(export_to), "cli.toml")
with open(config_file, "w") as f:
    f.write(f'[cache]\ndirectory = "{directory}"\nttl = 3600\n')
cli = {}
for name, argv in [
    ("stats", ["cache", "stats", "--json"]),
    ("export", ["cache", "export", export_to]),
    ("clear", ["cache", "clear", "--yes"]),
    ("prune", ["cache", "prune"]),
    ("import", ["cache", "import", export_to]),
]:
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = main([*argv, "--config", config_file])
    cli[name] = {"code": code, "out": stdout.getvalue(), "err": stderr.getvalue()}
out["cli"] = cli
print(json.dumps(out))
"""


def run_child(argv: list[str]) -> dict[str, Any]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
    result["stderr"] = done.stderr
    return result


def child_argv(directory: pathlib.Path, export_to: pathlib.Path, scenario: str) -> list[str]:
    return [sys.executable, "-c", CHILD, str(directory), str(export_to), scenario]


def in_private_mounts(setup: str, argv: list[str]) -> list[str]:
    """``argv`` run after the shell command ``setup`` in a private mount namespace."""
    return ["unshare", "-m", "sh", "-c", f'{setup} && exec "$@"', "sh", *argv]


def can_mount(tmp_path: pathlib.Path) -> bool:
    if not ROOT or shutil.which("unshare") is None:
        return False
    probe = tmp_path / "probe"
    probe.mkdir()
    setup = f"mount -t tmpfs -o size=64k tmpfs {probe} && mount --bind -o ro {probe} {probe}"
    done = subprocess.run(
        in_private_mounts(setup, ["true"]), capture_output=True, timeout=30, check=False
    )
    probe.rmdir()
    return done.returncode == 0


def populate(directory: pathlib.Path) -> None:
    with ResponseCache(CacheConfig(directory=str(directory), ttl=3600)) as rc:
        for n in range(ANSWERS):
            assert rc.put(real_key(n), completion(f"answer {n}"))


def tree(directory: pathlib.Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def read_only_cache(tmp_path: pathlib.Path) -> Iterator[tuple[pathlib.Path, list[str]]]:
    """A populated cache directory and how to run the child with it read-only."""
    directory = tmp_path / "cache"
    populate(directory)
    export_to = tmp_path / "out" / "export.jsonl"
    export_to.parent.mkdir()
    argv = child_argv(directory, export_to, "read-only")
    if not ROOT:
        paths = [directory, *directory.rglob("*")]
        for path in paths:
            path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield directory, argv
        finally:
            for path in paths:
                path.chmod(0o700 if path.is_dir() else 0o600)
        return
    if not can_mount(tmp_path):
        pytest.skip("root without unshare/mount: no real read-only filesystem to test with")
    yield directory, in_private_mounts(f'mount --bind -o ro "{directory}" "{directory}"', argv)


def assert_serves_read_only(result: dict[str, Any]) -> None:
    answers = [f"answer {n}" for n in range(ANSWERS)]
    assert result["read_only"] is True
    assert result["disk_available"] is True
    assert result["hits"] == [*answers, None]
    assert result["put"] is False  # not stored on disk ...
    assert result["new_from_memory"] == "new"  # ... but served from memory in this process
    assert result["entries"] == ANSWERS
    assert result["errors"] == 0  # skipped writes are not failures
    assert result["exported"] == sorted(real_key(n) for n in range(ANSWERS))
    assert result["keys"] == ANSWERS
    assert (result["clear"], result["prune"], result["import"]) == (0, 0, "failed")
    assert result["hits_after"] == answers
    opened = [w for w in result["warnings"] if "opened read-only" in w]
    assert len(opened) == 1, result["warnings"]
    assert "stored answers are served, new answers are not stored" in opened[0]


def assert_cli_works_read_only(result: dict[str, Any], export_to: pathlib.Path) -> None:
    cli = result["cli"]
    stats = json.loads(cli["stats"]["out"])
    assert (cli["stats"]["code"], stats["entries"], stats["read_only"]) == (0, ANSWERS, True)
    assert "opened read-only" in cli["stats"]["err"]
    assert cli["export"]["code"] == 0
    assert cli["export"]["out"] == f"exported {ANSWERS} entries to {export_to}\n"
    for name, nothing in (
        ("clear", f"nothing removed ({ANSWERS} entries)"),
        ("prune", "nothing pruned"),
        ("import", "nothing imported"),
    ):
        assert cli[name]["code"] == 1, cli[name]
        assert (
            cli[name]["err"]
            .rstrip()
            .endswith(
                f"could only be opened read-only (a read-only "
                f"filesystem, a full disk or no write permission; see the warning above): {nothing}"
            )
        )
        assert "Traceback" not in cli[name]["err"]


@pytest.mark.slow
def test_a_read_only_cache_directory_serves_its_answers_and_skips_writes(
    read_only_cache: tuple[pathlib.Path, list[str]], tmp_path: pathlib.Path
) -> None:
    directory, argv = read_only_cache
    before = tree(directory)
    result = run_child(argv)
    assert_serves_read_only(result)
    assert_cli_works_read_only(result, tmp_path / "out" / "export.jsonl")
    assert len((tmp_path / "out" / "export.jsonl").read_text().splitlines()) == ANSWERS
    assert tree(directory) == before  # nothing was written


@pytest.mark.slow
def test_a_cache_on_a_full_disk_serves_its_answers_and_writes_again_when_space_returns(
    tmp_path: pathlib.Path,
) -> None:
    if not can_mount(tmp_path):
        pytest.skip("needs root with unshare and mount for a real full filesystem")
    mount = tmp_path / "small"
    mount.mkdir()
    export_to = tmp_path / "out" / "export.jsonl"
    export_to.parent.mkdir()
    argv = child_argv(mount / "cache", export_to, "full")
    result = run_child(in_private_mounts(f'mount -t tmpfs -o size=2m tmpfs "{mount}"', argv))
    assert result["filled"] == "No space left on device"
    assert_serves_read_only(result)
    assert (result["put_after_space"], result["read_only_after_space"]) == (True, False)
    (again,) = result["warnings_after_space"]
    assert again.endswith("writable again; new answers are stored")
    cli = result["cli"]  # by then space is back: the CLI works as on any disk
    assert cli["export"]["out"] == f"exported {ANSWERS + 1} entries to {export_to}\n"
    assert (cli["clear"]["code"], cli["clear"]["out"].split(" from ")[0]) == (
        0,
        f"removed {ANSWERS + 1} entries",
    )


# The child for the chain: answer one prompt with the API down, from a read-only cache.
CHAIN_CHILD = r"""
import json, logging, sys

from fallbackchain import FallbackChain

warnings = []


class Collect(logging.Handler):
    def emit(self, record):
        warnings.append(record.getMessage())


logging.getLogger("fallbackchain.cache").addHandler(Collect(level=logging.WARNING))
with FallbackChain.from_config(sys.argv[1]) as chain:
    response = chain.complete([{"role": "user", "content": "What is the capital of France?"}])
    print(json.dumps({
        "source": response.source,
        "text": response.text,
        "read_only": chain.cache.read_only,
        "warnings": warnings,
    }))
"""


def chain_config(tmp_path: pathlib.Path, server: Any) -> tuple[pathlib.Path, pathlib.Path]:
    """The test profile against ``server``, with its cache in ``tmp_path / "cache"``."""
    directory = tmp_path / "cache"
    config = tmp_path / "chain.toml"
    template = (pathlib.Path(__file__).parent.parent / "config" / "test.toml").read_text()
    config.write_text(
        template.replace('"http://127.0.0.1:8000/v1"', f'"{server.base_url}"').replace(
            '".fallbackchain-cache/test"', f'"{directory}"'
        ),
        encoding="utf-8",
    )
    return directory, config


def run_with_read_only(tmp_path: pathlib.Path, directory: pathlib.Path, argv: list[str]) -> Any:
    """``run_child(argv)`` with ``directory`` read-only (bind mount as root, chmod otherwise)."""
    if ROOT:
        if not can_mount(tmp_path):
            pytest.skip("root without unshare/mount: no real read-only filesystem to test with")
        return run_child(in_private_mounts(f'mount --bind -o ro "{directory}" "{directory}"', argv))
    paths = [directory, *directory.rglob("*")]
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        return run_child(argv)
    finally:
        for path in paths:
            path.chmod(0o700 if path.is_dir() else 0o600)


@pytest.mark.slow
def test_a_chain_serves_a_stored_answer_from_a_read_only_cache_in_an_outage(
    tmp_path: pathlib.Path, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fallbackchain import FallbackChain
    from fallbackchain.testing import Fault

    monkeypatch.setenv("FALLBACKCHAIN_TEST_KEY", "sk-test")
    directory, config = chain_config(tmp_path, server)
    with FallbackChain.from_config(config) as chain:  # a good day: the answer is stored
        live = chain.complete([{"role": "user", "content": "What is the capital of France?"}])
    assert live.source != "cache"
    server.default = Fault.status(503)  # the outage
    result = run_with_read_only(
        tmp_path, directory, [sys.executable, "-c", CHAIN_CHILD, str(config)]
    )
    assert (result["source"], result["text"], result["read_only"]) == ("cache", live.text, True)
    assert sum("opened read-only" in w for w in result["warnings"]) == 1


WARM_CHILD = r"""
import json, sys

from fallbackchain.cli import main

print(json.dumps({"code": main(["warm", sys.argv[1], "--config", sys.argv[2]])}))
"""


@pytest.mark.slow
def test_warm_refuses_a_read_only_cache_and_sends_nothing(
    tmp_path: pathlib.Path, server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FALLBACKCHAIN_TEST_KEY", "sk-test")
    directory, config = chain_config(tmp_path, server)
    populate(directory)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "Why is the sky blue?"}\n', encoding="utf-8")
    server.reset_counts()
    argv = [sys.executable, "-c", WARM_CHILD, str(prompts), str(config)]
    result = run_with_read_only(tmp_path, directory, argv)
    assert result["code"] == 1
    assert (
        f"fallbackchain: error: the cache at {directory} could only be opened read-only "
        "(see the warning above): answers would not be stored"
    ) in result["stderr"]
    assert server.counts["total"] == 0
