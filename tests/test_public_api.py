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
    "BreakerBusyError", "AllTiersFailedError", "AsyncChainStream", "AsyncFallbackChain", "Attempt", "BreakerConfig",
    "BreakerOpenError", "BreakerState", "CacheConfig", "CacheCorruptError",
    "CacheError", "CacheStats", "CachedAnswer", "ChainConfig", "ChainEvent", "ChainResponse",
    "ChainClosedError", "ChainStream", "ConfigError", "DeadlineExceededError", "FallbackChain", "FallbackChainError",
    "FallbackConfig",
    "FirstTokenTimeoutError", "IdleTimeoutError", "MalformedChunkError", "OpenAIConfig",
    "QuotaExceededError", "RateLimitedError", "ResponseCache", "RetryConfig", "RouteConfig",
    "RouteRejectedError", "ServerError",
    "StreamEventError", "StreamNotFinishedError", "StreamProtocolError", "TierError",
    "TruncatedStreamError", "UnsafeCacheRowError", "UpstreamConnectionError", "UpstreamStatusError",
    "UpstreamTimeoutError", "__version__", "cache_key", "is_testing", "load_config", "set_testing",
    "AsyncChainChat", "AsyncChainCompletions", "AsyncDropInStream", "ChainChat", "ChainCompletions",
    "DropInStream", "StreamDivergedError", "trace_of",
    # the Responses API drop-in
    "AsyncChainResponses", "AsyncResponsesDropInStream", "ChainResponses", "ResponseIncompleteError",
    "ResponsesDropInStream",
    # listener events
    "AttemptEnded", "AttemptStarted", "BreakerChanged", "CacheEvent", "ChainListener",
    "FallbackTaken", "RequestEnded", "RequestStarted", "RetryScheduled",
    # cache files and warming
    "ExportRow", "ImportReport", "InputFileError", "LineError",
    "WarmProgress", "WarmReport", "WarmRequest", "awarm", "warm",
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
    assert set(fallbackchain.__all__) == EXPECTED
    assert len(fallbackchain.__all__) == len(EXPECTED)  # no name listed twice
    for name in fallbackchain.__all__:
        assert hasattr(fallbackchain, name), name


def test_every_implementation_module_is_private():
    top = {m.name: m.ispkg for m in pkgutil.iter_modules(fallbackchain.__path__)}
    assert top
    public_modules = {"testing", "otel"}  # the test bed, and the optional OpenTelemetry listener
    # The subpackages show the architecture; every module inside them is private.
    layers = {"breaker", "cache", "chain", "cli", "warming"}
    assert {name for name, is_pkg in top.items() if is_pkg} == layers | {"testing"}
    assert all(n.startswith("_") or n in public_modules | layers for n in top), top
    for layer in layers:
        path = [str(ROOT / "fallbackchain" / layer)]
        inner = [m.name for m in pkgutil.iter_modules(path)]
        assert inner and all(name.startswith("_") for name in inner), (layer, inner)


def test_gate_internals_live_in_their_own_layer_not_in_the_public_api():
    from fallbackchain.breaker import BUSY, BreakerGate, Busy, Permit

    for name in ("BUSY", "Busy", "Permit", "BreakerGate", "Cache"):
        assert name not in fallbackchain.__all__
        assert not hasattr(fallbackchain, name), name
    assert BUSY is Busy.BUSY and BreakerGate.__name__ == "BreakerGate" and Permit


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
