"""The command line as a new user meets it: ``init``, where each command finds its config,
``--help``, ``status``'s exit status, and the templates shipped inside the package.

Through the real entry point (``main(argv)`` in-process, or ``python -m fallbackchain`` in a
subprocess), with real files in ``tmp_path``, a real fault server and a real ``redis-server``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest

from fallbackchain import FallbackChain, load_config
from fallbackchain.cli import main

from .conftest import ROOT, user
from .redis_server import RedisServer, free_port, require_redis_package, require_redis_server

CONFIG_ENV = "FALLBACKCHAIN_CONFIG"
KEY_ENV = "FC_SURFACE_TEST_KEY"
TEMPLATES = ("fallbackchain", "multi-provider", "test")


class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err
        self.err_lines = err.splitlines()


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """``main(argv)`` in ``tmp_path``, with no ``$FALLBACKCHAIN_CONFIG`` unless a test sets it."""
    monkeypatch.delenv(CONFIG_ENV, raising=False)
    monkeypatch.chdir(tmp_path)

    def run(*argv: Any) -> Run:
        code = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return Run(code, captured.out, captured.err)

    return run


# --------------------------------------------------------------------------------------------
# the templates ship inside the package
# --------------------------------------------------------------------------------------------


def test_the_repository_configs_are_the_shipped_templates():
    shipped = ROOT / "fallbackchain" / "templates"
    assert sorted(p.name for p in shipped.glob("*.toml")) == [f"{t}.toml" for t in TEMPLATES]
    for name in TEMPLATES:
        repo = (ROOT / "config" / f"{name}.toml").read_bytes()
        assert (shipped / f"{name}.toml").read_bytes() == repo, (
            f"config/{name}.toml and fallbackchain/templates/{name}.toml differ: "
            "edit both (the package ships the second)"
        )


@pytest.mark.parametrize("name", TEMPLATES)
def test_every_shipped_template_is_a_valid_config(name):
    load_config(ROOT / "fallbackchain" / "templates" / f"{name}.toml")


@pytest.mark.slow
def test_an_installed_package_has_the_templates_and_init_uses_them(tmp_path):
    """Build the package as a wheel would lay it out, then run ``init`` from that copy, outside
    the repository: the templates come from the package, not from a checkout's ``config/``."""
    build = tmp_path / "build"
    done = subprocess.run(
        [sys.executable, "-c", "import setuptools; setuptools.setup()", "-q", "build_py",
         "-d", str(build)],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    for name in TEMPLATES:
        assert (build / "fallbackchain" / "templates" / f"{name}.toml").is_file(), name
    elsewhere = tmp_path / "app"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    env["PYTHONPATH"] = str(build)
    done = subprocess.run(
        [sys.executable, "-c",
         "import sys, fallbackchain, fallbackchain.cli as c; print(fallbackchain.__file__); "
         "sys.exit(c.main(['init', '--template', 'multi-provider']))"],
        cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith(str(build))  # the built copy ran
    written = load_config(elsewhere / "fallbackchain.toml")
    assert [fb.name for fb in written.fallbacks] == ["local"]


# --------------------------------------------------------------------------------------------
# init
# --------------------------------------------------------------------------------------------


def test_init_writes_a_commented_config_from_the_flags_that_passes_check_config(cli, tmp_path):
    path = tmp_path / "app.toml"
    result = cli(
        "init", path, "--model", "gpt-4.1-mini", "--base-url", "https://llm.example.test/v1",
        "--api-key-env", KEY_ENV,
        "--fallback", "local=llama3.1:8b@http://127.0.0.1:11434/v1",
        "--fallback", "vertex=claude-3@20240229",
    )
    assert result.code == 0, result.err
    assert result.out.startswith(f"wrote {path}\n")
    text = path.read_text(encoding="utf-8")
    assert sum(line.lstrip().startswith("#") for line in text.splitlines()) >= 5
    assert 'model = "gpt-4.1-mini"                   # used when a call passes model=None' in text
    config = load_config(path)
    assert (config.openai.model, config.openai.base_url, config.openai.api_key_env) == (
        "gpt-4.1-mini", "https://llm.example.test/v1", KEY_ENV,
    )
    assert [(f.name, f.model, f.base_url) for f in config.fallbacks] == [
        ("local", "llama3.1:8b", "http://127.0.0.1:11434/v1"),
        ("vertex", "claude-3@20240229", ""),  # "" = the primary's endpoint
    ]
    checked = cli("check-config", "--config", path)
    assert checked.code == 0, checked.err
    assert tomllib.loads(checked.out)["openai"]["model"] == "gpt-4.1-mini"


def test_init_keeps_a_space_before_a_comment_after_a_long_value(cli, tmp_path):
    path = tmp_path / "app.toml"
    url = "https://a-rather-long-hostname.llm.example.test/v1/openai-compatible"
    assert cli("init", path, "--fallback", f"far=m1@{url}").code == 0
    [line] = [x for x in path.read_text(encoding="utf-8").splitlines() if url in x]
    assert line.startswith(f'base_url = "{url}" # ')


def test_init_without_flags_is_the_production_template_with_a_header(cli, tmp_path):
    assert cli("init").code == 0
    text = (tmp_path / "fallbackchain.toml").read_text(encoding="utf-8")
    template = (ROOT / "config" / "fallbackchain.toml").read_text(encoding="utf-8")
    first, rest = text.split("\n", 1)
    assert first.startswith("# Written by `fallbackchain init`")
    assert rest == template
    assert cli("check-config").code == 0


def test_a_config_written_by_init_answers_through_a_chain(cli, tmp_path, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    result = cli("init", "--template", "test", "--base-url", server.base_url,
                 "--api-key-env", KEY_ENV)
    assert result.code == 0, result.err
    with FallbackChain.from_config(tmp_path / "fallbackchain.toml") as chain:
        response = chain.complete(user("Hello"))
    assert response.source == "stream"
    assert response.text


def test_init_never_overwrites_an_existing_file_without_force(cli, tmp_path):
    path = tmp_path / "fallbackchain.toml"
    path.write_text("# mine\n", encoding="utf-8")
    result = cli("init", "--model", "other")
    assert result.code == 1
    assert result.err_lines == [
        f"fallbackchain: {Path('fallbackchain.toml')} already exists; not overwritten "
        "(pass --force to replace it)"
    ]
    assert path.read_text(encoding="utf-8") == "# mine\n"
    path.chmod(0o640)
    result = cli("init", "--model", "other", "--force")
    assert result.code == 0, result.err
    assert load_config(path).openai.model == "other"
    assert path.stat().st_mode & 0o777 == 0o640  # replaced in place, mode kept
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no leftovers


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--base-url", "ftp://nope"],
         "key 'openai.base_url': must start with http:// or https:// (got 'ftp://nope'; line "),
        (["--fallback", "stream=gpt-4o"],
         "key 'fallbacks[0].name': must be unique and not one of 'primary', 'stream', "
         "'completion', 'cache' (got 'stream'; line "),
        (["--fallback", "a=m1", "--fallback", "a=m2"], "key 'fallbacks[1].name'"),
        (["--model", ""], "key 'openai.model': must not be empty"),
    ],
)
def test_init_with_a_bad_value_writes_nothing_and_names_the_key(cli, tmp_path, flags, message):
    result = cli("init", "out.toml", *flags)
    assert result.code == 2
    assert len(result.err_lines) == 1, result.err
    assert result.err_lines[0].startswith("fallbackchain: error: out.toml (not written): ")
    assert message in result.err_lines[0]
    assert "Traceback" not in result.err
    assert list(tmp_path.iterdir()) == []


def test_init_with_a_malformed_fallback_is_a_usage_error(cli, tmp_path):
    result = cli("init", "--fallback", "just-a-model")
    assert result.code == 2
    assert "argument --fallback: expected NAME=MODEL or NAME=MODEL@URL" in result.err
    assert list(tmp_path.iterdir()) == []


def test_init_into_a_missing_directory_is_one_clear_error(cli, tmp_path):
    result = cli("init", tmp_path / "no" / "such" / "dir.toml")
    assert result.code == 2
    assert result.err_lines == [
        f"fallbackchain: error: {tmp_path / 'no' / 'such' / 'dir.toml'}: cannot write file: "
        "No such file or directory"
    ]


def test_init_writes_where_the_other_commands_read(cli, tmp_path, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, str(tmp_path / "from-env.toml"))
    assert cli("init").code == 0
    assert (tmp_path / "from-env.toml").is_file()
    assert cli("check-config").out.startswith(f"# OK: {tmp_path / 'from-env.toml'}")
    assert cli("init", "--config", "flag.toml").code == 0
    assert (tmp_path / "flag.toml").is_file()
    assert not (tmp_path / "fallbackchain.toml").exists()


# --------------------------------------------------------------------------------------------
# every command finds its config the same way
# --------------------------------------------------------------------------------------------

COMMANDS = [
    ["status"],
    ["check-config"],
    ["warm", "prompts.jsonl", "--dry-run"],
    ["cache", "stats"],
    ["cache", "clear", "--yes"],
    ["cache", "prune"],
    ["cache", "export", "-"],
    ["cache", "import", "-"],
]


def bad_config(path: Path) -> Path:
    """A config every command rejects with an error naming this file."""
    path.write_text("[retry]\nmax_attempts = 0\n", encoding="utf-8")
    return path


def assert_read(result: Run, path: Path | str) -> None:
    assert result.code == 2, result.err
    assert result.err_lines == [
        f"fallbackchain: error: {path}: key 'retry.max_attempts': must be >= 1 and <= 100 "
        "(got 0; line 2)"
    ]


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_every_command_reads_config_then_the_variable_then_the_default(
    cli, tmp_path, monkeypatch, argv
):
    (tmp_path / "prompts.jsonl").write_text('{"prompt": "hi"}\n', encoding="utf-8")
    flag = bad_config(tmp_path / "flag.toml")
    env = bad_config(tmp_path / "env.toml")
    bad_config(tmp_path / "fallbackchain.toml")
    assert_read(cli(*argv), "fallbackchain.toml")
    monkeypatch.setenv(CONFIG_ENV, str(env))
    assert_read(cli(*argv), env)
    assert_read(cli(*argv, "--config", flag), flag)
    assert_read(cli("--config", flag, *argv), flag)  # before the command, too


@pytest.mark.parametrize("argv", COMMANDS, ids=" ".join)
def test_without_any_config_every_command_says_how_to_get_one(cli, argv):
    result = cli(*argv)
    assert result.code == 2
    assert result.err_lines == [
        "fallbackchain: error: no config: ./fallbackchain.toml does not exist; pass --config "
        "CONFIG, set $FALLBACKCHAIN_CONFIG, or write one with `fallbackchain init`"
    ]


def test_a_variable_naming_a_missing_file_says_so(cli, monkeypatch):
    monkeypatch.setenv(CONFIG_ENV, "nowhere.toml")
    result = cli("status")
    assert (result.code, result.err_lines) == (
        2, ["fallbackchain: error: nowhere.toml: config file not found (from $FALLBACKCHAIN_CONFIG)"]
    )


def test_check_config_keeps_its_positional_path_as_an_alias(cli, tmp_path, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "sk-test")
    path = tmp_path / "pos.toml"
    path.write_text(f'[openai]\napi_key_env = "{KEY_ENV}"\n', encoding="utf-8")
    monkeypatch.setenv(CONFIG_ENV, str(bad_config(tmp_path / "env.toml")))
    result = cli("check-config", path)  # the positional beats the variable, as --config does
    assert result.code == 0, result.err
    assert result.out.startswith(f"# OK: {path}")
    assert cli("check-config", path, "--config", path).code == 0
    other = cli("check-config", path, "--config", tmp_path / "env.toml")
    assert other.code == 2
    assert other.err_lines == [
        f"fallbackchain: error: two config files given: {path} and --config "
        f"{tmp_path / 'env.toml'}; pass one"
    ]


def test_two_different_configs_before_and_after_the_command_are_refused(cli, tmp_path):
    first, second = bad_config(tmp_path / "a.toml"), bad_config(tmp_path / "b.toml")
    result = cli("--config", first, "status", "--config", second)
    assert (result.code, result.err_lines) == (
        2, [f"fallbackchain: error: two config files given: --config {first} and --config {second}"]
    )


# --------------------------------------------------------------------------------------------
# --help: one line per command
# --------------------------------------------------------------------------------------------


def commands_in(help_text: str) -> dict[str, str]:
    """``{command: description}`` from argparse's list under ``positional arguments``."""
    found: dict[str, str] = {}
    block = help_text.split("positional arguments:", 1)[1].split("\n\n", 1)[0]
    current = None
    for line in block.splitlines()[2:]:  # the metavar line (COMMAND / ACTION) first
        match = re.match(r"^    (\S+)(?:\s{2,}(.*))?$", line)
        if match:
            current = match[1]
            found[current] = match[2] or ""
        elif current and line.strip():
            found[current] = (found[current] + " " + line.strip()).strip()
    return found


def test_help_lists_every_command_with_a_one_line_description(cli):
    result = cli("--help")
    assert result.code == 0
    listed = commands_in(result.out)
    assert set(listed) == {"init", "check-config", "status", "warm", "cache", "demo"}
    assert all(listed.values()), listed
    assert "$FALLBACKCHAIN_CONFIG" in result.out and "./fallbackchain.toml" in result.out
    actions = commands_in(cli("cache", "--help").out)
    assert set(actions) == {"stats", "clear", "prune", "export", "import"}
    assert all(actions.values()), actions


@pytest.mark.parametrize(
    "argv",
    [["init"], ["check-config"], ["status"], ["warm"], ["cache"], ["demo"],
     *(["cache", a] for a in ("stats", "clear", "prune", "export", "import"))],
    ids=" ".join,
)
def test_each_command_help_opens_with_its_description(cli, argv):
    summary = commands_in(cli(*argv[:-1], "--help").out)[argv[-1]]
    result = cli(*argv, "--help")
    assert result.code == 0
    description = result.out.split("\n\n")[1]
    flat = " ".join(description.split())
    assert flat.lower().startswith(summary.lower()), (summary, flat)
    if argv != ["demo"] and argv != ["cache"]:
        assert "--config CONFIG" in result.out


# --------------------------------------------------------------------------------------------
# status: non-zero when shared state cannot be read
# --------------------------------------------------------------------------------------------


def status_config(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "status.toml"
    path.write_text(
        f'[openai]\napi_key_env = "{KEY_ENV}"\n[cache]\ndirectory = "{tmp_path / "cache"}"\n'
        + extra, encoding="utf-8",
    )
    return path


def test_status_is_zero_with_per_process_breakers_and_a_disk_cache(cli, tmp_path):
    assert cli("status", "--config", status_config(tmp_path, "")).code == 0


def test_status_exits_1_when_the_shared_breakers_redis_is_unreachable(cli, tmp_path):
    require_redis_package()
    url = f"redis://:secret-pw@127.0.0.1:{free_port()}/0"  # nothing listens there
    path = status_config(tmp_path, f'[breaker]\nstorage = "redis"\nredis_url = "{url}"\n')
    result = cli("status", "--config", path)
    assert result.code == 1
    assert f"  stream: unknown (Redis at {url.replace('secret-pw', '***')} is unreachable)" in (
        result.out
    )
    assert result.err_lines[-1] == (
        "fallbackchain: error: state this config uses cannot be read (see above)"
    )
    assert "secret-pw" not in result.out + result.err
    assert "Traceback" not in result.err


def test_status_exits_1_when_the_shared_cache_redis_is_unreachable(cli, tmp_path):
    require_redis_package()
    url = f"redis://127.0.0.1:{free_port()}/0"
    path = status_config(tmp_path, f'backend = "redis"\nredis_url = "{url}"\n')
    result = cli("status", "--config", path)
    assert result.code == 1
    assert "cannot be opened" in result.out
    assert "Traceback" not in result.err


@pytest.mark.parametrize(
    "command", [["stats"], ["export", "out.jsonl"], ["import", "in.jsonl"], ["prune"], ["clear", "--yes"]]
)
def test_cache_commands_exit_1_when_the_shared_cache_redis_is_unreachable(cli, tmp_path, command):
    require_redis_package()
    url = f"redis://127.0.0.1:{free_port()}/0"
    path = status_config(tmp_path, f'backend = "redis"\nredis_url = "{url}"\n')
    (tmp_path / "in.jsonl").write_text("", encoding="utf-8")
    args = [str(tmp_path / a) if a.endswith(".jsonl") else a for a in command]
    result = cli("cache", *args, "--config", path)
    assert result.code == 1, result.err  # the cache cannot be used: not a usage error (2)
    assert result.err_lines[-1] == (
        f"fallbackchain: error: the cache at {url} fallbackchain:cache:* cannot be opened "
        "(see the warning above)"
    )
    assert "Traceback" not in result.err
    assert not (tmp_path / "out.jsonl").exists()


def test_status_is_zero_when_redis_answers(cli, tmp_path):
    require_redis_package()
    require_redis_server()
    with RedisServer() as redis_server:
        path = status_config(
            tmp_path,
            f'backend = "redis"\nredis_url = "{redis_server.url}"\n'
            f'[breaker]\nstorage = "redis"\nredis_url = "{redis_server.url}"\n'
            'namespace = "surface-test"\n',
        )
        result = cli("status", "--config", path)
    assert result.code == 0, result.out + result.err
    assert "stream: closed (failures 0)" in result.out


@pytest.mark.slow
def test_python_dash_m_init_then_status(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != CONFIG_ENV}
    for argv in (["init"], ["status"]):
        done = subprocess.run(
            [sys.executable, "-m", "fallbackchain", *argv],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
        )
        assert done.returncode == 0, done.stderr
    assert "# status of fallbackchain.toml" in done.stdout
