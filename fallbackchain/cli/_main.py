"""The ``fallbackchain`` command line: the parser, where the config comes from, dispatch.

Each command's arguments and one-line summary are declared here; what a command does lives in
its own module (``_warm_command``, ``_cache_commands``, ``_config_commands``, ``_status``,
``_demo_command``).
:func:`main` turns every user error into one ``fallbackchain: error: ...`` line and an exit
status, never a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from .._errors import ConfigError
from .._templates import DEFAULT_TEMPLATE, FallbackSpec, parse_fallback, template_names
from ..cache import InputFileError
from ._cache_commands import (
    cmd_cache_clear,
    cmd_cache_export,
    cmd_cache_import,
    cmd_cache_prune,
    cmd_cache_stats,
)
from ._config_commands import cmd_check_config, cmd_init
from ._demo_command import cmd_demo
from ._output import PROG, CommandFailed, ExitCode, UsageError, err
from ._status import cmd_status
from ._warm_command import cmd_warm

__all__ = ["CONFIG_ENV", "DEFAULT_CONFIG", "main"]

CONFIG_ENV: Final = "FALLBACKCHAIN_CONFIG"
"""The environment variable naming the config file when ``--config`` is not given."""
DEFAULT_CONFIG: Final = "fallbackchain.toml"
"""The config file used when neither ``--config`` nor ``$FALLBACKCHAIN_CONFIG`` is given."""


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a number of seconds >= 0, got {text}")
    return value


def _version() -> str:
    from .. import __version__  # noqa: PLC0415 - the package imports nothing from here

    return f"{PROG} {__version__}"


def _fallback(text: str) -> FallbackSpec:
    try:
        return parse_fallback(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _command(
    commands: Any, name: str, summary: str, *, config: bool = True, description: str | None = None
) -> argparse.ArgumentParser:
    """A subcommand; its one-line ``summary`` shows in the list of commands and atop its --help.

    With ``config`` it takes ``--config`` (resolved by :func:`_resolve_config`).
    """
    parents = [_config_option()] if config else []
    heading = f"{summary[0].upper()}{summary[1:]}."
    command: argparse.ArgumentParser = commands.add_parser(
        name,
        help=summary,
        description=f"{heading} {description}" if description else heading,
        parents=parents,
    )
    command.set_defaults(uses_config=config, config_must_exist=True, config_alias=None)
    return command


def _config_option() -> argparse.ArgumentParser:
    option = argparse.ArgumentParser(add_help=False)
    option.add_argument(
        "--config",
        default=argparse.SUPPRESS,  # absent: $FALLBACKCHAIN_CONFIG, then ./fallbackchain.toml
        metavar="CONFIG",
        help=f"the TOML config file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG})",
    )
    return option


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Write and check a fallbackchain config, show what is in effect, and warm and "
            "manage the response cache."
        ),
        epilog=(
            f"Every command that reads a config takes --config CONFIG, else ${CONFIG_ENV}, "
            f"else ./{DEFAULT_CONFIG}. "
            "Exit status: 0 ok, 1 something failed (or the cache or Redis cannot be used), "
            "2 usage or input error, 130 interrupted."
        ),
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument(  # `fallbackchain --config X status` as well as `status --config X`
        "--config",
        dest="global_config",
        default=argparse.SUPPRESS,
        metavar="CONFIG",
        help=f"the TOML config file (default: ${CONFIG_ENV}, else ./{DEFAULT_CONFIG})",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    n = _command(
        commands,
        "init",
        "write a commented config file to start from",
        description=(
            f"PATH defaults to --config, ${CONFIG_ENV} or ./{DEFAULT_CONFIG}. The file "
            "is the chosen template with the given primary and fallbacks; it is checked "
            "before it is written. An existing file is kept (exit status 1) unless --force."
        ),
    )
    n.add_argument("config_alias", nargs="?", metavar="PATH", help="where to write the config")
    n.add_argument(
        "--template",
        choices=template_names(),
        default=DEFAULT_TEMPLATE,
        help="the shipped template to start from (default: %(default)s)",
    )
    n.add_argument("--model", metavar="MODEL", help="the primary model ([openai] model)")
    n.add_argument("--base-url", metavar="URL", help="the primary's OpenAI-compatible endpoint")
    n.add_argument(
        "--api-key-env", metavar="NAME", help="the NAME of the variable holding the API key"
    )
    n.add_argument(
        "--fallback",
        dest="fallbacks",
        action="append",
        type=_fallback,
        default=[],
        metavar="NAME=MODEL[@URL]",
        help="a fallback model, tried in the order given (URL: its endpoint, if not the "
        "primary's); repeat for more",
    )
    n.add_argument("--force", action="store_true", help="replace an existing file")
    n.set_defaults(handler=cmd_init, config_must_exist=False)

    k = _command(
        commands,
        "check-config",
        "validate a config file and print the effective config",
        description="No secret is printed: only the names of key variables, and whether set.",
    )
    k.add_argument(
        "config_alias", nargs="?", metavar="CONFIG", help="the config file (the same as --config)"
    )
    k.set_defaults(handler=cmd_check_config)

    st = _command(
        commands,
        "status",
        "breaker states, cache size and age range, and the config in effect",
        description="Exit status 1 when shared state (Redis) or the cache cannot be read.",
    )
    st.set_defaults(handler=cmd_status)

    w = _command(
        commands,
        "warm",
        "answer every prompt of a JSON Lines file live, filling the cache",
        description=(
            "Send each prompt of PROMPTS (JSON Lines: chat.completions.create arguments, or "
            '{"prompt": "text"}) through the chain\'s live tiers, writing each answer to the '
            "cache. Already-cached prompts are skipped, so an interrupted run resumes."
        ),
    )
    w.add_argument("prompts", metavar="PROMPTS", help="the prompts file (JSON Lines)")
    w.add_argument(
        "--concurrency",
        type=_positive_int,
        default=4,
        metavar="N",
        help="requests in flight at once (default: %(default)s)",
    )
    w.add_argument("--refresh", action="store_true", help="ask again for cached prompts too")
    w.add_argument(
        "--dry-run", action="store_true", help="validate and show what would be sent; send nothing"
    )
    w.add_argument("--strict", action="store_true", help="send nothing if any line is bad")
    w.add_argument(
        "--max-wait",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="give up on the rest when every breaker stays open this long "
        "(default: 10 x breaker.reset_timeout)",
    )
    w.set_defaults(handler=cmd_warm)

    c = _command(
        commands, "cache", "inspect, clear, prune, export or import the cache", config=False
    )
    cache_commands = c.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    s = _command(cache_commands, "stats", "entries, bytes, oldest and newest")
    s.add_argument("--json", action="store_true", help="print JSON")
    s.set_defaults(handler=cmd_cache_stats)
    cl = _command(cache_commands, "clear", "remove every entry (asks first)")
    cl.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    cl.set_defaults(handler=cmd_cache_clear)
    p = _command(cache_commands, "prune", "remove entries older than the ttl")
    p.set_defaults(handler=cmd_cache_prune)
    e = _command(cache_commands, "export", "write every servable entry as JSON Lines")
    e.add_argument("file", metavar="FILE", help='the file to write ("-": stdout)')
    e.set_defaults(handler=cmd_cache_export)
    i = _command(
        cache_commands, "import", "load an export; never replaces a newer entry with an older one"
    )
    i.add_argument("file", metavar="FILE", help='the file to read ("-": stdin)')
    i.set_defaults(handler=cmd_cache_import)

    d = _command(
        commands,
        "demo",
        "the resilience story against local fault servers (no API key)",
        config=False,
    )
    d.add_argument("--record", metavar="FILE", help="write every event as JSON Lines to FILE")
    d.set_defaults(handler=cmd_demo)
    return parser


def _resolve_config(args: argparse.Namespace) -> str:
    """The config path of a command, found the same way for every command.

    ``--config`` (or a command's positional alias: ``check-config CONFIG``, ``init PATH``),
    else ``$FALLBACKCHAIN_CONFIG``, else ``./fallbackchain.toml``. Every command but ``init``
    needs the file to exist: a missing file is a usage error saying where the path came from.
    """
    flag: str | None = getattr(args, "config", None)
    before: str | None = getattr(args, "global_config", None)  # given before the command
    if flag is not None and before is not None and Path(flag) != Path(before):
        raise UsageError(f"two config files given: --config {before} and --config {flag}")
    flag = flag if flag is not None else before
    alias: str | None = args.config_alias
    if flag is not None and alias is not None and Path(flag) != Path(alias):
        raise UsageError(f"two config files given: {alias} and --config {flag}; pass one")
    given = alias if alias is not None else flag
    if given is not None:
        return given  # a missing file is load_config's error, naming the file
    from_env = os.environ.get(CONFIG_ENV, "").strip()
    if from_env:
        if args.config_must_exist and not Path(from_env).is_file():
            raise UsageError(f"{from_env}: config file not found (from ${CONFIG_ENV})")
        return from_env
    if args.config_must_exist and not Path(DEFAULT_CONFIG).is_file():
        raise UsageError(
            f"no config: ./{DEFAULT_CONFIG} does not exist; pass --config CONFIG, set "
            f"${CONFIG_ENV}, or write one with `{PROG} init`"
        )
    return DEFAULT_CONFIG


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error argparse reported
        return exc.code if isinstance(exc.code, int) else ExitCode.USAGE
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        if args.uses_config:
            args.config = _resolve_config(args)
        return handler(args)
    except (ConfigError, InputFileError, UsageError) as exc:
        err(f"{PROG}: error: {exc}")
        return ExitCode.USAGE
    except CommandFailed as exc:
        err(f"{PROG}: error: {exc}")
        return ExitCode.FAILED
    except KeyboardInterrupt:
        err(f"{PROG}: interrupted")
        return ExitCode.INTERRUPTED
    except BrokenPipeError:  # stdout closed early (`... | head`): not an error worth a trace
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keep interpreter exit quiet
        return ExitCode.FAILED
