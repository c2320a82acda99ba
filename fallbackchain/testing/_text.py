"""The answer text both APIs share: the prompt of a request, pseudo-words, stream pieces.

Chat completions and Responses give the same answer to the same prompt, so a test can
compare them; everything that decides that answer's text lives here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from typing import Any, Final

__all__ = [
    "ARGUMENT_PIECE",
    "argument_pieces",
    "dumps",
    "last_user_text",
    "prompt_tokens",
    "pseudo_words",
    "split_tokens",
    "text_of",
]

ARGUMENT_PIECE: Final = 8
"""Characters of tool-call arguments per streamed piece."""

_CONSONANTS: Final = "bdfghklmnprstvz"
_VOWELS: Final = "aeiou"
_TOKEN_RE: Final = re.compile(r"\s*\S+")


def dumps(obj: object) -> bytes:
    """Compact JSON, UTF-8 encoded, as the wire carries it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def text_of(content: object) -> str:
    """The text of a message ``content``: a string or a list of content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and isinstance(part.get("text"), str):
                parts.append(part["text"])
        return " ".join(parts)
    return ""


def last_user_text(messages: Iterable[Mapping[str, Any]]) -> str:
    """The text of the last ``user`` message (``""`` when there is none)."""
    text = ""
    for message in messages:
        if isinstance(message, Mapping) and message.get("role") == "user":
            text = text_of(message.get("content"))
    return text


def prompt_tokens(messages: Iterable[object]) -> int:
    """A made-up but stable prompt token count: words plus 3 per message."""
    return sum(
        len(text_of(m.get("content")).split()) + 3 for m in messages if isinstance(m, Mapping)
    )


def pseudo_words(prompt: str, count: int) -> list[str]:
    """``count`` pronounceable pseudo-words derived from a hash of ``prompt``."""
    words = []
    seed = prompt.encode("utf-8", "surrogatepass")
    for i in range(count):
        digest = hashlib.sha256(i.to_bytes(4, "big") + seed).digest()
        syllables = 1 + digest[0] % 3
        word = "".join(
            _CONSONANTS[digest[1 + 2 * s] % len(_CONSONANTS)]
            + _VOWELS[digest[2 + 2 * s] % len(_VOWELS)]
            for s in range(syllables)
        )
        if digest[8] % 4 == 0:
            word += _CONSONANTS[digest[9] % len(_CONSONANTS)]
        words.append(word)
    return words


def split_tokens(text: str) -> list[str]:
    """Split ``text`` into stream pieces, one per word with its leading whitespace.

    ``"".join(split_tokens(text)) == text`` always holds.
    """
    tokens = _TOKEN_RE.findall(text)
    rest = text[sum(map(len, tokens)) :]
    if rest:
        if tokens:
            tokens[-1] += rest
        else:
            tokens.append(rest)
    return tokens


def argument_pieces(arguments: str) -> list[str]:
    """The pieces a tool call's ``arguments`` stream in (``ARGUMENT_PIECE`` characters each)."""
    return [
        arguments[start : start + ARGUMENT_PIECE]
        for start in range(0, len(arguments), ARGUMENT_PIECE)
    ]
