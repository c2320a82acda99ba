"""Configuration: frozen dataclasses, and a strict TOML loader.

A :class:`ChainConfig` can be built in code (every field has the production default) or loaded
with :func:`load_config`. Loading rejects unknown sections and keys, wrong types and
out-of-range values with a :class:`~fallbackchain.ConfigError` naming the file, the key and the
value. The API key itself is never in the file: ``api_key_env`` names the environment variable.
"""

from __future__ import annotations

import dataclasses
import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._errors import ConfigError

__all__ = [
    "BreakerConfig",
    "CacheConfig",
    "ChainConfig",
    "FallbackConfig",
    "OpenAIConfig",
    "RetryConfig",
    "load_config",
]


@dataclass(frozen=True, slots=True)
class OpenAIConfig:
    """Where and how to call the API."""

    base_url: str = "https://api.openai.com/v1"
    api_key_env: str = "OPENAI_API_KEY"
    model: str = "gpt-4o-mini"
    timeout: float = 30.0
    first_token_timeout: float = 10.0
    idle_timeout: float = 10.0
    context_window: int = 0
    """Context window in tokens if known (0 = unknown); used to route context-length errors."""

    def api_key(self, *, file: str | None = None) -> str:
        """Read the API key from the environment; a clear ConfigError if it is unset."""
        key = os.environ.get(self.api_key_env)
        if not key:
            raise ConfigError(
                f"environment variable {self.api_key_env} is not set (it must hold the API key)",
                file=file,
                key="openai.api_key_env",
            )
        return key


@dataclass(frozen=True, slots=True)
class RetryConfig:
    """Retries within one live tier, and the overall live deadline."""

    max_attempts: int = 3
    base_delay: float = 0.5
    max_delay: float = 8.0
    max_retry_after: float = 30.0
    deadline: float = 60.0


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """Per-tier circuit breaker thresholds."""

    fail_max: int = 5
    reset_timeout: float = 30.0
    storage: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    namespace: str = "fallbackchain"


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """The fallback cache: a memory layer in front of a disk cache."""

    directory: str = ".fallbackchain-cache"
    ttl: float = 604800.0
    memory_items: int = 1024
    enabled: bool = True
    size_limit: int = 1 << 30
    backend: str = "disk"
    redis_url: str = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class FallbackConfig:
    """One more model or provider, tried after the primary's live tiers and before the cache.

    Empty strings and zeros mean "same as the primary" (``[openai]`` / ``[breaker]``).
    """

    name: str = ""
    model: str = ""
    base_url: str = ""
    api_key_env: str = ""
    stream: bool = True
    context_window: int = 0
    fail_max: int = 0
    reset_timeout: float = 0.0

    def resolved(self, primary: OpenAIConfig) -> OpenAIConfig:
        """The ``[openai]`` settings this fallback runs with (its overrides applied)."""
        return dataclasses.replace(
            primary,
            base_url=self.base_url or primary.base_url,
            api_key_env=self.api_key_env or primary.api_key_env,
            model=self.model,
            context_window=self.context_window,
        )


_RESERVED_NAMES = frozenset({"stream", "completion", "cache"})


@dataclass(frozen=True, slots=True)
class ChainConfig:
    """Everything a chain needs. Build in code or with :func:`load_config`."""

    openai: OpenAIConfig = field(default_factory=OpenAIConfig)
    retry: RetryConfig = field(default_factory=RetryConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    fallbacks: tuple[FallbackConfig, ...] = ()
    source: str | None = field(default=None, compare=False)
    """The file this config was loaded from, if any (used in error messages)."""

    def __post_init__(self) -> None:
        for section in (self.openai, self.retry, self.breaker, self.cache):
            _validate_section(section, file=self.source)
        if not isinstance(self.fallbacks, tuple):
            object.__setattr__(self, "fallbacks", tuple(self.fallbacks))
        seen: set[str] = set()
        for index, entry in enumerate(self.fallbacks):
            prefix = f"fallbacks[{index}]"
            if not isinstance(entry, FallbackConfig):
                raise ConfigError("must be a table", file=self.source, key=prefix, value=entry)
            _validate_section(entry, file=self.source, prefix=prefix)
            for required in ("name", "model"):
                if not getattr(entry, required).strip():
                    raise ConfigError("is required", file=self.source, key=f"{prefix}.{required}")
            if entry.name in _RESERVED_NAMES or entry.name in seen:
                raise ConfigError(
                    "must be unique and not one of 'stream', 'completion', 'cache'",
                    file=self.source,
                    key=f"{prefix}.name",
                    value=entry.name,
                )
            seen.add(entry.name)
        if self.retry.base_delay > self.retry.max_delay:
            raise ConfigError(
                "must not exceed retry.max_delay",
                file=self.source,
                key="retry.base_delay",
                value=self.retry.base_delay,
            )


_SECTIONS: dict[str, type[Any]] = {
    "openai": OpenAIConfig,
    "retry": RetryConfig,
    "breaker": BreakerConfig,
    "cache": CacheConfig,
    "fallbacks": FallbackConfig,
}

# (minimum, maximum, minimum is exclusive)
_RANGES: dict[str, tuple[float, float, bool]] = {
    "openai.timeout": (0.0, 3600.0, True),
    "openai.first_token_timeout": (0.0, 3600.0, True),
    "openai.idle_timeout": (0.0, 3600.0, True),
    "retry.max_attempts": (1, 100, False),
    "retry.base_delay": (0.0, 3600.0, False),
    "retry.max_delay": (0.0, 3600.0, False),
    "retry.max_retry_after": (0.0, 86400.0, False),
    "retry.deadline": (0.0, 86400.0, True),
    "breaker.fail_max": (1, 1_000_000, False),
    "breaker.reset_timeout": (0.0, 86400.0, True),
    "cache.ttl": (0.0, 10 * 365 * 86400.0, True),
    "cache.memory_items": (0, 10_000_000, False),
    "cache.size_limit": (1 << 20, 1 << 44, False),
    "openai.context_window": (0, 100_000_000, False),
    "fallbacks.context_window": (0, 100_000_000, False),
    "fallbacks.fail_max": (0, 1_000_000, False),
    "fallbacks.reset_timeout": (0.0, 86400.0, False),
}

_NONEMPTY = {
    "openai.base_url",
    "openai.api_key_env",
    "openai.model",
    "cache.directory",
    "breaker.namespace",
}

_CHOICES: dict[str, tuple[str, ...]] = {
    "breaker.storage": ("memory", "redis"),
    "cache.backend": ("disk", "redis"),
}

_REDIS_URLS = {"breaker.redis_url", "cache.redis_url"}


def _section_name(section: object) -> str:
    for name, cls in _SECTIONS.items():
        if isinstance(section, cls):
            return name
    raise AssertionError(section)  # pragma: no cover


def _validate_section(section: object, *, file: str | None, prefix: str | None = None) -> None:
    name = _section_name(section)
    for f in dataclasses.fields(section):  # type: ignore[arg-type]
        rule = f"{name}.{f.name}"
        key = f"{prefix or name}.{f.name}"
        value = getattr(section, f.name)
        expected = f.type if isinstance(f.type, type) else _TYPES[f.type]
        _check_type(value, expected, file=file, key=key)
        if rule in _RANGES:
            lo, hi, exclusive = _RANGES[rule]
            if not math.isfinite(value) or value < lo or value > hi or (exclusive and value == lo):
                bound = f"> {lo}" if exclusive else f">= {lo}"
                raise ConfigError(f"must be {bound} and <= {hi}", file=file, key=key, value=value)
        if rule in _NONEMPTY and not value.strip():
            raise ConfigError("must not be empty", file=file, key=key, value=value)
        if rule in _CHOICES and value not in _CHOICES[rule]:
            raise ConfigError(
                f"must be one of {', '.join(map(repr, _CHOICES[rule]))}",
                file=file,
                key=key,
                value=value,
            )
        if rule in _REDIS_URLS and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ConfigError(
                "must start with redis://, rediss:// or unix://",
                file=file,
                key=key,
                value=_mask_url(value),
            )
    if name in ("openai", "fallbacks"):
        url = section.base_url  # type: ignore[attr-defined]
        if (url or name == "openai") and not url.startswith(("http://", "https://")):
            raise ConfigError(
                "must start with http:// or https://",
                file=file,
                key=f"{prefix or name}.base_url",
                value=url,
            )


def _mask_url(url: str) -> str:
    """Hide a password in a URL (``redis://user:secret@host`` -> ``redis://user:***@host``)."""
    scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return url
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


_TYPES: dict[str, type] = {"str": str, "float": float, "int": int, "bool": bool}


def _check_type(value: object, expected: type, *, file: str | None, key: str) -> None:
    if expected is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif expected is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, expected)
    if not ok:
        raise ConfigError(
            f"must be of type {expected.__name__}, not {type(value).__name__}",
            file=file,
            key=key,
            value=value,
        )


def load_config(path: str | os.PathLike[str]) -> ChainConfig:
    """Load and validate a TOML config file.

    Missing sections and keys take their defaults. Raises :class:`ConfigError` (naming the
    file, and the key and value where one is at fault) for a missing or unreadable file,
    invalid TOML, an unknown section or key, a wrong type or an out-of-range value.
    """
    file = str(path)
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise ConfigError("config file not found", file=file) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file: {exc.strerror}", file=file) from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError("config file is not UTF-8 text", file=file) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=file) from exc
    return config_from_mapping(data, file=file)


def config_from_mapping(data: dict[str, Any], *, file: str | None = None) -> ChainConfig:
    """Build a :class:`ChainConfig` from parsed TOML (a dict of sections), validating it."""
    sections: dict[str, Any] = {}
    for name, body in data.items():
        cls = _SECTIONS.get(name)
        if cls is None:
            raise ConfigError(
                f"unknown section [{name}] (known: {', '.join(sorted(_SECTIONS))})", file=file
            )
        if name == "fallbacks":
            if not isinstance(body, list):
                raise ConfigError(
                    "must be an array of tables ([[fallbacks]])", file=file, key=name, value=body
                )
            sections[name] = tuple(
                _build(cls, entry, file=file, where=f"fallbacks[{i}]", label="[[fallbacks]]")
                for i, entry in enumerate(body)
            )
        else:
            sections[name] = _build(cls, body, file=file, where=name, label=f"[{name}]")
    return ChainConfig(**sections, source=file)


def _build(cls: type[Any], body: object, *, file: str | None, where: str, label: str) -> Any:
    if not isinstance(body, dict):
        raise ConfigError("must be a table", file=file, key=where, value=body)
    known = {f.name for f in dataclasses.fields(cls)}
    for key, value in body.items():
        if key not in known:
            raise ConfigError(
                f"unknown key (known in {label}: {', '.join(sorted(known))})",
                file=file,
                key=f"{where}.{key}",
                value=value,
            )
        expected = _field_type(cls, key)
        expected_type = expected if isinstance(expected, type) else _TYPES[str(expected)]
        _check_type(value, expected_type, file=file, key=f"{where}.{key}")
    converted = {
        k: float(v) if _TYPES.get(str(_field_type(cls, k))) is float else v for k, v in body.items()
    }
    return cls(**converted)


def _field_type(cls: type[Any], name: str) -> object:
    for f in dataclasses.fields(cls):
        if f.name == name:
            return f.type
    raise KeyError(name)  # pragma: no cover
