"""``check-config`` and ``status`` through the real entry point: secrets masked, routes resolved.

Each test runs ``main(argv)`` (the ``fallbackchain`` console script) in-process and reads what
it printed; one runs ``python -m fallbackchain`` as a user would.
"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fallbackchain.cli import main

from .conftest import ROOT
from .redis_server import free_port

KEY_ENV = "FC_CONFIG_CLI_KEY"
SECRETS = ("AZ9secretKey", "hunter2", "redisPW2", "localPW", "T0kenValue")
# Credentials in every place a URL can carry them, and in every URL the config holds.
LEAKY = f"""
[openai]
base_url = "https://res.openai.azure.com/openai/deployments/gpt?api-version=2024-02-01&api-key=AZ9secretKey"
api_key_env = "{KEY_ENV}"
model = "gpt-4o-mini"

[breaker]
redis_url = "redis://default:hunter2@cache.internal:6379/0?password=redisPW2"

[cache]
directory = "CACHE_DIR"
redis_url = "rediss://cache.internal:6380/0?password=redisPW2"

[[fallbacks]]
name = "local"
model = "llama3"
base_url = "http://user:localPW@127.0.0.1:11434/v1?token=T0kenValue"
first_token_timeout = 40.0
stream_usage = false
"""


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    @property
    def both(self) -> str:
        return self.out + self.err


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    def run(*argv: Any) -> Run:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(text.replace("CACHE_DIR", str(tmp_path / "cache")), encoding="utf-8")
    return path


def assert_no_secrets(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text, secret


def test_check_config_masks_every_url_credential(cli, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-the-real-key-value")
    result = cli("check-config", write(tmp_path, LEAKY))
    assert result.code == 0, result.err
    assert_no_secrets(result.both)
    assert "sk-the-real-key-value" not in result.both
    effective = tomllib.loads(result.out)  # still valid TOML
    assert effective["openai"]["base_url"].endswith("?api-version=2024-02-01&api-key=***")
    assert effective["breaker"]["redis_url"] == "redis://default:***@cache.internal:6379/0?password=***"
    assert effective["cache"]["redis_url"] == "rediss://cache.internal:6380/0?password=***"
    assert effective["fallbacks"][0]["base_url"] == "http://user:***@127.0.0.1:11434/v1?token=***"


def test_status_masks_every_url_credential(cli, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-the-real-key-value")
    result = cli("status", "--config", write(tmp_path, LEAKY))
    assert result.code == 0, result.err
    assert_no_secrets(result.both)
    assert "api-key=***" in result.out
    assert "local: kept in each process" in result.out


def test_the_runtime_redis_warning_masks_the_url(cli, tmp_path, monkeypatch):
    pytest.importorskip("redis")
    port = free_port()  # nothing listens: the breaker store falls back and warns once
    text = LEAKY.replace("cache.internal:6379", f"127.0.0.1:{port}").replace(
        "[breaker]\n", '[breaker]\nstorage = "redis"\n'
    )
    result = cli("status", "--config", write(tmp_path, text))
    assert result.code == 1, result.err  # status says shared state could not be read
    assert f"Redis at redis://default:***@127.0.0.1:{port}/0?password=*** is unavailable" in result.err
    assert_no_secrets(result.both)


def test_check_config_prints_every_routes_resolved_values(cli, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "x")
    result = cli("check-config", write(tmp_path, LEAKY + "\n[retry]\nhedge_after = 2.5\n"))
    assert result.code == 0, result.err
    routes = result.out[result.out.index("# Routes in the order they are tried") :]
    primary = routes[routes.index("# route 'primary' (tiers: stream, completion)") : routes.index("# route 'local'")]
    local = routes[routes.index("# route 'local' (tiers: local)") :]
    assert "#   first_token_timeout = 10.0" in primary
    assert "#   first_token_timeout = 40.0" in local  # its own
    assert "#   timeout = 30.0" in local  # inherited from [openai]
    assert "#   stream_usage = false" in local and "#   stream_usage = true" in primary
    assert "#   hedge_after = 2.5" in local  # inherited from [retry]
    assert "#   max_attempts = 3" in local and "#   fail_max = 5" in local
    assert f'#   api_key_env = "{KEY_ENV}"  # set' in local
    assert "#   base_url = \"http://user:***@127.0.0.1:11434/v1?token=***\"" in local
    assert_no_secrets(result.both)
    tomllib.loads(result.out)


def test_an_api_key_pasted_into_api_key_env_is_refused_and_never_printed(cli, tmp_path):
    key = "sk-proj-Zq9xT3BlbkFJabc123def456"
    result = cli("check-config", write(tmp_path, f'[openai]\napi_key_env = "{key}"\n'))
    assert result.code == 2
    assert result.out == ""
    assert key not in result.both
    assert result.err.startswith("fallbackchain: error: ")
    assert "key 'openai.api_key_env': must be the NAME of the environment variable" in result.err
    assert "(got '***'; line 2)" in result.err


def test_a_bad_base_url_error_masks_its_credentials(cli, tmp_path):
    result = cli(
        "check-config",
        write(tmp_path, '[openai]\nbase_url = "ftp://admin:hunter2@h/v1?api-key=AZ9secretKey"\n'),
    )
    assert result.code == 2
    assert_no_secrets(result.both)
    assert "must start with http:// or https://" in result.err
    assert "ftp://admin:***@h/v1?api-key=***" in result.err


def test_every_problem_is_printed_at_once_without_a_traceback(cli, tmp_path):
    path = write(tmp_path, "[retry]\nmax_atempts = 3\n[openai]\ntimeout = 0\n[[fallbacks]]\nname = 'x'\n")
    result = cli("check-config", path)
    assert result.code == 2
    lines = result.err.splitlines()
    assert lines[0] == f"fallbackchain: error: {path}: 3 problems in the config:"
    assert lines[1].startswith(f"  {path}: key 'retry.max_atempts': unknown key; did you mean 'max_attempts'?")
    assert lines[2].startswith(f"  {path}: key 'openai.timeout': must be > 0 and <= 3600 (got 0; line 4)")
    assert lines[3] == f"  {path}: key 'fallbacks[0].model': is required (line 5)"
    assert "Traceback" not in result.err


@pytest.mark.slow
def test_a_byte_order_mark_through_the_command_line(tmp_path):
    path = tmp_path / "bom.toml"
    path.write_bytes(b"\xef\xbb\xbf[retry]\nmax_attempts = 2\n")
    result = subprocess.run(
        [sys.executable, "-m", "fallbackchain", "check-config", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"fallbackchain: error: {path}: the file starts with a UTF-8 byte-order mark")
    assert "Traceback" not in result.stderr
