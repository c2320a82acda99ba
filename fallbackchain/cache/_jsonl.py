"""JSON Lines files: reading them line by line, and a cache's export and import files.

What a caller can rely on: :func:`read_jsonl` never raises for a bad line (it yields a
:class:`LineError` naming file and line) and raises :class:`InputFileError` only for a file
that cannot be opened or read. An export line is ``{"key", "stored_at", "completion"}``
(plain JSON, never pickle); :func:`export_jsonl` writes a path atomically and private
(``0600``); :func:`import_jsonl` validates every line and reports bad ones by number.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import IO, Any, Final, Literal, NamedTuple

import pydantic
from openai.types.chat import ChatCompletion

from .._completion_json import readable_completion
from .._errors import FallbackChainError
from ._keys import KEY_PATTERN
from ._rows import is_complete, seconds

__all__ = [
    "EXPORT_KEYS",
    "ExportRow",
    "ImportOutcome",
    "ImportReport",
    "InputFileError",
    "LineError",
    "check_import",
    "export_jsonl",
    "import_jsonl",
    "read_jsonl",
]

EXPORT_KEYS: Final = frozenset({"key", "stored_at", "completion"})
"""The keys of one line of an export file (see :func:`export_jsonl`)."""


@dataclass(frozen=True, slots=True)
class LineError:
    """One bad line of a JSON Lines input file; ``str()`` is ``"FILE:LINE: message"``."""

    file: str
    line: int
    """1-based line number."""
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


class InputFileError(FallbackChainError, ValueError):
    """A JSON Lines input file (prompts, or a cache export) cannot be used.

    Raised for a missing or unreadable file, and in strict mode for a file with bad lines
    (then ``errors`` lists every one of them). The message is one line naming the file.
    """

    def __init__(self, message: str, *, file: str, errors: Sequence[LineError] = ()) -> None:
        super().__init__(message)
        self.file = file
        self.errors = tuple(errors)


class ExportRow(NamedTuple):
    """One servable cache entry, as :meth:`ResponseCache.export_rows` yields it."""

    key: str
    stored_at: float
    completion: ChatCompletion


ImportOutcome = Literal["imported", "kept", "expired", "failed"]
"""What :meth:`ResponseCache.import_row` did with one row.

``imported``: stored. ``kept``: the cache already holds an answer for the key stored at the
same time or later, which is never replaced by an older one. ``expired``: at least ``ttl`` old,
so not stored. ``failed``: the cache is disabled, closed, read-only or its disk is unavailable,
or the write failed (logged).
"""


@dataclass(frozen=True, slots=True)
class ImportReport:
    """The result of :meth:`ResponseCache.import_jsonl`: counts per outcome, and bad lines."""

    imported: int
    kept: int
    expired: int
    failed: int
    invalid: int
    errors: tuple[LineError, ...]

    @property
    def ok(self) -> bool:
        """True when every line was valid and nothing failed."""
        return self.invalid == 0 and self.failed == 0


def _source_name(source: object) -> str:
    if isinstance(source, str):
        return source
    if isinstance(source, os.PathLike):
        return str(os.fspath(source))
    name = getattr(source, "name", None)
    return name if isinstance(name, str) else "<stream>"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_line(text: str, *, name: str, line: int) -> tuple[int, Any] | LineError | None:
    stripped = text.strip()
    if not stripped or stripped.startswith("#"):
        return None
    try:
        return line, json.loads(stripped, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        return LineError(name, line, f"not valid JSON ({exc.msg} at column {exc.colno})")
    except (ValueError, RecursionError) as exc:
        detail = str(exc) if isinstance(exc, ValueError) else "nested too deeply"
        return LineError(name, line, f"not valid JSON ({detail})")


def read_jsonl(
    source: str | os.PathLike[str] | Iterable[str], *, name: str | None = None
) -> Iterator[tuple[int, Any] | LineError]:
    """Parse JSON Lines lazily: ``(line_number, value)`` per line, or a :class:`LineError`.

    ``source`` is a path (a ``str`` is always a path) or an iterable of lines (an open text
    file, a list of strings); ``name`` is what errors call it (default: the path, or the
    file's ``name``). Blank lines and lines whose first non-blank character is ``#`` are
    skipped. A line that is not UTF-8 or not JSON (``NaN`` and ``Infinity`` are not JSON)
    gives a :class:`LineError` and the next line is still read. A byte-order mark at the start
    is ignored. Raises :class:`InputFileError` when a path cannot be opened or read.
    """
    name = name if name is not None else _source_name(source)
    if not isinstance(source, str | os.PathLike):
        for number, line_text in enumerate(source, start=1):
            text = line_text.removeprefix("\ufeff") if number == 1 else line_text
            parsed = _parse_line(text, name=name, line=number)
            if parsed is not None:
                yield parsed
        return
    try:
        reader = open(source, "rb")  # noqa: SIM115 - closed below, errors mapped
    except FileNotFoundError:
        raise InputFileError(f"{name}: file not found", file=name) from None
    except IsADirectoryError:
        raise InputFileError(f"{name}: is a directory, not a file", file=name) from None
    except OSError as exc:
        raise InputFileError(f"{name}: cannot read file: {exc.strerror}", file=name) from exc
    with reader:
        number = 0
        while True:
            try:
                raw = reader.readline()
            except OSError as exc:
                raise InputFileError(
                    f"{name}: cannot read file: {exc.strerror}", file=name
                ) from exc
            if not raw:
                return
            number += 1
            if number == 1:
                raw = raw.removeprefix(b"\xef\xbb\xbf")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield LineError(name, number, "not UTF-8 text")
                continue
            parsed = _parse_line(text, name=name, line=number)
            if parsed is not None:
                yield parsed


def check_import(key: object, completion: ChatCompletion, stored_at: object) -> None:
    """What ``import_row`` accepts; :class:`ValueError` with a one-line reason otherwise."""
    if type(key) is not str or not KEY_PATTERN.fullmatch(key):
        raise ValueError("'key' must be a cache key ('fc1-' and 64 lower-case hex digits)")
    at = seconds(stored_at)
    if at is None or at < 0:
        raise ValueError("'stored_at' must be a finite number of seconds >= 0")
    if not is_complete(completion):
        reasons = sorted({str(c.finish_reason) for c in completion.choices}) or ["no choices"]
        raise ValueError(f"'completion' is not a complete answer (finish_reason {reasons})")


class _BadLineError(ValueError):
    """One line of an input file is wrong; the message is the one-line reason."""


def _parse_export_line(value: Any) -> tuple[str, ChatCompletion, float]:
    """Validate one export line's JSON value; ValueError with a one-line reason."""
    if not isinstance(value, dict):
        raise _BadLineError(f"expected a JSON object, got {_json_type(value)}")
    unknown = sorted(set(value) - EXPORT_KEYS)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))}")
    missing = sorted(EXPORT_KEYS - set(value))
    if missing:
        raise ValueError(f"missing key(s) {', '.join(map(repr, missing))}")
    body = value["completion"]
    if not isinstance(body, dict):
        raise _BadLineError(f"'completion' must be an object, got {_json_type(body)}")
    try:
        completion = readable_completion(body)  # what the cache can hold, it can import
    except (pydantic.ValidationError, TypeError, RecursionError) as exc:
        count = exc.error_count() if isinstance(exc, pydantic.ValidationError) else 1
        raise ValueError(
            f"'completion' is not a valid chat completion ({count} validation error(s))"
        ) from None
    key, stored_at = value["key"], value["stored_at"]
    check_import(key, completion, stored_at)
    return key, completion, float(stored_at)  # _check_import made sure this cannot overflow


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    return names.get(type(value), "a number")


def export_jsonl(rows: Iterable[ExportRow], target: str | os.PathLike[str] | IO[str]) -> int:
    """Write ``rows`` as JSON Lines to ``target``; returns the number of lines written.

    Each line is ``{"key": ..., "stored_at": ..., "completion": {...}}`` (plain JSON, never
    pickle). A path is written atomically (a private temporary file, then renamed), so an
    interrupted export never leaves a half-written file. Raises :class:`OSError` when
    ``target`` cannot be written.
    """
    if not isinstance(target, str | os.PathLike):
        return _write_rows(rows, target)
    path = os.fspath(target)
    fd, temporary = tempfile.mkstemp(
        prefix=".fallbackchain-export-", suffix=".tmp", dir=os.path.dirname(path) or "."
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as out:
            count = _write_rows(rows, out)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return count


def _write_rows(rows: Iterable[ExportRow], out: IO[str]) -> int:
    count = 0
    for row in rows:
        line = json.dumps(
            {
                "key": row.key,
                "stored_at": row.stored_at,
                "completion": row.completion.model_dump(mode="json", exclude_unset=True),
            },
            ensure_ascii=False,
            separators=(",", ":"),
        )
        out.write(line + "\n")
        count += 1
    out.flush()
    return count


def import_jsonl(
    source: str | os.PathLike[str] | Iterable[str],
    import_row: Callable[[str, ChatCompletion, float], ImportOutcome],
    *,
    name: str | None = None,
) -> ImportReport:
    """Import an :func:`export_jsonl` file line by line with ``import_row``.

    Every line is validated (JSON only, exactly the keys ``key``, ``stored_at`` and
    ``completion``, a well-formed key, a valid and complete chat completion); a bad line is
    reported in ``errors`` by line number and the others are still imported. Blank lines and
    lines starting with ``#`` are skipped. Raises :class:`InputFileError` when the file is
    missing or unreadable. ``name`` is what errors call the file (see :func:`read_jsonl`).
    """
    name = name if name is not None else _source_name(source)
    counts: dict[str, int] = {"imported": 0, "kept": 0, "expired": 0, "failed": 0}
    errors: list[LineError] = []
    for item in read_jsonl(source, name=name):
        if isinstance(item, LineError):
            errors.append(item)
            continue
        line, value = item
        try:
            key, completion, stored_at = _parse_export_line(value)
            outcome = import_row(key, completion, stored_at)
        except ValueError as exc:
            errors.append(LineError(name, line, str(exc)))
            continue
        counts[outcome] += 1
    return ImportReport(
        imported=counts["imported"],
        kept=counts["kept"],
        expired=counts["expired"],
        failed=counts["failed"],
        invalid=len(errors),
        errors=tuple(errors),
    )
