"""The public surface: an explicit, importable ``__all__``; everything else is private."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import fallbackchain

ROOT = Path(__file__).resolve().parent.parent

EXPECTED = {
    "BUSY", "Busy", "BreakerBusyError", "AllTiersFailedError", "AsyncChainStream", "AsyncFallbackChain", "Attempt", "BreakerConfig",
    "BreakerGate", "BreakerOpenError", "BreakerState", "CacheConfig", "CacheCorruptError",
    "CacheError", "CacheStats", "CachedAnswer", "ChainConfig", "ChainEvent", "ChainResponse",
    "ChainClosedError", "ChainStream", "ConfigError", "DeadlineExceededError", "FallbackChain", "FallbackChainError",
    "FallbackConfig",
    "FirstTokenTimeoutError", "IdleTimeoutError", "MalformedChunkError", "OpenAIConfig", "Permit",
    "QuotaExceededError", "RateLimitedError", "ResponseCache", "RetryConfig", "RouteConfig",
    "RouteRejectedError", "ServerError",
    "StreamEventError", "StreamNotFinishedError", "StreamProtocolError", "TierError",
    "TruncatedStreamError", "UnsafeCacheRowError", "UpstreamConnectionError", "UpstreamStatusError",
    "UpstreamTimeoutError", "__version__", "cache_key", "is_testing", "load_config", "set_testing",
    "AsyncChainChat", "AsyncChainCompletions", "AsyncDropInStream", "ChainChat", "ChainCompletions",
    "DropInStream", "StreamDivergedError", "trace_of",
}


def test_the_issue_fixed_names_are_importable():
    from fallbackchain import (  # noqa: F401
        AllTiersFailedError,
        AsyncFallbackChain,
        ChainConfig,
        ConfigError,
        FallbackChain,
        FallbackChainError,
        load_config,
    )


def test_all_is_explicit_and_complete():
    assert set(fallbackchain.__all__) >= EXPECTED
    for name in fallbackchain.__all__:
        assert hasattr(fallbackchain, name), name


def test_every_implementation_module_is_private():
    names = [m.name for m in pkgutil.iter_modules(fallbackchain.__path__)]
    assert names
    public_modules = {"testing", "otel"}  # the test bed, and the optional OpenTelemetry listener
    assert all(name.startswith("_") or name in public_modules for name in names), names


def test_the_package_is_typed():
    assert (ROOT / "fallbackchain" / "py.typed").exists()


@pytest.mark.slow  # a mypy subprocess
def test_public_api_usage_type_checks_under_strict_mypy():
    """tests/typing/public_api.py uses the API as a user would; mypy --strict must accept it."""
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental", "tests/typing/public_api.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=240, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
