"""Configuration: frozen dataclasses, each field checked, and the resolved plan of routes.

A :class:`ChainConfig` can be built in code (every field has the production default) or loaded
with :func:`~fallbackchain.load_config` (``_config_file``). Each field declares its type and
limits beside it (``Annotated`` constraints, ``Literal`` choices); pydantic checks them all in
one pass, whether the config came from a file or from code, and every problem found becomes
one line of a single :class:`~fallbackchain.ConfigError` naming the file, the line where
known, the key and the value (credentials masked; see ``_config_messages``). Unknown
sections and keys are refused with a "did you mean". The API key itself is never in the
file: ``api_key_env`` names the environment variable.

:meth:`ChainConfig.routes` is the one place that resolves which routes (provider + model) a
chain tries, in order, and with which settings.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Final, Literal, TypeVar

from pydantic import AfterValidator, ConfigDict, Field, Strict, TypeAdapter, ValidationError
from pydantic_core import PydanticCustomError

from ._errors import ConfigError
from ._redact import MASK, is_env_var_name, redact

__all__ = [
    "PRIMARY_ROUTE",
    "SECTIONS",
    "BreakerConfig",
    "CacheConfig",
    "ChainConfig",
    "FallbackConfig",
    "OpenAIConfig",
    "RetryConfig",
    "RouteConfig",
    "check_config",
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
        checked = check_config(self, file=self.source)
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


SECTIONS: Final[dict[str, type[Any]]] = {
    "openai": OpenAIConfig,
    "retry": RetryConfig,
    "breaker": BreakerConfig,
    "cache": CacheConfig,
    "fallbacks": FallbackConfig,
}


# -- validation ------------------------------------------------------------------------------


@functools.cache
def _adapter() -> TypeAdapter[ChainConfig]:
    return TypeAdapter(ChainConfig)


def check_config(
    data: object, *, file: str | None, lines: Mapping[str, int] | None = None
) -> ChainConfig:
    """``data`` (a mapping of sections, or a ChainConfig) checked: a new ChainConfig.

    Raises one ConfigError listing every problem.
    """
    token = _BUILDING.set(True)
    try:
        return _adapter().validate_python(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        from ._config_messages import problem  # noqa: PLC0415 - only for a bad config

        problems = [problem(error, file, lines or {}, SECTIONS) for error in errors]
    except RecursionError:  # pydantic guards its own recursion; this is belt and braces
        problems = [ConfigError("values are nested too deeply", file=file)]
    finally:
        _BUILDING.reset(token)
    raise ConfigError.combine(problems) from None  # the cause would show unmasked values
