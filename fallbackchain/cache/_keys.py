"""Cache keys: one request's canonical JSON, hashed.

What a caller can rely on: :func:`cache_key` is a pure function. The same logical request
(same model, same messages, same answer-shaping parameters, whatever the dict key order) always
gives the same key; transport-only options (``stream``, ``timeout``, ``extra_headers``,
``user``, ...) never change it; any other parameter, known or not, does. Numbers are compared
by value: ``1`` and ``1.0`` give the same key, ``True`` does not. The key format (``"fc1-"`` +
SHA-256 hex) is part of the on-disk format.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import openai
import pydantic

__all__ = ["KEY_PATTERN", "KEY_PREFIX", "TRANSPORT_ONLY_PARAMS", "cache_key"]

KEY_PREFIX: Final = "fc1-"
KEY_PATTERN: Final = re.compile(r"fc1-[0-9a-f]{64}")
"""What every key :func:`cache_key` makes looks like (``fullmatch``)."""

TRANSPORT_ONLY_PARAMS: Final = frozenset(
    {
        "stream",
        "stream_options",
        "timeout",
        "extra_headers",
        "extra_query",
        "user",
        "metadata",
        "store",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
        "prompt_cache_retention",
    }
)


_OMITTED = (openai.NotGiven, openai.Omit)  # built once: a union per call costs more than the check
# _canonical always builds a fresh tree (a cycle in the request never gets this far): no
# circular-reference bookkeeping needed.
_ENCODE = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, check_circular=False
).encode


def _omitted(value: object) -> bool:
    return isinstance(value, _OMITTED)


def _canonical(value: Any) -> Any:
    """Turn ``value`` into plain JSON data: dicts, lists, str, numbers, bools and None.

    A whole finite float becomes an int (``1.0`` is ``1``: JSON does not tell them apart, so
    a prompts file and application code must agree); a bool stays a bool (``true``, not ``1``).
    """
    kind = type(value)
    # What requests are made of, by exact type first: no chain of isinstance checks for them.
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        return _mapping(value)
    if kind is list:
        return [_canonical(v) for v in value if not _omitted(v)]
    if isinstance(value, float) and value.is_integer():  # False for inf and nan
        return int(value)
    if isinstance(value, str | int | float):
        return value
    if isinstance(value, pydantic.BaseModel):
        # What the SDK puts on the wire for a model: only the fields that were set.
        return _canonical(value.model_dump(mode="json", exclude_unset=True))
    if callable(getattr(value, "model_dump", None)):
        return _canonical(value.model_dump(mode="json"))
    if isinstance(value, Mapping):
        return _mapping(value)
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray | memoryview):
        return [_canonical(v) for v in value if not _omitted(v)]
    raise TypeError(f"cache_key: cannot represent a {type(value).__name__} value as JSON")


def _mapping(value: Mapping[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in value.items():
        if _omitted(v):
            continue
        if isinstance(k, str):
            name = k
        elif isinstance(k, int) and not isinstance(k, bool):
            name = str(k)
        else:
            raise TypeError(f"cache_key: unsupported mapping key type {type(k).__name__}")
        out[name] = _canonical(v)
    return out


def cache_key(
    model: str, messages: Sequence[Mapping[str, Any] | Any], params: Mapping[str, Any]
) -> str:
    """The cache key of one chat request: ``"fc1-"`` + SHA-256 hex of its canonical JSON.

    The canonical JSON is ``{"model", "messages", "params"}`` with sorted keys, no whitespace
    and non-ASCII kept as is; a whole float is written as an int (``temperature=1.0`` and
    ``temperature=1`` are one key; ``True`` stays distinct from ``1``). ``params`` loses the
    transport-only options (:data:`TRANSPORT_ONLY_PARAMS`); every other parameter, including
    unknown ones, counts as answer-shaping. Pydantic models are dumped as the SDK sends them
    (JSON mode, set fields only); ``openai.NOT_GIVEN`` / ``openai.omit`` values are dropped.

    Raises :class:`TypeError` for a value that has no JSON form (bytes, sets, arbitrary
    objects): such a request cannot be cached.
    """
    shaping = {
        name: value
        for name, value in params.items()
        if name not in TRANSPORT_ONLY_PARAMS and not _omitted(value)
    }
    document = {
        "model": _canonical(model),
        "messages": _canonical(list(messages)),
        "params": _canonical(shaping),
    }
    text = _ENCODE(document)
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
    return KEY_PREFIX + digest


# --------------------------------------------------------------------------------------------
# The Disk: text only, never pickle
# --------------------------------------------------------------------------------------------
