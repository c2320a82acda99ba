"""Masking secrets before anything is shown: URLs, values that look like keys, bounded reprs.

Every URL the library prints, logs or puts in an error goes through :func:`mask_url`; every
config value shown in an error goes through :func:`describe_value`. Both are pure, never raise,
and err on the side of hiding: a masked non-secret costs a little clarity, a shown secret
cannot be taken back.
"""

from __future__ import annotations

import itertools
import math
import re
import reprlib
from collections.abc import Mapping
from typing import Final

__all__ = [
    "MASK",
    "brief_repr",
    "describe_value",
    "is_env_var_name",
    "is_secret_name",
    "looks_like_secret",
    "mask_url",
    "redact",
]

MASK: Final = "***"

# Parameter and key names that carry credentials, compared lower-cased without "-" and "_"
# (so "api-key", "API_KEY" and "apiKey" are one name).
_SECRET_NAMES: Final = frozenset(
    {
        "password", "passwd", "pwd", "pass", "secret", "clientsecret", "token", "accesstoken",
        "refreshtoken", "idtoken", "authtoken", "sessiontoken", "securitytoken", "apikey", "key",
        "subscriptionkey", "sig", "signature", "auth", "authorization", "credential",
        "credentials", "bearer", "session", "sessionid", "code", "xamzsignature",
        "xamzcredential", "xamzsecuritytoken",
    }
)  # fmt: skip
_SECRET_SUFFIXES: Final = ("password", "secret", "token", "apikey", "signature", "credential")

# Well-known key formats (OpenAI, Anthropic, Stripe, Slack, GitHub, GitLab, AWS, Google, HF, Groq).
_KEY_PREFIXES: Final = (
    "sk-", "sk_", "rk_", "pk_live", "pk_test", "xoxb-", "xoxp-", "xoxa-", "ghp_", "gho_",
    "ghu_", "ghs_", "github_pat_", "glpat-", "AKIA", "ASIA", "AIza", "hf_", "gsk_", "Bearer ",
)  # fmt: skip
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ALNUM_RUN: Final = re.compile(r"[A-Za-z0-9]{20,}")


def _normal(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def is_secret_name(name: str) -> bool:
    """Whether a key or query-parameter name says its value is a credential."""
    normal = _normal(name)
    return normal in _SECRET_NAMES or normal.endswith(_SECRET_SUFFIXES)


def _class_of(char: str) -> int:
    return 0 if char.isdigit() else 1 if char.islower() else 2


def _random_looking(run: str) -> bool:
    # A generated key mixes digits and letters, or switches character class at most positions;
    # a word or a CamelCase name does neither.
    digits = sum(char.isdigit() for char in run)
    letters = len(run) - digits
    if digits >= 4 and letters >= 4:
        return True
    switches = sum(_class_of(a) != _class_of(b) for a, b in itertools.pairwise(run))
    return switches * 5 >= len(run) * 2


def looks_like_secret(text: str) -> bool:
    """Whether ``text`` looks like a key or token: a known key prefix, or a long random run."""
    stripped = text.strip()
    if stripped.startswith(_KEY_PREFIXES):
        return True
    return any(_random_looking(match.group()) for match in _ALNUM_RUN.finditer(stripped))


def is_env_var_name(text: str) -> bool:
    """Whether ``text`` can be an environment variable's name and does not look like a key."""
    return bool(_ENV_NAME.fullmatch(text)) and not looks_like_secret(text)


def _mask_params(text: str) -> str:
    """``a=1&api-key=x&sk-abc`` -> ``a=1&api-key=***&***`` (order and spelling kept)."""
    parts = re.split(r"([&;])", text)
    for index in range(0, len(parts), 2):
        name, equals, value = parts[index].partition("=")
        if equals and value and is_secret_name(_unquote(name)):
            parts[index] = f"{name}={MASK}"
        elif (equals and looks_like_secret(_unquote(value))) or (
            not equals and looks_like_secret(_unquote(name))
        ):
            parts[index] = f"{name}={MASK}" if equals else MASK
    return "".join(parts)


def _unquote(text: str) -> str:
    from urllib.parse import unquote  # noqa: PLC0415 - only for URLs with a query

    return unquote(text)


def mask_url(url: str) -> str:
    """``url`` with its credentials replaced by ``***``; everything else kept as written.

    Masks the userinfo (``user:password@`` -> ``user:***@``, ``token@`` -> ``***@``), and in the
    query and fragment every credential-like parameter (``password``, ``api-key``, ``key``,
    ``token``, ``sig``, ``secret``, ... in any case, ``-`` or ``_`` spelling) and every value that
    looks like a key. Never raises; a string that is not a URL is masked the same way.
    """
    if not isinstance(url, str):  # a caller's mistake must not become a crash while masking
        return MASK
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    # The userinfo ends at the last "@" before the path, so a "?" or "#" in a password
    # (written unencoded) is still part of the password; failing that, at the last "@" before
    # the query, so a "/" in a password is too (a rare "@" in a path is masked as well).
    authority_end = rest.find("/")
    authority = rest if authority_end < 0 else rest[:authority_end]
    if "@" not in authority:
        authority = re.split(r"[?#]", rest, maxsplit=1)[0]
    userinfo = ""
    if "@" in authority:
        userinfo, _, _ = authority.rpartition("@")
        rest = rest[len(userinfo) + 1 :]
        user, colon, _ = userinfo.partition(":")
        userinfo = (f"{user}:{MASK}" if colon else MASK) + "@"
    rest, hash_sign, fragment = rest.partition("#")
    rest, question, query = rest.partition("?")
    masked = (scheme + sep if sep else "") + userinfo + rest
    if question:
        masked += "?" + _mask_params(query)
    if hash_sign:
        masked += "#" + _mask_params(fragment)
    return masked


def redact(value: object, *, name: str | None = None, depth: int = 4) -> object:
    """A copy of ``value`` fit to show: secrets replaced by ``***``, nesting cut at ``depth``.

    A value under a credential-like ``name`` is masked whole; strings that look like keys are
    masked; strings that may hold a URL's credentials (``@``, ``?``, ``#``) go
    through :func:`mask_url`; tables and arrays are walked
    (their keys are names too). Deeper structures become ``...``.
    """
    if name is not None and is_secret_name(name.rsplit(".", 1)[-1]):
        return MASK
    if isinstance(value, str):
        if looks_like_secret(value):
            return MASK
        return mask_url(value) if any(mark in value for mark in "@?#") else value
    if isinstance(value, Mapping | list | tuple) and depth <= 0:
        return ...
    if isinstance(value, Mapping):
        return {key: redact(item, name=str(key), depth=depth - 1) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(redact(item, depth=depth - 1) for item in value)
    return value


class _BriefRepr(reprlib.Repr):
    """``reprlib`` with short limits, and a huge integer described instead of converted."""

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 3
        self.maxlist = self.maxtuple = self.maxdict = self.maxset = 6
        self.maxstring = 80
        self.maxlong = 40
        self.maxother = 80

    def repr_int(self, x: int, level: int) -> str:
        if x.bit_length() > 128:  # also far below the interpreter's int-to-str limit
            digits = math.floor(x.bit_length() * math.log10(2)) + 1
            return f"<{'negative ' if x < 0 else ''}integer of about {digits} digits>"
        return super().repr_int(x, level)


_BRIEF: Final = _BriefRepr()


def brief_repr(value: object) -> str:
    """A ``repr`` of bounded length and depth that never raises."""
    try:
        return _BRIEF.repr(value)
    except Exception:  # noqa: BLE001 - an odd object's own __repr__ must not break an error
        return f"<{type(value).__name__}>"


def describe_value(value: object, *, name: str | None = None) -> str:
    """How a config value is shown in a message: :func:`redact`, then :func:`brief_repr`."""
    return brief_repr(redact(value, name=name))
