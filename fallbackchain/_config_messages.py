"""A config's problems in words: pydantic's validation errors as :class:`ConfigError` lines.

Each names the file, the line where known, the dotted key (``fallbacks[0].name``) and the value
(credentials masked), says what is expected (a field's declared bounds, its choices), and for an
unknown section or key offers a "did you mean". ``sections`` maps each config section to the
dataclass that declares its fields.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import annotated_types

from ._errors import ConfigError
from ._redact import MASK

__all__ = ["Sections", "problem", "unknown_key"]

Sections = Mapping[str, type[Any]]
"""Each config section's name and the dataclass that declares its fields."""


def _dotted(loc: Sequence[str | int]) -> str:
    """``("fallbacks", 0, "name")`` -> ``"fallbacks[0].name"``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _section_of(loc: Sequence[str | int], sections: Sections) -> type[Any] | None:
    return sections.get(str(loc[0])) if loc else None


def _type_name(value: object) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a float", str: "a string"}
    for kind, name in names.items():
        if type(value) is kind:
            return name
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return f"a {type(value).__name__}"


def _limits(section: type[Any] | None, name: str) -> str | None:
    """``"> 0 and <= 3600"`` from the field's declared bounds (None if it has none)."""
    if section is None:
        return None
    hint = typing.get_type_hints(section, include_extras=True).get(name)
    bounds = []
    for metadata in _metadata(hint):
        for kind, attribute, symbol in (
            (annotated_types.Gt, "gt", ">"),
            (annotated_types.Ge, "ge", ">="),
            (annotated_types.Lt, "lt", "<"),
            (annotated_types.Le, "le", "<="),
        ):
            if isinstance(metadata, kind):
                bounds.append(f"{symbol} {getattr(metadata, attribute):g}")
    return " and ".join(bounds) or None


def _metadata(hint: object) -> list[object]:
    """Every constraint object in ``hint`` (through ``Annotated``, ``X | None`` and FieldInfo)."""
    found: list[object] = []
    for arg in typing.get_args(hint):
        found.extend(_metadata(arg))
    for extra in getattr(hint, "__metadata__", ()):
        found.extend(getattr(extra, "metadata", [extra]))
    return found


def _message(
    kind: str, loc: Sequence[str | int], value: object, error: Any, sections: Sections
) -> str:
    ctx = error.get("ctx") or {}
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return unknown_key(loc, sections)
    if kind == "missing":
        return "is required"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        name = str(loc[-1])
        limits = _limits(_section_of(loc, sections), name) if len(loc) >= 2 else None
        return f"must be {limits}" if limits else str(error["msg"]).replace("Input should", "must")
    if kind == "float_type" and type(value) is int:
        return "is too large a number"
    if kind in ("int_type", "int_from_float"):
        return f"must be a whole number, not {_type_name(value)}"
    if kind == "float_type":
        return f"must be a number, not {_type_name(value)}"
    if kind == "string_type":
        return f"must be a string, not {_type_name(value)}"
    if kind == "bool_type":
        return f"must be true or false, not {_type_name(value)}"
    if kind == "finite_number":
        return "must be a finite number"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind in ("tuple_type", "list_type"):
        return "must be an array of tables ([[fallbacks]])"
    if kind in ("dataclass_type", "dataclass_exact_type", "dict_type", "model_type"):
        return "must be a table"
    return str(error["msg"])


def unknown_key(loc: Sequence[str | int], sections: Sections) -> str:
    """The message for an unknown section or key at ``loc``, with a "did you mean"."""
    name = str(loc[-1])
    if len(loc) == 1:
        known = sorted(sections)
        hint = difflib.get_close_matches(name, known, n=1)
        guess = f"; did you mean [{hint[0]}]?" if hint else ""
        return f"unknown section [{name}] (known: {', '.join(known)}){guess}"
    section = _section_of(loc, sections)
    known = sorted(f.name for f in dataclasses.fields(section)) if section else []
    label = "[[fallbacks]]" if loc[0] == "fallbacks" else f"[{loc[0]}]"
    hint = difflib.get_close_matches(name, known, n=1)
    guess = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"unknown key{guess} (known in {label}: {', '.join(known)})"


def problem(
    error: Any, file: str | None, lines: Mapping[str, int], sections: Sections
) -> ConfigError:
    """One of pydantic's validation errors as a ConfigError naming file, line, key and value."""
    loc: list[str | int] = list(error["loc"])
    kind = str(error["type"])
    value: object = error.get("input")
    if kind == "cross_field":
        loc += list(error["ctx"]["where"])
        value = error["ctx"]["value"]
    elif kind == "env_name":
        value = MASK
    elif kind == "missing" or (len(loc) == 1 and kind != "tuple_type"):
        value = None  # a whole section is not worth repeating
    key = _dotted(loc)
    message = _message(kind, loc, value, error, sections)
    return ConfigError(message, file=file, key=key, value=value, line=_line(lines, loc))


def _line(lines: Mapping[str, int], loc: Sequence[str | int]) -> int | None:
    """The line of the key, else of the nearest enclosing table that is in the file."""
    for end in range(len(loc), 0, -1):
        line = lines.get(_dotted(loc[:end]))
        if line is not None:
            return line
    return None
