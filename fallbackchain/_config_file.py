"""Reading a config file: TOML in, a checked :class:`ChainConfig` out, or one ConfigError.

:func:`load_config` never raises anything but :class:`~fallbackchain.ConfigError`: a missing
file, a directory, bytes that are not UTF-8 (a BOM is named with its fix), invalid TOML, a
number with too many digits, nesting too deep, and every problem the checks find (in file
order, each with its line where the scan of the text finds it).
"""

from __future__ import annotations

import codecs
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from ._config import SECTIONS, ChainConfig, check_config
from ._errors import ConfigError

__all__ = ["config_from_mapping", "load_config"]

_BARE_OR_QUOTED = r"(?:[A-Za-z0-9_-]+|\"[^\"]*\"|'[^']*')"
_DOTTED = rf"{_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*"
_HEADER_LINE: Final = re.compile(rf"\s*(\[\[?)\s*({_DOTTED})\s*\]\]?\s*(?:#.*)?$")
_KEY_LINE: Final = re.compile(rf"\s*({_DOTTED})\s*=")
_KEY_PART: Final = re.compile(_BARE_OR_QUOTED)


def _key_name(dotted: str) -> str:
    return ".".join(part.strip("\"'") for part in _KEY_PART.findall(dotted))


def _key_lines(text: str) -> dict[str, int]:
    """Where each table and key is written: ``{"retry.max_attempts": 12, "fallbacks[1]": 20}``.

    A best-effort scan for messages only (the parser is ``tomllib``): keys written in inline
    tables are not found, and then the enclosing table's line is used.
    """
    lines: dict[str, int] = {}
    table = ""
    counts: dict[str, int] = {}
    open_quote: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if open_quote is not None:  # inside a multi-line string
            if open_quote in line:
                open_quote = None
            continue
        header = _HEADER_LINE.match(line)
        if header:
            name = _key_name(header.group(2))
            if header.group(1) == "[[":
                index = counts.get(name, 0)
                counts[name] = index + 1
                name = f"{name}[{index}]"
            table = name
            lines.setdefault(table, number)
            continue
        key = _KEY_LINE.match(line)
        if key:
            name = _key_name(key.group(1))
            lines.setdefault(f"{table}.{name}" if table else name, number)
            rest = line[key.end() :]
            open_quote = next((q for q in ('"""', "'''") if rest.count(q) == 1), None)
    return lines


def _read(path: str | os.PathLike[str], file: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError("config file not found", file=file) from None
    except IsADirectoryError:
        raise ConfigError(
            "cannot read config file: it is a directory (give the path of a .toml file)",
            file=file,
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror or exc}", file=file) from None
    except ValueError:  # a path with a NUL byte
        raise ConfigError("cannot read config file: not a valid file name", file=file) from None


def _decode(raw: bytes, file: str) -> str:
    if raw.startswith(codecs.BOM_UTF8):
        raise ConfigError(
            "the file starts with a UTF-8 byte-order mark (BOM), which TOML does not allow; "
            "save it as UTF-8 without a BOM (the editor's 'UTF-8' encoding, not 'UTF-8 with "
            "BOM'), or remove the first 3 bytes",
            file=file,
            line=1,
        )
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise ConfigError(
            "the file is UTF-16 text (it starts with a UTF-16 byte-order mark); save it as UTF-8",
            file=file,
            line=1,
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ConfigError(
            f"is not UTF-8 text (byte 0x{raw[exc.start]:02x} cannot be read); save it as UTF-8",
            file=file,
            line=line,
        ) from None


def _parse(text: str, file: str) -> dict[str, Any]:
    import tomllib  # noqa: PLC0415 - only when a file is read, not when this module is imported

    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        found = re.search(r"at line (\d+)", str(exc))
        line = int(found.group(1)) if found else None
        raise ConfigError(f"invalid TOML: {exc}", file=file, line=line) from None
    except RecursionError:
        raise ConfigError(
            "invalid TOML: arrays or inline tables are nested too deeply", file=file
        ) from None
    except ValueError:  # an integer beyond the interpreter's digit limit
        long_number = re.search(r"\d{4000}", text)
        line = text.count("\n", 0, long_number.start()) + 1 if long_number else None
        message = "invalid TOML: a number has too many digits"
        raise ConfigError(message, file=file, line=line) from None


def load_config(path: str | os.PathLike[str]) -> ChainConfig:
    """Load and check a TOML config file.

    Missing sections and keys take their defaults. Raises one :class:`ConfigError` (naming
    the file, and the line, key and value where one is at fault; ``.errors`` lists every
    problem found) for a missing or unreadable file, one that is not UTF-8 TOML, an unknown
    section or key, a wrong type or an out-of-range value. Never any other exception.
    """
    file = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    text = _decode(_read(path, file), file)
    return config_from_mapping(_parse(text, file), file=file, lines=_key_lines(text))


def config_from_mapping(
    data: Mapping[str, Any], *, file: str | None = None, lines: Mapping[str, int] | None = None
) -> ChainConfig:
    """Build a :class:`ChainConfig` from parsed TOML (a mapping of sections), checking it.

    ``lines`` maps dotted keys to the line they are written on, for messages.
    """
    if not isinstance(data, Mapping):
        raise ConfigError("must be a table of sections", file=file, value=data)
    sections = dict(data)
    problems = []
    if "source" in sections:  # a ChainConfig field, but not a section a file may set
        del sections["source"]
        from ._config_messages import unknown_key  # noqa: PLC0415 - only for a bad config

        problems.append(ConfigError(unknown_key(["source"], SECTIONS), file=file, key="source"))
    sections["source"] = file
    try:
        config = check_config(sections, file=file, lines=lines)
    except ConfigError as exc:
        problems.extend(exc.errors)
    if problems:  # in file order; those without a known line last
        problems.sort(key=lambda problem: problem.line or len(problems) + 1 << 32)
        raise ConfigError.combine(problems)
    return config
