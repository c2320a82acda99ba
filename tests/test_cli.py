"""The ``fallbackchain`` command, run in-process (``main(argv)``) against the fault server.

Each test writes its own TOML config pointing at the session's fault server, with the cache in
``tmp_path``; the API key comes from ``FALLBACKCHAIN_TEST_KEY`` as in the test profile.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fallbackchain import FallbackChain, __version__
from fallbackchain.cli import main
from fallbackchain.testing import Fault

from .conftest import ROOT, user

KEY_ENV = "FALLBACKCHAIN_TEST_KEY"


def write_config(tmp_path: Path, base_url: str, *, extra: str = "", name: str = "cfg.toml") -> Path:
    path = tmp_path / name
    path.write_text(
        f"""
[openai]
base_url = "{base_url}"
api_key_env = "{KEY_ENV}"
model = "test-model"
timeout = 5.0
first_token_timeout = 2.0
idle_timeout = 2.0

[retry]
base_delay = 0.001
max_delay = 0.002
max_retry_after = 1.0

[breaker]
reset_timeout = 2.0

[cache]
directory = "{tmp_path / "cache"}"
ttl = 3600
{extra}
""",
        encoding="utf-8",
    )
    return path


def write_prompts(path: Path, *lines: str) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def config(tmp_path: Path, server: Any, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(KEY_ENV, "sk-test")
    return write_config(tmp_path, server.base_url)


@pytest.fixture
def prompts(tmp_path: Path) -> Path:
    return write_prompts(
        tmp_path / "prompts.jsonl",
        "# three prompts",
        '{"prompt": "What is the capital of France?"}',
        '{"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0}',
        '{"prompt": "Why is the sky blue?"}',
    )


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*argv: Any) -> Run:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def chain_for(config: Path) -> FallbackChain:
    return FallbackChain.from_config(config)


# --------------------------------------------------------------------------------------------
# warm
# --------------------------------------------------------------------------------------------


def test_warm_fills_the_cache_and_prints_a_summary(cli, config, prompts, server):
    result = cli("warm", prompts, "--config", config)
    assert result.code == 0, result.err
    assert result.out.startswith("warmed 3, skipped 0, failed 0, invalid 0, tokens ")
    assert server.counts["total"] == 3
    server.default = Fault.status(503)  # an outage: the app is answered from the warmed cache
    with chain_for(config) as chain:
        assert chain.complete(user("Why is the sky blue?")).source == "cache"
        assert chain.complete(user("Hi"), "gpt-4o", temperature=0).source == "cache"


def test_a_second_warm_skips_what_is_cached(cli, config, prompts, server):
    cli("warm", prompts, "--config", config)
    server.reset_counts()
    result = cli("warm", prompts, "--config", config)
    assert result.code == 0
    assert result.out.startswith("warmed 0, skipped 3, failed 0")
    assert server.counts["total"] == 0


def test_refresh_sends_cached_prompts_again(cli, config, prompts, server):
    cli("warm", prompts, "--config", config)
    server.reset_counts()
    result = cli("warm", prompts, "--config", config, "--refresh")
    assert result.out.startswith("warmed 3, skipped 0")
    assert server.counts["total"] == 3


def test_progress_is_one_plain_line_per_prompt_when_not_a_terminal(cli, config, prompts):
    result = cli("warm", prompts, "--config", config, "--concurrency", "1")
    assert [re.sub(r"\d+ tokens", "N tokens", line) for line in result.err_lines] == [
        f"[1/3] {prompts}:2: warmed (N tokens)",
        f"[2/3] {prompts}:3: warmed (N tokens)",
        f"[3/3] {prompts}:4: warmed (N tokens)",
    ]


class TerminalBuffer(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_redrawn_bar_on_a_terminal(cli, config, prompts, monkeypatch):
    terminal = TerminalBuffer()
    monkeypatch.setattr(sys, "stderr", terminal)
    result = cli("warm", prompts, "--config", config)
    assert result.code == 0
    shown = terminal.getvalue()
    assert "\n" not in shown  # redrawn in place with \r, then cleared
    assert "warming [########################] 3/3  warmed 3  skipped 0  failed 0" in shown
    assert shown.endswith("\r\x1b[K")


def test_a_failure_is_printed_above_the_bar_on_a_terminal(
    cli, config, prompts, server, monkeypatch
):
    terminal = TerminalBuffer()
    monkeypatch.setattr(sys, "stderr", terminal)
    server.push(Fault.status(400, message="no such model"))
    result = cli("warm", prompts, "--config", config, "--concurrency", "1")
    assert result.code == 1
    shown = terminal.getvalue()
    assert f"{prompts}:2: failed: rejected by the API: HTTP 400: no such model\n" in shown
    assert shown.count("\n") == 1  # the one failure; the rest is the bar, redrawn in place


def test_a_failed_prompt_is_reported_with_file_and_line_and_exit_status_1(
    cli, config, prompts, server
):
    server.push(Fault.status(400, message="no such model"))
    result = cli("warm", prompts, "--config", config, "--concurrency", "1")
    assert result.code == 1
    assert f"[1/3] {prompts}:2: failed: rejected by the API: HTTP 400: no such model" in (
        result.err_lines
    )
    assert result.out.startswith("warmed 2, skipped 0, failed 1, invalid 0")


def test_bad_lines_are_reported_and_the_valid_lines_still_run(cli, config, tmp_path, server):
    path = write_prompts(
        tmp_path / "p.jsonl",
        '{"prompt": "one"}',
        '{"prompt": "two"',
        '{"promt": "three"}',
        '{"prompt": "four"}',
    )
    result = cli("warm", path, "--config", config)
    assert result.code == 1
    assert result.err_lines[:2] == [
        f"{path}:2: not valid JSON (Expecting ',' delimiter at column 17)",
        f"{path}:3: unknown key 'promt' (did you mean 'prompt'?)",
    ]
    assert result.out.startswith("warmed 2, skipped 0, failed 0, invalid 2")
    assert server.counts["total"] == 2


def test_strict_sends_nothing_when_a_line_is_bad(cli, config, tmp_path, server):
    path = write_prompts(tmp_path / "p.jsonl", '{"prompt": "one"}', "{oops")
    result = cli("warm", path, "--config", config, "--strict")
    assert result.code == 2
    assert result.err_lines == [
        f"{path}:2: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"fallbackchain: error: 1 bad line(s) in {path}; nothing was sent (--strict)",
    ]
    assert result.out == ""
    assert server.counts["total"] == 0


def test_dry_run_shows_what_would_be_sent_and_sends_nothing(cli, config, prompts, server):
    cli("warm", prompts, "--config", config, "--concurrency", "1")
    server.reset_counts()
    extra = write_prompts(
        prompts.parent / "more.jsonl",
        '{"prompt": "What is the capital of France?"}',
        '{"prompt": "New one", "seed": 1}',
    )
    result = cli("warm", extra, "--config", config, "--dry-run")
    assert result.code == 0
    assert result.out.splitlines() == [
        f"{extra}:1: would skip (already cached)",
        f"{extra}:2: would send "
        '{"model": "test-model", "messages": [{"role": "user", "content": "New one"}], "seed": 1}',
        "dry run: 1 to send, 1 to skip, 0 failed, 0 invalid; nothing was sent",
    ]
    assert server.counts["total"] == 0


def test_dry_run_needs_no_api_key_but_warns(cli, config, prompts, monkeypatch, server):
    monkeypatch.delenv(KEY_ENV)
    result = cli("warm", prompts, "--config", config, "--dry-run")
    assert result.code == 0
    assert result.err_lines == [
        f"fallbackchain: warning: environment variable {KEY_ENV} is not set; a real run needs it"
    ]
    assert server.counts["total"] == 0


def test_dry_run_needs_no_key_for_fallbacks_either(cli, tmp_path, server, prompts, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    path = write_config(
        tmp_path,
        server.base_url,
        extra='\n[[fallbacks]]\nname = "backup"\nmodel = "other"\napi_key_env = "UNSET_KEY"\n',
    )
    result = cli("warm", prompts, "--config", path, "--dry-run")
    assert result.code == 0, result.err
    assert result.out.splitlines()[-1].startswith("dry run: 3 to send")


def test_warm_refuses_a_cache_that_cannot_be_opened(cli, config, prompts, tmp_path, server):
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    (directory / "cache.db").write_bytes(b"this is not a database" * 100)
    result = cli("warm", prompts, "--config", config)
    assert result.code == 1  # the state cannot be used: not a usage error
    assert result.err_lines[-1].endswith("cannot be opened (see the warning above)")
    assert server.counts["total"] == 0


def test_an_outage_with_max_wait_zero_gives_up_without_hammering(cli, config, tmp_path, server):
    server.default = Fault.status(503)
    path = write_prompts(tmp_path / "p.jsonl", *[f'{{"prompt": "q{i}"}}' for i in range(20)])
    result = cli("warm", path, "--config", config, "--concurrency", "2", "--max-wait", "0")
    assert result.code == 1
    assert result.out.startswith("warmed 0, skipped 0, failed 20")
    assert server.counts["total"] <= 2 * (5 + 2)
    assert any(
        "not sent: every live tier's breaker stayed open for 0s" in line
        for line in result.err_lines
    )


def test_expired_entries_are_pruned_before_warming(cli, config, prompts, tmp_path, server):
    from fallbackchain._config_file import load_config
    from fallbackchain.cache import ResponseCache

    with ResponseCache(load_config(config).cache, clock=lambda: time.time() - 7200) as cache:
        key = "fc1-" + "0" * 64
        with chain_for(config) as chain:
            completion = chain.complete(user("x")).completion
        cache.put(key, completion)
    result = cli("warm", prompts, "--config", config)
    assert "fallbackchain: pruned 1 expired cache entries" in result.err_lines


# --------------------------------------------------------------------------------------------
# warm: bad input is one clear line, exit status 2, no traceback
# --------------------------------------------------------------------------------------------


def test_a_missing_prompts_file(cli, config, tmp_path):
    missing = tmp_path / "missing.jsonl"
    result = cli("warm", missing, "--config", config)
    assert (result.code, result.out) == (2, "")
    assert result.err_lines == [f"fallbackchain: error: {missing}: file not found"]


def test_a_missing_config_file(cli, prompts, tmp_path):
    missing = tmp_path / "nope.toml"
    result = cli("warm", prompts, "--config", missing)
    assert result.code == 2
    assert result.err_lines == [f"fallbackchain: error: {missing}: config file not found"]


def test_an_unreadable_config_file(cli, prompts, tmp_path, monkeypatch):
    path = tmp_path / "secret.toml"
    path.write_text("[openai]\n")
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == path:
            raise PermissionError(13, "Permission denied")
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    result = cli("warm", prompts, "--config", path)
    assert result.code == 2
    assert result.err_lines == [
        f"fallbackchain: error: {path}: cannot read config file: Permission denied"
    ]


def test_a_config_that_is_a_directory(cli, prompts, tmp_path):
    result = cli("warm", prompts, "--config", tmp_path)
    assert result.code == 2
    assert result.err_lines[0].startswith(f"fallbackchain: error: {tmp_path}: cannot read config")


def test_an_invalid_config_names_the_file_and_key(cli, prompts, tmp_path, server):
    path = write_config(tmp_path, server.base_url, extra="tll = 5")
    result = cli("warm", prompts, "--config", path)
    assert result.code == 2
    assert len(result.err_lines) == 1
    assert result.err_lines[0].startswith(
        f"fallbackchain: error: {path}: key 'cache.tll': unknown key"
    )


def test_invalid_toml_names_the_file(cli, prompts, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[openai\n")
    result = cli("warm", prompts, "--config", path)
    assert result.code == 2
    assert result.err_lines[0].startswith(f"fallbackchain: error: {path}: invalid TOML")


def test_a_missing_api_key(cli, config, prompts, monkeypatch, server):
    monkeypatch.delenv(KEY_ENV)
    result = cli("warm", prompts, "--config", config)
    assert result.code == 2
    assert result.err_lines == [
        f"fallbackchain: error: {config}: key 'openai.api_key_env': environment variable "
        f"{KEY_ENV} is not set (it must hold the API key)"
    ]
    assert server.counts["total"] == 0


def test_a_disabled_cache_is_refused(cli, tmp_path, server, prompts, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    path = write_config(tmp_path, server.base_url, extra="enabled = false")
    result = cli("warm", prompts, "--config", path)
    assert result.code == 2
    assert "key 'cache.enabled': the cache is disabled" in result.err


def test_a_bad_concurrency_is_a_usage_error(cli, config, prompts):
    result = cli("warm", prompts, "--config", config, "--concurrency", "0")
    assert result.code == 2
    assert "argument --concurrency: must be >= 1, got 0" in result.err


@pytest.mark.parametrize(
    "argv",
    [
        ["warm", "missing.jsonl", "--config", "missing.toml"],
        ["cache", "stats", "--config", "missing.toml"],
        ["check-config", "missing.toml"],
    ],
)
def test_user_errors_never_print_a_traceback(cli, argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = cli(*argv)
    assert result.code == 2
    assert "Traceback" not in result.err
    assert len(result.err_lines) == 1


# --------------------------------------------------------------------------------------------
# cache stats | clear | prune | export | import
# --------------------------------------------------------------------------------------------


def test_cache_stats_as_json(cli, config, prompts, tmp_path):
    before = time.time()
    cli("warm", prompts, "--config", config)
    result = cli("cache", "stats", "--config", config, "--json")
    assert result.code == 0
    stats = json.loads(result.out)
    assert stats["directory"] == str(tmp_path / "cache")
    assert stats["entries"] == 3
    assert stats["bytes"] > 0
    assert stats["expired"] == 0
    assert before <= stats["oldest"] <= stats["newest"] <= time.time()
    assert stats["ttl"] == 3600
    assert (stats["hits"], stats["misses"]) == (None, None)


def test_cache_stats_as_text(cli, config, prompts, tmp_path):
    cli("warm", prompts, "--config", config)
    lines = cli("cache", "stats", "--config", config).out.splitlines()
    assert lines[0] == f"directory: {tmp_path / 'cache'}"
    assert lines[1] == "entries:   3"
    assert lines[3].startswith("oldest:    20") and lines[3].endswith("s ago)")
    assert lines[5] == "ttl:       3600s (1h 00m)"
    assert lines[6].startswith("hits/misses: not known here")


def _empty_cache(config: Path) -> Path:
    """Create the config's cache, empty; its directory."""
    from fallbackchain import ResponseCache, load_config

    settings = load_config(config).cache
    ResponseCache(settings).close()
    return Path(settings.directory)


def test_cache_stats_of_an_empty_cache(cli, config):
    _empty_cache(config)
    lines = cli("cache", "stats", "--config", config).out.splitlines()
    assert "entries:   0" in lines
    assert "oldest:    -" in lines


@pytest.mark.parametrize("command", [["stats"], ["stats", "--json"], ["clear"], ["prune"], ["export", "-"]])
def test_commands_that_read_never_create_a_cache(cli, config, command):
    """Run anywhere, a read (or a removal) must not leave a cache directory behind."""
    from fallbackchain import load_config

    directory = Path(load_config(config).cache.directory)
    assert not directory.exists()
    result = cli("cache", *command, "--config", config)
    assert result.code == 0, result.err
    if "--json" in command:
        assert json.loads(result.out)["entries"] == 0
    else:
        assert result.out.startswith(f"no cache at {directory} yet")
    assert not directory.exists()


def test_cache_clear_asks_first_and_keeps_everything_on_no(cli, config, prompts, monkeypatch):
    cli("warm", prompts, "--config", config)
    monkeypatch.setattr(sys, "stdin", io.StringIO("n\n"))
    result = cli("cache", "clear", "--config", config)
    assert result.code == 1
    assert result.err.startswith("remove all 3 entries from ")
    assert "not cleared" in result.err
    assert json.loads(cli("cache", "stats", "--config", config, "--json").out)["entries"] == 3


def test_cache_clear_without_an_answer_clears_nothing(cli, config, prompts, monkeypatch):
    cli("warm", prompts, "--config", config)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    assert cli("cache", "clear", "--config", config).code == 1
    assert json.loads(cli("cache", "stats", "--config", config, "--json").out)["entries"] == 3


def test_cache_clear_on_yes(cli, config, prompts, monkeypatch):
    cli("warm", prompts, "--config", config)
    monkeypatch.setattr(sys, "stdin", io.StringIO("y\n"))
    result = cli("cache", "clear", "--config", config)
    assert result.code == 0
    assert result.out.startswith("removed 3 entries from ")
    assert json.loads(cli("cache", "stats", "--config", config, "--json").out)["entries"] == 0


def test_cache_clear_with_yes_does_not_ask(cli, config, prompts, monkeypatch):
    cli("warm", prompts, "--config", config)
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    result = cli("cache", "clear", "--config", config, "--yes")
    assert result.code == 0
    assert result.err == ""


def test_cache_prune_removes_nothing_fresh(cli, config, prompts):
    cli("warm", prompts, "--config", config)
    result = cli("cache", "prune", "--config", config)
    assert result.code == 0
    assert result.out.startswith("removed 0 expired entries")


def test_a_warmed_cache_survives_export_clear_import(cli, config, prompts, tmp_path, server):
    cli("warm", prompts, "--config", config)
    shipped = tmp_path / "warm-cache.jsonl"
    result = cli("cache", "export", shipped, "--config", config)
    assert (result.code, result.out) == (0, f"exported 3 entries to {shipped}\n")
    assert len(shipped.read_text().splitlines()) == 3
    cli("cache", "clear", "--config", config, "--yes")
    result = cli("cache", "import", shipped, "--config", config)
    assert result.code == 0
    assert result.out.startswith("imported 3, kept 0")
    server.default = Fault.status(503)
    with chain_for(config) as chain:
        assert chain.complete(user("What is the capital of France?")).source == "cache"


def test_importing_twice_keeps_what_is_there(cli, config, prompts, tmp_path):
    cli("warm", prompts, "--config", config)
    shipped = tmp_path / "warm-cache.jsonl"
    cli("cache", "export", shipped, "--config", config)
    result = cli("cache", "import", shipped, "--config", config)
    assert result.out.startswith("imported 0, kept 3 (the cache had them as new or newer)")


def test_export_to_stdout_and_import_from_stdin(cli, config, prompts, monkeypatch):
    cli("warm", prompts, "--config", config)
    exported = cli("cache", "export", "-", "--config", config)
    assert len(exported.out.splitlines()) == 3
    assert exported.err == f"exported 3 entries from {Path(config).parent / 'cache'}\n"
    cli("cache", "clear", "--config", config, "--yes")
    monkeypatch.setattr(sys, "stdin", io.StringIO(exported.out))
    assert cli("cache", "import", "-", "--config", config).out.startswith("imported 3")


def test_import_reports_bad_lines_by_number_and_exits_1(cli, config, tmp_path):
    path = write_prompts(tmp_path / "in.jsonl", "{bad", '{"key": "fc1-x"}')
    result = cli("cache", "import", path, "--config", config)
    assert result.code == 1
    assert result.err_lines == [
        f"{path}:1: not valid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"{path}:2: missing key(s) 'completion', 'stored_at'",
    ]
    assert result.out.startswith("imported 0, kept 0")
    assert result.out.rstrip().endswith("invalid 2")


def test_import_of_a_missing_file(cli, config, tmp_path):
    result = cli("cache", "import", tmp_path / "nope.jsonl", "--config", config)
    assert result.code == 2
    assert result.err_lines == [f"fallbackchain: error: {tmp_path / 'nope.jsonl'}: file not found"]


def test_a_cache_that_cannot_be_opened_is_one_clear_error(cli, config, tmp_path):
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    (directory / "cache.db").write_bytes(b"this is not a database" * 100)
    result = cli("cache", "stats", "--config", config)
    assert result.code == 1
    assert result.err_lines[-1] == (
        f"fallbackchain: error: the cache at {directory} cannot be opened (see the warning above)"
    )
    assert "CacheCorruptError" in result.err_lines[0]
    assert "Traceback" not in result.err


def test_export_to_an_unwritable_place(cli, config, tmp_path):
    _empty_cache(config)
    target = tmp_path / "no-such-dir" / "out.jsonl"
    result = cli("cache", "export", target, "--config", config)
    assert result.code == 2
    assert result.err_lines == [
        f"fallbackchain: error: {target}: cannot write file: No such file or directory"
    ]


# --------------------------------------------------------------------------------------------
# check-config, --version, python -m
# --------------------------------------------------------------------------------------------


def test_check_config_prints_the_effective_config_as_toml(cli, config):
    result = cli("check-config", config)
    assert result.code == 0
    assert result.out.startswith(f"# OK: {config}")
    effective = tomllib.loads(result.out)
    assert effective["openai"]["api_key_env"] == KEY_ENV
    assert effective["cache"]["ttl"] == 3600
    assert effective["retry"]["max_attempts"] == 3  # a default, shown too
    assert f'api_key_env = "{KEY_ENV}"  # set' in result.out


def test_check_config_shows_fallbacks_too(cli, tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    path = write_config(
        tmp_path,
        server.base_url,
        extra='\n[[fallbacks]]\nname = "local"\nmodel = "llama3"\napi_key_env = "LOCAL_KEY"\n',
    )
    result = cli("check-config", path)
    assert result.code == 0, result.err
    (fallback,) = tomllib.loads(result.out)["fallbacks"]
    assert (fallback["name"], fallback["model"]) == ("local", "llama3")
    assert 'api_key_env = "LOCAL_KEY"  # NOT SET in this environment' in result.out


def test_check_config_never_prints_secrets(cli, tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-very-secret-value")
    path = write_config(
        tmp_path, server.base_url, extra='redis_url = "redis://user:hunter2@cache.internal:6379/0"'
    )
    result = cli("check-config", path)
    assert result.code == 0
    assert "sk-very-secret-value" not in result.out + result.err
    assert "hunter2" not in result.out + result.err
    assert 'redis_url = "redis://user:***@cache.internal:6379/0"' in result.out


def test_check_config_warns_when_the_api_key_is_not_set(cli, config, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    result = cli("check-config", config)
    assert result.code == 0
    assert "# NOT SET in this environment" in result.out
    assert result.err_lines == [
        f"fallbackchain: warning: environment variable {KEY_ENV} is not set; "
        "requests (and `warm`) need it"
    ]


def test_check_config_reports_the_config_error(cli, tmp_path, server):
    path = write_config(tmp_path, server.base_url, extra="ttl = -1")
    result = cli("check-config", path)
    assert result.code == 2
    assert result.out == ""
    assert result.err_lines[0].startswith(f"fallbackchain: error: {path}: ")


def test_version(cli):
    result = cli("--version")
    assert (result.code, result.out) == (0, f"fallbackchain {__version__}\n")


def test_no_command_is_a_usage_error(cli):
    result = cli()
    assert result.code == 2
    assert "required: COMMAND" in result.err


@pytest.mark.slow  # a subprocess
def test_python_dash_m_runs_the_command():
    done = subprocess.run(
        [sys.executable, "-m", "fallbackchain", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert (done.returncode, done.stdout) == (0, f"fallbackchain {__version__}\n")


@pytest.mark.slow  # a subprocess, interrupted
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupted_warm_exits_130_and_the_next_run_resumes(cli, config, tmp_path, server, sig):
    server.default = Fault.slow_first_byte(0.2)
    path = write_prompts(tmp_path / "p.jsonl", *[f'{{"prompt": "q{i}"}}' for i in range(12)])
    env = {**os.environ, KEY_ENV: "sk-test"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fallbackchain",
            "warm",
            str(path),
            "--config",
            str(config),
            "--concurrency",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    assert process.stderr is not None
    progress = [process.stderr.readline() for _ in range(2)]
    assert all(": warmed (" in line for line in progress), progress
    process.send_signal(sig)
    out, err = process.communicate(timeout=30)
    assert process.returncode == 130, err
    assert out.startswith("interrupted: warmed ")
    assert "Run the same command again to resume" in err
    assert "Traceback" not in err
    server.default = Fault.ok()
    server.reset_counts()
    result = cli("warm", path, "--config", config)
    counted = int(out.split("warmed ")[1].split(",")[0])
    warmed, skipped = (
        int(result.out.split(word)[1].split(",")[0]) for word in ("warmed ", "skipped ")
    )
    assert counted >= 2
    # nothing written was lost (the request in flight at the signal finished and was kept)
    assert counted <= skipped <= counted + 1
    assert (warmed + skipped, server.counts["total"]) == (12, warmed)
