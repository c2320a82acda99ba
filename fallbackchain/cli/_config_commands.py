"""``fallbackchain check-config`` and ``init``: show the effective config, write a new one.

What a caller can rely on: ``check-config`` prints the effective config (defaults included) as
TOML that loads again, with every route's resolved values as comments, and never a secret: only
the *name* of each API key variable and whether it is set, and URLs with credentials masked.
``init`` writes a shipped template with the given primary and fallbacks, checked by the real
loader before anything is written; it never replaces an existing file without ``--force`` and
never leaves one half-written.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import tempfile
from pathlib import Path

from .._config import ChainConfig, load_config
from .._errors import ConfigError
from .._redact import mask_url
from .._templates import render_config
from ._output import PROG, ExitCode, UsageError, err, out

__all__ = ["cmd_check_config", "cmd_init", "print_config"]


# --------------------------------------------------------------------------------------------
# check-config
# --------------------------------------------------------------------------------------------


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def _toml_line(name: str, value: object) -> str:
    """``name = value`` as TOML (URLs masked), noting whether a key variable is set."""
    if value is None:
        return f"# {name}: not set"
    if name.endswith("_url") and isinstance(value, str):
        value = mask_url(value)
    line = f"{name} = {_toml_value(value)}"
    if name == "api_key_env" and isinstance(value, str) and value:
        line += "  # set" if os.environ.get(value) else "  # NOT SET in this environment"
    return line


def _toml_table(section: object, *, header: str) -> list[str]:
    lines = [f"\n{header}"]
    for field in dataclasses.fields(section):  # type: ignore[arg-type]
        lines.append(_toml_line(field.name, getattr(section, field.name)))
    return lines


def _route_lines(config: ChainConfig) -> list[str]:
    """Every route's resolved settings, as TOML comments (the output stays loadable)."""
    lines = [
        "",
        "# Routes in the order they are tried, every value resolved (a fallback's unset keys",
        "# take the [openai], [retry] and [breaker] values):",
    ]
    for route in config.routes():
        tiers = ", ".join(name for name, _ in route.tiers)
        lines.append(f"#\n# route {route.name!r} (tiers: {tiers})")
        for field in dataclasses.fields(route):
            if field.name == "name":
                continue
            value = getattr(route, field.name)
            if field.name == "hedge_after" and value is None:
                lines.append("#   hedge_after = off")
                continue
            lines.append(f"#   {_toml_line(field.name, value)}")
    return lines


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    out(f"# OK: {config.source} (the effective config, defaults included; no secrets)")
    print_config(config)
    if not os.environ.get(config.openai.api_key_env):
        err(
            f"{PROG}: warning: environment variable {config.openai.api_key_env} is not set; "
            "requests (and `warm`) need it"
        )
    return ExitCode.OK


def print_config(config: ChainConfig) -> None:
    """Print the effective config as loadable TOML, every route's resolved values as comments."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if dataclasses.is_dataclass(value):
            out("\n".join(_toml_table(value, header=f"[{field.name}]")))
        elif isinstance(value, tuple):
            for entry in value:
                out("\n".join(_toml_table(entry, header=f"[[{field.name}]]")))
    out("\n".join(_route_lines(config)))


# --------------------------------------------------------------------------------------------
# init
# --------------------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    path = Path(args.config)
    text = render_config(
        args.template,
        model=args.model,
        base_url=args.base_url,
        api_key_env=args.api_key_env,
        fallbacks=tuple(args.fallbacks),
    )
    _check_rendered(text, path)
    if path.exists() and not args.force:
        err(f"{PROG}: {path} already exists; not overwritten (pass --force to replace it)")
        return ExitCode.FAILED
    try:
        _write_config(path, text, replace=args.force)
    except FileExistsError:
        err(f"{PROG}: {path} already exists; not overwritten (pass --force to replace it)")
        return ExitCode.FAILED
    except OSError as exc:
        raise UsageError(f"{path}: cannot write file: {exc.strerror or exc}") from None
    config = load_config(path)
    out(f"wrote {path}")
    key = config.openai.api_key_env
    if not os.environ.get(key):
        out(f"next: export {key}=... (the API key), then: {PROG} check-config --config {path}")
    return ExitCode.OK


def _check_rendered(text: str, path: Path) -> None:
    """Load ``text`` with the real loader before anything is written (bad flag values)."""
    with tempfile.TemporaryDirectory(prefix="fallbackchain-init-") as scratch:
        probe = Path(scratch, path.name or "fallbackchain.toml")
        probe.write_text(text, encoding="utf-8")
        try:
            load_config(probe)
        except ConfigError as exc:
            message = str(exc).replace(str(probe), f"{path} (not written)")
            raise UsageError(message) from None


def _write_config(path: Path, text: str, *, replace: bool) -> None:
    """Write ``text`` to ``path``: never clobbers without ``replace``, never half-written."""
    if not replace:
        with path.open("x", encoding="utf-8") as new:  # fails if it appeared meanwhile
            new.write(text)
        return
    with tempfile.NamedTemporaryFile(
        "w", encoding="utf-8", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as scratch:
        scratch.write(text)
    try:
        # NamedTemporaryFile makes it 0600: keep the replaced file's mode (a config is no secret).
        mode = path.stat().st_mode & 0o777 if path.exists() else 0o644
        os.chmod(scratch.name, mode)
        os.replace(scratch.name, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(scratch.name)
        raise
