"""Shared fixtures: a fake clock/sleep pair, the fault server, and chain factories.

Also two session-wide speedups that change no behaviour under test (see ``pytest_configure``):
temporary directories on tmpfs, and a one-certificate CA bundle for the SDK's TLS context.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from fallbackchain import ChainConfig, load_config

ROOT = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------------------------------
# Session setup: the ``slow`` marker and two speedups
# --------------------------------------------------------------------------------------------

_TMPFS: Final = Path("/dev/shm")
_PEM_BLOCK: Final = re.compile(
    r"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----\r?\n?", re.DOTALL
)
_restore: list[Any] = []


def _tmp_on_tmpfs(config: pytest.Config) -> None:
    """Put ``tmp_path`` (and every ``tempfile`` directory) on tmpfs when there is one.

    Opening a fresh disk cache costs 20-80 ms on ext4 (SQLite syncs) and about 3 ms on tmpfs,
    and nearly every test opens one. SQLite, file modes and permissions behave the same on
    tmpfs. Skipped when the caller chose a place (``--basetemp``, ``TMPDIR``).
    """
    if config.option.basetemp or os.environ.get("TMPDIR"):
        return
    if not (_TMPFS.is_dir() and os.access(_TMPFS, os.W_OK | os.X_OK)):
        return
    previous = tempfile.tempdir
    tempfile.tempdir = str(_TMPFS)
    _restore.append(lambda: setattr(tempfile, "tempdir", previous))


def _one_certificate_ca_bundle() -> None:
    """Point ``SSL_CERT_FILE`` at a bundle of one CA certificate for this test process.

    Every ``openai.OpenAI()`` builds a TLS context, and loading a full CA bundle costs about
    50-90 ms of CPU; tests make hundreds of clients, all talking plain HTTP over loopback, so
    no test ever verifies a certificate. One real certificate keeps the context valid (and an
    accidental TLS connection fails verification: a test must never reach the network).
    Subprocesses started by tests inherit it; the previous values come back at the end.
    """
    bundle = os.environ.get("SSL_CERT_FILE") or ssl.get_default_verify_paths().openssl_cafile
    try:
        text = Path(bundle).read_text(encoding="ascii", errors="replace")
    except OSError:
        return
    first = _PEM_BLOCK.search(text)
    if first is None:
        return
    directory = tempfile.mkdtemp(prefix="fallbackchain-tests-ca-")
    path = Path(directory) / "one-ca.pem"
    path.write_text(first.group(0), encoding="ascii")
    previous = {name: os.environ.pop(name, None) for name in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    os.environ["SSL_CERT_FILE"] = str(path)

    def undo() -> None:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(directory, ignore_errors=True)

    _restore.append(undo)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    # FALLBACKCHAIN_TEST_SPEEDUPS=0 runs without both, e.g. to show they change no outcome.
    if os.environ.get("FALLBACKCHAIN_TEST_SPEEDUPS", "1") != "0":
        _tmp_on_tmpfs(config)
        _one_certificate_ca_bundle()


def pytest_unconfigure(config: pytest.Config) -> None:
    while _restore:
        _restore.pop()()


class FakeClock:
    """A clock that only moves when told; ``sleep`` advances it and records the delay.

    A ``TimeSource``: ``monotonic()`` is ``now``; ``wall()`` is ``now`` plus whatever
    :meth:`step_wall` added (a host's clock being set), which intervals must never see.
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self.wall_offset = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.now + self.wall_offset

    def step_wall(self, seconds: float) -> None:
        self.wall_offset += seconds

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


def make_config(
    tmp_path: Path, base_url: str = "http://127.0.0.1:9/v1", **overrides: Any
) -> ChainConfig:
    """The test profile, pointed at ``base_url`` with the cache in ``tmp_path``.

    ``overrides`` are ``section__key=value`` pairs, e.g. ``retry__max_attempts=1``.
    """
    base = load_config(ROOT / "config" / "test.toml")
    sections: dict[str, dict[str, Any]] = {
        "openai": {"base_url": base_url},
        "cache": {"directory": str(tmp_path / "cache")},
    }
    for name, value in overrides.items():
        section, key = name.split("__", 1)
        sections.setdefault(section, {})[key] = value
    changes = {
        name: dataclasses.replace(getattr(base, name), **vals) for name, vals in sections.items()
    }
    return dataclasses.replace(base, **changes, source=None)


@pytest.fixture
def config_factory(tmp_path: Path) -> Any:
    def factory(base_url: str = "http://127.0.0.1:9/v1", **overrides: Any) -> ChainConfig:
        return make_config(tmp_path, base_url, **overrides)

    return factory


# --------------------------------------------------------------------------------------------
# The fault server and a harness driving a real chain (sync or async) against it
# --------------------------------------------------------------------------------------------

import asyncio  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402

import openai  # noqa: E402

from fallbackchain import AsyncFallbackChain, FallbackChain  # noqa: E402
from fallbackchain.testing import FaultServer  # noqa: E402


@pytest.fixture(scope="session")
def _session_server() -> Iterator[FaultServer]:
    with FaultServer(words=12) as server:
        yield server


@pytest.fixture
def server(_session_server: FaultServer) -> Iterator[FaultServer]:
    yield from between_tests(_session_server)


def between_tests(shared: FaultServer) -> Iterator[FaultServer]:
    """A fixture's body for a server shared by many tests: no rules, counts from 0; after the
    test, idle and clean again."""
    shared.clear()
    shared.reset_counts()
    yield shared
    shared.clear()
    shared.wait_idle(5.0)
    shared.reset_counts()


def user(prompt: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": prompt}]


class Harness:
    """Drive one chain, sync or async, with the real openai client against the fault server."""

    def __init__(
        self,
        mode: str,
        config: ChainConfig,
        server: FaultServer,
        clock: Any,
        *,
        real_time: bool = False,
        sdk_max_retries: int = 2,
        fallback_servers: dict[str, FaultServer] | None = None,
        random: Any = None,
    ) -> None:
        self.mode = mode
        self.server = server
        self.clock = clock
        timing: dict[str, Any] = {} if real_time else {"clock": clock, "random": lambda: 0.5}
        if random is not None:
            timing["random"] = random
        if mode == "sync":
            if not real_time:
                timing["sleep"] = clock.sleep
            client = openai.OpenAI(
                base_url=server.base_url, api_key="sk-test-SECRET-123", max_retries=sdk_max_retries
            )
            self._extra: list[Any] = [
                openai.OpenAI(base_url=s.base_url, api_key="sk-backup")
                for s in (fallback_servers or {}).values()
            ]
            extra = dict(zip(fallback_servers or {}, self._extra, strict=True))
            self.chain: Any = FallbackChain(config, client=client, fallback_clients=extra, **timing)
            self._client: Any = client
        else:
            if not real_time:
                timing["sleep"] = clock.async_sleep
            self.loop = asyncio.new_event_loop()
            client = openai.AsyncOpenAI(
                base_url=server.base_url, api_key="sk-test-SECRET-123", max_retries=sdk_max_retries
            )
            self._extra = [
                openai.AsyncOpenAI(base_url=s.base_url, api_key="sk-backup")
                for s in (fallback_servers or {}).values()
            ]
            extra = dict(zip(fallback_servers or {}, self._extra, strict=True))
            self.chain = AsyncFallbackChain(config, client=client, fallback_clients=extra, **timing)
            self._client = client

    def ask(self, prompt: str = "hello", **params: Any) -> tuple[list[Any], Any]:
        """Stream one request; return (events, response). Raises what the chain raises."""
        if self.mode == "sync":
            with self.chain.stream(user(prompt), **params) as stream:
                events = list(stream)
                return events, stream.response

        async def go() -> tuple[list[Any], Any]:
            async with self.chain.stream(user(prompt), **params) as stream:
                events = [e async for e in stream]
                return events, stream.response

        return self.loop.run_until_complete(go())

    def complete(self, prompt: str = "hello", **params: Any) -> Any:
        if self.mode == "sync":
            return self.chain.complete(user(prompt), **params)
        return self.loop.run_until_complete(self.chain.complete(user(prompt), **params))

    def burst(self, n: int) -> list[tuple[Any, float]]:
        """``n`` different requests at once (threads, or tasks on the loop).

        Returns, per request, its response or the exception it raised, and the
        ``time.monotonic()`` at which it ended.
        """
        prompts = [f"burst {i}" for i in range(n)]
        if self.mode == "sync":
            results: list[tuple[Any, float]] = [(None, 0.0)] * n
            start = threading.Barrier(n, timeout=10)

            def one(i: int) -> None:
                start.wait()
                try:
                    out: Any = self.chain.complete(user(prompts[i]))
                except Exception as exc:
                    out = exc
                results[i] = (out, time.monotonic())

            threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            return results

        async def one_async(prompt: str) -> tuple[Any, float]:
            try:
                out: Any = await self.chain.complete(user(prompt))
            except Exception as exc:
                out = exc
            return out, time.monotonic()

        async def go() -> list[tuple[Any, float]]:
            return list(await asyncio.gather(*(one_async(p) for p in prompts)))

        return self.loop.run_until_complete(go())

    def run(self, coro_or_fn: Any) -> Any:
        """Run an async callable (async mode) or a plain callable (sync mode)."""
        if self.mode == "sync":
            return coro_or_fn()
        return self.loop.run_until_complete(coro_or_fn())

    def answer(self, prompt: str = "hello") -> str:
        return self.server.answer_for(user(prompt), self.chain.config.openai.model)

    def close(self) -> None:
        if self.mode == "sync":
            self.chain.close()
            self._client.close()
            for extra in self._extra:
                extra.close()
        else:

            async def shut() -> None:
                await self.chain.aclose()
                await self._client.close()
                for extra in self._extra:
                    await extra.close()

            self.loop.run_until_complete(shut())
            self.loop.close()


@pytest.fixture(scope="module")
def backup_server() -> Iterator[FaultServer]:
    """A second fault server playing a fallback provider (one per test module)."""
    with FaultServer(words=10) as server:
        yield server


@pytest.fixture
def backup(backup_server: FaultServer) -> Iterator[FaultServer]:
    yield from between_tests(backup_server)


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def harness_factory(
    mode: str, server: FaultServer, clock: FakeClock, tmp_path: Path
) -> Iterator[Any]:
    made: list[Harness] = []

    def factory(
        *,
        real_time: bool = False,
        sdk_max_retries: int = 2,
        fallbacks: tuple[Any, ...] = (),
        fallback_servers: dict[str, FaultServer] | None = None,
        random: Any = None,
        **overrides: Any,
    ) -> Harness:
        config = make_config(tmp_path, server.base_url, **overrides)
        if fallbacks:
            config = dataclasses.replace(config, fallbacks=tuple(fallbacks))
        h = Harness(
            mode,
            config,
            server,
            clock,
            real_time=real_time,
            sdk_max_retries=sdk_max_retries,
            fallback_servers=fallback_servers,
            random=random,
        )
        made.append(h)
        return h

    yield factory
    for h in made:
        h.close()


@pytest.fixture
def harness(harness_factory: Any) -> Any:
    return harness_factory()


def text_after_last_reset(events: list[Any]) -> str:
    parts: list[str] = []
    for event in events:
        if event.type == "reset":
            parts = []
        elif event.type == "delta":  # tool-call and refusal events are not answer text
            parts.append(event.text)
    return "".join(parts)


@pytest.fixture
def make_chain(server: FaultServer, tmp_path: Path, clock: FakeClock) -> Iterator[Any]:
    """A sync chain with ``listeners`` against the fault server (fake clock, pinned jitter)."""
    made: list[tuple[FallbackChain, openai.OpenAI]] = []

    def make(*listeners: object, **overrides: Any) -> FallbackChain:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-test-SECRET-listeners")
        chain = FallbackChain(
            make_config(tmp_path, server.base_url, **overrides),
            client=client,
            clock=clock,
            sleep=clock.sleep,
            random=lambda: 0.5,
            listeners=listeners,
        )
        made.append((chain, client))
        return chain

    yield make
    for chain, client in made:
        chain.close()
        client.close()
