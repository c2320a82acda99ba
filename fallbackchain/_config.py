"""Configuration: frozen dataclasses, a strict TOML loader, and the resolved plan of routes.

A :class:`ChainConfig` can be built in code (every field has the production default) or loaded
with :func:`load_config`. Each field declares its type and limits beside it (``Annotated``
constraints, ``Literal`` choices); pydantic checks them all in one pass, whether the config
came from a file or from code, and every problem found becomes one line of a single
:class:`~fallbackchain.ConfigError` naming the file, the line where known, the key and the
value (credentials masked). Unknown sections and keys are refused with a "did you mean".
The API key itself is never in the file: ``api_key_env`` names the environment variable.

:meth:`ChainConfig.routes` is the one place that resolves which routes (provider + model) a
chain tries, in order, and with which settings.
"""

from __future__ import annotations

import codecs
import contextvars
import dataclasses
import difflib
import functools
import os
import re
import tomllib
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import annotated_types
from pydantic import AfterValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from ._errors import ConfigError
from ._redact import MASK, is_env_var_name, redact

__all__ = [
    "PRIMARY_ROUTE",
    "BreakerConfig",
    "CacheConfig",
    "ChainConfig",
    "FallbackConfig",
    "OpenAIConfig",
    "RetryConfig",
    "RouteConfig",
    "config_from_mapping",
    "load_config",
]

PRIMARY_ROUTE: Final = "primary"
"""The primary route's name (``[openai]``); no fallback may take it."""

_RESERVED_NAMES: Final = frozenset({PRIMARY_ROUTE, "stream", "completion", "cache"})

# Unknown keys are errors; an instance built in code is checked like a parsed file.
_TABLE: Final = ConfigDict(extra="forbid", revalidate_instances="always")


# -- field checks that are more than a type and a bound ---------------------------------------


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "must not be empty")
    return value


def _http_url(value: str) -> str:
    if not value.startswith(("http://", "https://")):
        raise PydanticCustomError("url_scheme", "must start with http:// or https://")
    return value


def _http_url_or_unset(value: str) -> str:
    return value and _http_url(value)


def _redis_url(value: str) -> str:
    if not value.startswith(("redis://", "rediss://", "unix://")):
        raise PydanticCustomError("url_scheme", "must start with redis://, rediss:// or unix://")
    return value


def _env_name(value: str) -> str:
    if not is_env_var_name(value):
        # The value may be the key itself, pasted by mistake: it is never shown.
        raise PydanticCustomError(
            "env_name",
            "must be the NAME of the environment variable holding the API key (letters, "
            "digits and _, not starting with a digit), not the key itself; the value looks "
            "like a key, so it is not shown",
        )
    return value


def _env_name_or_unset(value: str) -> str:
    return value and _env_name(value)


# -- field types: each with its limits --------------------------------------------------------

Text = Annotated[str, Strict(), AfterValidator(_not_blank)]
Flag = Annotated[bool, Strict()]
HttpUrl = Annotated[str, Strict(), AfterValidator(_http_url)]
RedisUrl = Annotated[str, Strict(), AfterValidator(_redis_url)]
EnvName = Annotated[str, Strict(), AfterValidator(_env_name)]
Timeout = Annotated[float, Strict(), Field(gt=0, le=3600, allow_inf_nan=False)]
"""Seconds an upstream wait may take: > 0 and at most an hour."""
Delay = Annotated[float, Strict(), Field(ge=0, le=3600, allow_inf_nan=False)]
"""Seconds of a backoff or hedge wait: 0 to an hour."""
Attempts = Annotated[int, Strict(), Field(ge=1, le=100)]
ContextWindow = Annotated[int, Strict(), Field(ge=0, le=100_000_000)]
"""Tokens, 0 = unknown."""


def _masked_repr(self: object) -> str:
    """The dataclass repr, with URLs and anything that looks like a key masked."""
    shown = []
    for item in dataclasses.fields(self):  # type: ignore[arg-type]
        if item.repr:
            value = getattr(self, item.name)
            if isinstance(value, str):
                value = redact(value, name=item.name)
            shown.append(f"{item.name}={value!r}")
    return f"{type(self).__name__}({', '.join(shown)})"


@dataclass(frozen=True, slots=True, repr=False)
class OpenAIConfig:
    """Where and how to call the API (the primary route)."""

    __pydantic_config__ = _TABLE

    base_url: HttpUrl = "https://api.openai.com/v1"
    api_key_env: EnvName = "OPENAI_API_KEY"
    model: Text = "gpt-4o-mini"
    timeout: Timeout = 30.0
    first_token_timeout: Timeout = 10.0
    idle_timeout: Timeout = 10.0
    context_window: ContextWindow = 0
    """Context window in tokens if known (0 = unknown); used to route context-length errors."""
    stream_usage: Flag = True
    """Ask a streamed answer for its token usage (``stream_options``); false for providers
    that reject the parameter."""
    complete_streams: Flag = True
    """``complete()`` streams first (a silent model is noticed after ``first_token_timeout``);
    false: it asks the primary for a whole completion first, the stream tier behind it (about
    the raw SDK's cost, but silence is noticed only after ``timeout``)."""

    __repr__ = _masked_repr

    def api_key(self, *, file: str | None = None) -> str:
        """Read the API key from the environment; a clear ConfigError if it is unset."""
        key = os.environ.get(self.api_key_env)
        if not key:
            # An OpenAIConfig used on its own is unchecked: its "name" may be a pasted key.
            name = self.api_key_env if is_env_var_name(self.api_key_env) else MASK
            raise ConfigError(
                f"environment variable {name} is not set (it must hold the API key)",
                file=file,
                key="openai.api_key_env",
            )
        return key


@dataclass(frozen=True, slots=True, repr=False)
class RetryConfig:
    """Retries on a route, the overall live deadline, and the optional hedge."""

    __pydantic_config__ = _TABLE

    max_attempts: Attempts = 3
    base_delay: Delay = 0.5
    max_delay: Delay = 8.0
    max_retry_after: Annotated[float, Strict(), Field(ge=0, le=86400, allow_inf_nan=False)] = 30.0
    deadline: Annotated[float, Strict(), Field(gt=0, le=86400, allow_inf_nan=False)] = 60.0
    hedge_after: Delay | None = None
    """Start the next route in parallel when this one has shown no content after this many
    seconds; ``None`` or ``0``: never (the default)."""

    __repr__ = _masked_repr


@dataclass(frozen=True, slots=True, repr=False)
class BreakerConfig:
    """Per-tier circuit breaker thresholds, and where their state lives."""

    __pydantic_config__ = _TABLE

    fail_max: Annotated[int, Strict(), Field(ge=1, le=1_000_000)] = 5
    reset_timeout: Annotated[float, Strict(), Field(gt=0, le=86400, allow_inf_nan=False)] = 30.0
    storage: Literal["memory", "redis"] = "memory"
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0"
    namespace: Text = "fallbackchain"

    __repr__ = _masked_repr


@dataclass(frozen=True, slots=True, repr=False)
class CacheConfig:
    """The fallback cache: a memory layer in front of a disk cache."""

    __pydantic_config__ = _TABLE

    directory: Text = ".fallbackchain-cache"
    ttl: Annotated[float, Strict(), Field(gt=0, le=10 * 365 * 86400, allow_inf_nan=False)] = (
        604800.0
    )
    memory_items: Annotated[int, Strict(), Field(ge=0, le=10_000_000)] = 1024
    enabled: Flag = True
    size_limit: Annotated[int, Strict(), Field(ge=1 << 20, le=1 << 44)] = 1 << 30
    backend: Literal["disk", "redis"] = "disk"
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0"

    __repr__ = _masked_repr


@dataclass(frozen=True, slots=True, repr=False)
class FallbackConfig:
    """One more route (model or provider), tried after the primary and before the cache.

    Unset values take the primary's: empty strings and ``fail_max``/``reset_timeout`` of 0
    (``[openai]``, ``[breaker]``), and ``None`` for the per-route settings (``[openai]``,
    ``[retry]``). ``context_window`` is this model's own (0 = unknown). ``hedge_after = 0``
    turns hedging off for this route.
    """

    __pydantic_config__ = _TABLE

    name: Text
    model: Text
    base_url: Annotated[str, Strict(), AfterValidator(_http_url_or_unset)] = ""
    api_key_env: Annotated[str, Strict(), AfterValidator(_env_name_or_unset)] = ""
    stream: Flag = True
    context_window: ContextWindow = 0
    fail_max: Annotated[int, Strict(), Field(ge=0, le=1_000_000)] = 0
    reset_timeout: Annotated[float, Strict(), Field(ge=0, le=86400, allow_inf_nan=False)] = 0.0
    timeout: Timeout | None = None
    first_token_timeout: Timeout | None = None
    idle_timeout: Timeout | None = None
    max_attempts: Attempts | None = None
    stream_usage: Flag | None = None
    hedge_after: Delay | None = None

    __repr__ = _masked_repr

    def resolved(self, primary: OpenAIConfig) -> OpenAIConfig:
        """The ``[openai]`` settings this fallback runs with (its overrides applied)."""
        return dataclasses.replace(
            primary,
            base_url=self.base_url or primary.base_url,
            api_key_env=self.api_key_env or primary.api_key_env,
            model=self.model,
            context_window=self.context_window,
            timeout=_first(self.timeout, primary.timeout),
            first_token_timeout=_first(self.first_token_timeout, primary.first_token_timeout),
            idle_timeout=_first(self.idle_timeout, primary.idle_timeout),
            stream_usage=_first(self.stream_usage, primary.stream_usage),
        )


_T = TypeVar("_T")


def _first(override: _T | None, default: _T) -> _T:
    return default if override is None else override


@dataclass(frozen=True, slots=True)
class RouteConfig:
    """One route (a provider + model) with every setting resolved: what a chain tries, in order.

    Built by :meth:`ChainConfig.routes`, never partially: each value is the route's own
    override, else the global one. ``hedge_after`` is ``None`` when this route never hedges.
    """

    name: str
    """``"primary"`` for ``[openai]``, else the fallback's name (also its breaker's name)."""
    model: str
    """A fallback's model; for the primary, the default (a call's ``model=`` replaces it)."""
    base_url: str
    api_key_env: str
    streaming: bool
    """Whether this route has a stream tier."""
    timeout: float
    first_token_timeout: float
    idle_timeout: float
    max_attempts: int
    hedge_after: float | None
    stream_usage: bool
    context_window: int
    fail_max: int
    reset_timeout: float

    __repr__ = _masked_repr

    @property
    def tiers(self) -> tuple[tuple[str, bool], ...]:
        """The live tiers of this route in the order tried: ``(tier name, streams)``.

        The tier name is also the breaker's name: ``"stream"`` then ``"completion"`` for the
        primary, the fallback's name for a fallback (one tier, streamed or not).
        """
        if self.name == PRIMARY_ROUTE:
            stream = (("stream", True),) if self.streaming else ()
            return (*stream, ("completion", False))
        return ((self.name, self.streaming),)


# -- checks across fields (pydantic reports them with the others, in the same pass) -----------


def _cross_field(message: str, where: tuple[str | int, ...], value: object) -> PydanticCustomError:
    return PydanticCustomError("cross_field", message, {"where": where, "value": value})


def _delays_in_order(retry: RetryConfig) -> RetryConfig:
    if retry.base_delay > retry.max_delay:
        raise _cross_field("must not exceed retry.max_delay", ("base_delay",), retry.base_delay)
    return retry


def _distinct_names(fallbacks: tuple[FallbackConfig, ...]) -> tuple[FallbackConfig, ...]:
    seen: set[str] = set()
    for index, entry in enumerate(fallbacks):
        if entry.name in _RESERVED_NAMES or entry.name in seen:
            raise _cross_field(
                "must be unique and not one of 'primary', 'stream', 'completion', 'cache'",
                (index, "name"),
                entry.name,
            )
        seen.add(entry.name)
    return fallbacks


# Set while pydantic builds a ChainConfig from values it has just checked.
_BUILDING: Final = contextvars.ContextVar("fallbackchain_config_building", default=False)


@dataclass(frozen=True, slots=True, repr=False)
class ChainConfig:
    """Everything a chain needs. Build in code or with :func:`load_config`; checked either way."""

    __pydantic_config__ = _TABLE

    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    retry: Annotated[RetryConfig, AfterValidator(_delays_in_order)] = field(
        default_factory=RetryConfig
    )
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    fallbacks: Annotated[tuple[FallbackConfig, ...], AfterValidator(_distinct_names)] = ()
    source: str | None = field(default=None, compare=False)
    """The file this config was loaded from, if any (used in error messages)."""

    __repr__ = _masked_repr

    def __post_init__(self) -> None:
        if _BUILDING.get():
            return  # pydantic is building this instance from values it has checked
        checked = _check(self, file=self.source)
        for item in dataclasses.fields(self):  # the checked values (a list becomes a tuple)
            object.__setattr__(self, item.name, getattr(checked, item.name))

    def routes(self) -> tuple[RouteConfig, ...]:
        """The routes a chain tries, primary first, then each fallback in order, resolved."""
        openai, retry, breaker = self.openai, self.retry, self.breaker
        plan = [
            RouteConfig(
                name=PRIMARY_ROUTE,
                model=openai.model,
                base_url=openai.base_url,
                api_key_env=openai.api_key_env,
                streaming=True,
                timeout=openai.timeout,
                first_token_timeout=openai.first_token_timeout,
                idle_timeout=openai.idle_timeout,
                max_attempts=retry.max_attempts,
                hedge_after=retry.hedge_after or None,
                stream_usage=openai.stream_usage,
                context_window=openai.context_window,
                fail_max=breaker.fail_max,
                reset_timeout=breaker.reset_timeout,
            )
        ]
        for entry in self.fallbacks:
            resolved = entry.resolved(openai)
            plan.append(
                RouteConfig(
                    name=entry.name,
                    model=entry.model,
                    base_url=resolved.base_url,
                    api_key_env=resolved.api_key_env,
                    streaming=entry.stream,
                    timeout=resolved.timeout,
                    first_token_timeout=resolved.first_token_timeout,
                    idle_timeout=resolved.idle_timeout,
                    max_attempts=_first(entry.max_attempts, retry.max_attempts),
                    hedge_after=_first(entry.hedge_after, retry.hedge_after) or None,
                    stream_usage=resolved.stream_usage,
                    context_window=entry.context_window,
                    fail_max=entry.fail_max or breaker.fail_max,
                    reset_timeout=entry.reset_timeout or breaker.reset_timeout,
                )
            )
        return tuple(plan)


_SECTIONS: Final[dict[str, type[Any]]] = {
    "openai": OpenAIConfig,
    "retry": RetryConfig,
    "breaker": BreakerConfig,
    "cache": CacheConfig,
    "fallbacks": FallbackConfig,
}


# -- validation, and pydantic's errors as ConfigErrors ----------------------------------------


@functools.cache
def _adapter() -> TypeAdapter[ChainConfig]:
    return TypeAdapter(ChainConfig)


def _check(
    data: object, *, file: str | None, lines: Mapping[str, int] | None = None
) -> ChainConfig:
    """``data`` (a mapping of sections, or a ChainConfig) checked: a new ChainConfig.

    Raises one ConfigError listing every problem.
    """
    token = _BUILDING.set(True)
    try:
        return _adapter().validate_python(data)
    except ValidationError as exc:
        problems = [_problem(error, file, lines or {}) for error in exc.errors(include_url=False)]
    except RecursionError:  # pydantic guards its own recursion; this is belt and braces
        problems = [ConfigError("values are nested too deeply", file=file)]
    finally:
        _BUILDING.reset(token)
    raise ConfigError.combine(problems) from None  # the cause would show unmasked values


def _dotted(loc: Sequence[str | int]) -> str:
    """``("fallbacks", 0, "name")`` -> ``"fallbacks[0].name"``."""
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def _section_of(loc: Sequence[str | int]) -> type[Any] | None:
    return _SECTIONS.get(str(loc[0])) if loc else None


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


def _message(kind: str, loc: Sequence[str | int], value: object, error: Any) -> str:
    ctx = error.get("ctx") or {}
    if kind in ("unexpected_keyword_argument", "extra_forbidden"):
        return _unknown(loc)
    if kind == "missing":
        return "is required"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        name = str(loc[-1])
        limits = _limits(_section_of(loc), name) if len(loc) >= 2 else None
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


def _unknown(loc: Sequence[str | int]) -> str:
    name = str(loc[-1])
    if len(loc) == 1:
        known = sorted(_SECTIONS)
        hint = difflib.get_close_matches(name, known, n=1)
        guess = f"; did you mean [{hint[0]}]?" if hint else ""
        return f"unknown section [{name}] (known: {', '.join(known)}){guess}"
    section = _section_of(loc)
    known = sorted(f.name for f in dataclasses.fields(section)) if section else []
    label = "[[fallbacks]]" if loc[0] == "fallbacks" else f"[{loc[0]}]"
    hint = difflib.get_close_matches(name, known, n=1)
    guess = f"; did you mean {hint[0]!r}?" if hint else ""
    return f"unknown key{guess} (known in {label}: {', '.join(known)})"


def _problem(error: Any, file: str | None, lines: Mapping[str, int]) -> ConfigError:
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
    return ConfigError(
        _message(kind, loc, value, error), file=file, key=key, value=value, line=_line(lines, loc)
    )


def _line(lines: Mapping[str, int], loc: Sequence[str | int]) -> int | None:
    """The line of the key, else of the nearest enclosing table that is in the file."""
    for end in range(len(loc), 0, -1):
        line = lines.get(_dotted(loc[:end]))
        if line is not None:
            return line
    return None


# -- reading a file ---------------------------------------------------------------------------

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
        problems.append(ConfigError(_unknown(["source"]), file=file, key="source"))
    sections["source"] = file
    try:
        config = _check(sections, file=file, lines=lines)
    except ConfigError as exc:
        problems.extend(exc.errors)
    if problems:  # in file order; those without a known line last
        problems.sort(key=lambda problem: problem.line or len(problems) + 1 << 32)
        raise ConfigError.combine(problems)
    return config
