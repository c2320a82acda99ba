"""The stored row: one answer as JSON text with its ``stored_at``, and the rules on its age.

What a caller can rely on: a row is ``{"format": 1, "stored_at": ..., "completion": {...}}``
(plain JSON, the same on disk and in Redis); :func:`decode_row` reads text or UTF-8 bytes,
never unpickles (a pickle is refused unread) and accepts only a valid, complete chat
completion. An entry at least ``ttl`` old (by the cache's clock) is never served; an answer
identical to the held one is not rewritten while that is younger than :data:`UNCHANGED_FOR`
of the ttl. Only complete answers (every choice finished with one of
:data:`COMPLETE_FINISH_REASONS`) are stored.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

import pydantic
import pydantic_core
from openai.types.chat import ChatCompletion

from .._completion_json import readable_completion
from .._errors import CacheCorruptError, UnsafeCacheRowError

__all__ = [
    "COMPLETE_FINISH_REASONS",
    "ROW_FORMAT",
    "UNCHANGED_FOR",
    "CachedAnswer",
    "HeldEntry",
    "LocalAnswer",
    "StoredRow",
    "answer_part",
    "clamp_stored_at",
    "decode_row",
    "decode_text",
    "encode_row",
    "fresh",
    "is_complete",
    "is_expired",
    "same_answer",
    "seconds",
]

ROW_FORMAT: Final = 1
"""The ``format`` of every stored row; a row of another format is not read."""
COMPLETE_FINISH_REASONS: Final = frozenset({"stop", "length", "tool_calls", "function_call"})
"""A choice with any other finish_reason (``None``, ``content_filter``) is not cached."""

UNCHANGED_FOR: Final = 0.5
"""An answer identical to the one a key holds is not rewritten while the held one is younger
than this fraction of ``ttl``; after that it is rewritten, so an answer that keeps coming back
never expires."""


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A cache hit. ``completion`` may be shared with the memory layer: do not mutate it."""

    completion: ChatCompletion
    stored_at: float
    """Wall-clock seconds (the cache's clock) when the answer was written."""
    age: float
    """``clock() - stored_at`` when it was read (never negative)."""


def is_expired(stored_at: float, now: float, ttl: float) -> bool:
    """The ttl rule: an entry at least ``ttl`` old at ``now`` (the cache's clock) is not served."""
    return now - stored_at >= ttl


def clamp_stored_at(now: float, stored_at: float | None, ttl: float) -> float | None:
    """When an entry written at ``now`` is dated, or None when that is at least ``ttl`` ago.

    ``stored_at`` defaults to ``now``; a later time counts as ``now``.
    """
    at = now if stored_at is None else min(float(stored_at), now)
    return None if is_expired(at, now, ttl) else at


class HeldEntry(NamedTuple):
    """An answer read from storage (validated), with when it was stored."""

    completion: ChatCompletion
    stored_at: float

    def answer(self, now: float, ttl: float) -> CachedAnswer | None:
        """The hit this entry gives at ``now``, or None when it is expired."""
        if is_expired(self.stored_at, now, ttl):
            return None
        return CachedAnswer(self.completion, self.stored_at, max(now - self.stored_at, 0.0))


class LocalAnswer:
    """An answer put in this process, held as its JSON-mode dump (a private copy).

    Validated into a ``ChatCompletion`` only on its first hit, so storing an answer costs one
    dump and no second validation. ``on_disk`` turns True once the disk holds this very row.
    """

    __slots__ = ("_completion", "body", "on_disk", "stored_at")

    def __init__(self, body: dict[str, Any], stored_at: float) -> None:
        self.body = body
        self.stored_at = stored_at
        self.on_disk = False
        self._completion: ChatCompletion | None = None

    def answer(self, now: float, ttl: float) -> CachedAnswer | None:
        """The hit this answer gives at ``now``, or None when it is expired."""
        if is_expired(self.stored_at, now, ttl):
            return None
        completion = self._completion
        if completion is None:  # two threads may both validate: same result, no harm
            completion = self._completion = readable_completion(self.body)
        return CachedAnswer(completion, self.stored_at, max(now - self.stored_at, 0.0))


def answer_part(body: Mapping[str, Any]) -> tuple[object, object]:
    """What makes two answers "the same": the model and the choices.

    The per-call metadata (``id``, ``created``, ``usage``, ``system_fingerprint``, ...) is
    left out: a repeated identical answer differs there and nowhere else.
    """
    return body.get("model"), body.get("choices")


def same_answer(held: HeldEntry | LocalAnswer, body: Mapping[str, Any]) -> bool:
    """True when ``held`` and ``body`` (a JSON-mode dump) give the same answer."""
    if isinstance(held, LocalAnswer):
        return answer_part(held.body) == answer_part(body)
    return answer_part(held.completion.model_dump(mode="json")) == answer_part(body)


def fresh(stored_at: float, now: float, ttl: float) -> bool:
    """Young enough that an identical answer is not rewritten (see :data:`UNCHANGED_FOR`)."""
    return 0.0 <= now - stored_at < ttl * UNCHANGED_FOR


class StoredRow(NamedTuple):
    """A row ready to be written: its JSON text and the seconds it has left to live."""

    text: str
    ttl_left: float


def seconds(value: object) -> float | None:
    """``value`` as finite seconds, or None: not a number (a bool is not), or out of range.

    JSON integers are unbounded: one too large for a float is refused here, not by an
    ``OverflowError`` later.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def is_complete(completion: ChatCompletion) -> bool:
    """True when every choice finished (see :data:`COMPLETE_FINISH_REASONS`), and there is one."""
    choices = completion.choices
    return bool(choices) and all(c.finish_reason in COMPLETE_FINISH_REASONS for c in choices)


def encode_row(body: Mapping[str, Any], stored_at: float) -> str:
    """The stored form of an answer (``body``: its JSON-mode dump), read by :func:`decode_row`.

    Compact JSON with non-ASCII kept as is, as ``json.dumps(..., ensure_ascii=False,
    separators=(",", ":"))`` writes it (a number may be spelled differently, ``0.00001`` for
    ``1e-05``: it reads back the same), by pydantic's serializer: about a quarter of the CPU.
    """
    row = {"format": ROW_FORMAT, "stored_at": stored_at, "completion": body}
    try:
        return pydantic_core.to_json(row).decode("utf-8")
    except pydantic_core.PydanticSerializationError:  # e.g. a lone surrogate: not UTF-8
        # The same text as before, which fails where it always did: at the write (logged).
        return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def decode_row(raw: object) -> HeldEntry:
    """Parse one stored row: text, or UTF-8 bytes as Redis returns them. JSON only.

    Raises :class:`UnsafeCacheRowError` for a pickle (refused unread) and
    :class:`CacheCorruptError` for anything else unexpected.
    """
    if isinstance(raw, memoryview | bytearray):
        raw = bytes(raw)
    if isinstance(raw, bytes):
        if raw[:1] == b"\x80":  # the pickle protocol 2+ opcode: never handed to pickle
            raise UnsafeCacheRowError("refused a pickled cache row")
        text = decode_text(raw)
    elif isinstance(raw, str):
        text = raw
    else:
        raise CacheCorruptError(f"cache row is a {type(raw).__name__}, not text")
    try:
        row = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise CacheCorruptError("cache row is not valid JSON") from exc
    if not isinstance(row, dict):
        raise CacheCorruptError("cache row is not a JSON object")
    row_format = row.get("format")
    if type(row_format) is not int or row_format != ROW_FORMAT:
        raise CacheCorruptError("cache row has an unknown format")
    stored_at = seconds(row.get("stored_at"))
    if stored_at is None:
        raise CacheCorruptError("cache row has no valid stored_at")
    body = row.get("completion")
    if not isinstance(body, dict):
        raise CacheCorruptError("cache row has no completion object")
    try:
        completion = readable_completion(body)  # as the chain read it live
    except (pydantic.ValidationError, ValueError, TypeError, RecursionError) as exc:
        raise CacheCorruptError("cache row is not a valid chat completion") from exc
    if not is_complete(completion):
        raise CacheCorruptError("cache row holds an incomplete answer")
    return HeldEntry(completion, stored_at)


def decode_text(data: bytes) -> str:
    """``data`` as UTF-8 text; :class:`CacheCorruptError` when it is not."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CacheCorruptError("cache row is not UTF-8 text") from exc
