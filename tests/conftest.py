"""Shared fixtures: a fake clock/sleep pair, the fault server, and chain factories."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fallbackchain import ChainConfig, load_config

ROOT = Path(__file__).resolve().parent.parent


class FakeClock:
    """A clock that only moves when told; ``sleep`` advances it and records the delay."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def async_sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def make_config(tmp_path: Path, base_url: str = "http://127.0.0.1:9/v1", **overrides: Any) -> ChainConfig:
    """The test profile, pointed at ``base_url`` with the cache in ``tmp_path``.

    ``overrides`` are ``section__key=value`` pairs, e.g. ``retry__max_attempts=1``.
    """
    base = load_config(ROOT / "config" / "test.toml")
    sections: dict[str, dict[str, Any]] = {"openai": {"base_url": base_url},
                                           "cache": {"directory": str(tmp_path / "cache")}}
    for name, value in overrides.items():
        section, key = name.split("__", 1)
        sections.setdefault(section, {})[key] = value
    changes = {name: dataclasses.replace(getattr(base, name), **vals) for name, vals in sections.items()}
    return dataclasses.replace(base, **changes, source=None)


@pytest.fixture
def config_factory(tmp_path: Path) -> Iterator[Any]:
    def factory(base_url: str = "http://127.0.0.1:9/v1", **overrides: Any) -> ChainConfig:
        return make_config(tmp_path, base_url, **overrides)

    yield factory
