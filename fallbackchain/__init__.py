"""fallbackchain: keep OpenAI chat calls answering through drops, rate limits and outages.

For each request a chain streams the answer behind a circuit breaker (retrying transient
failures with full-jitter backoff that honours ``Retry-After``), falls back to a non-streaming
completion, then to the last good answer for the same request from a disk cache, and otherwise
raises one :class:`AllTiersFailedError` listing every attempt::

    from fallbackchain import FallbackChain

    with FallbackChain.from_config("config/fallbackchain.toml") as chain:
        for event in (stream := chain.stream(messages=[{"role": "user", "content": "Hi"}])):
            ...
        print(stream.response.text, stream.response.source)
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any, Final

__version__ = "0.1.0"

# The public names load their module on first use (PEP 562), so `import fallbackchain` costs
# next to nothing and an app pays only for the parts it touches: `FallbackChain` needs the
# chain, the cache and the breakers, but not `warm`'s machinery. A name listed in `__all__` is
# looked up in these modules' own `__all__`, in this order, importing each only when the ones
# before it do not define the name: the cheap ones first (`_config_file` imports its TOML
# parser only when it reads a file), so `load_config` does not load the chain. Type checkers
# and IDEs read the TYPE_CHECKING imports; tests/test_import_time.py checks both agree.
_HOMES: Final = (
    "_errors",
    "_config",
    "_config_file",
    "_results",
    "_timing",
    "_hooks",
    "breaker",
    "cache",
    "chain",
    "warming",
)

if TYPE_CHECKING:
    from ._config import (
        BreakerConfig,
        CacheConfig,
        ChainConfig,
        FallbackConfig,
        OpenAIConfig,
        RetryConfig,
        RouteConfig,
    )
    from ._config_file import load_config
    from ._errors import (
        AllTiersFailedError,
        BreakerBusyError,
        BreakerOpenError,
        CacheCorruptError,
        CacheError,
        ChainClosedError,
        ConfigError,
        DeadlineExceededError,
        FallbackChainError,
        FirstTokenTimeoutError,
        IdleTimeoutError,
        MalformedChunkError,
        QuotaExceededError,
        RateLimitedError,
        RouteRejectedError,
        ServerError,
        StreamEventError,
        StreamNotFinishedError,
        StreamProtocolError,
        TierError,
        TruncatedStreamError,
        UnsafeCacheRowError,
        UpstreamConnectionError,
        UpstreamStatusError,
        UpstreamTimeoutError,
    )
    from ._hooks import (
        AttemptEnded,
        AttemptStarted,
        BreakerChanged,
        CacheEvent,
        ChainListener,
        FallbackTaken,
        RequestEnded,
        RequestStarted,
        RetryScheduled,
    )
    from ._results import Attempt, ChainEvent, ChainResponse
    from ._timing import is_testing, set_testing
    from .breaker import BreakerState
    from .cache import (
        CachedAnswer,
        CacheStats,
        ExportRow,
        ImportReport,
        InputFileError,
        LineError,
        ResponseCache,
        cache_key,
    )
    from .chain import (
        AsyncChainChat,
        AsyncChainCompletions,
        AsyncChainResponses,
        AsyncChainStream,
        AsyncDropInStream,
        AsyncFallbackChain,
        AsyncResponsesDropInStream,
        ChainChat,
        ChainCompletions,
        ChainResponses,
        ChainStream,
        DropInStream,
        FallbackChain,
        ResponseIncompleteError,
        ResponsesDropInStream,
        StreamDivergedError,
        trace_of,
    )
    from .warming import WarmProgress, WarmReport, WarmRequest, awarm, warm


def __getattr__(name: str) -> Any:
    """Import the module that defines ``name`` on first access, then keep the value here."""
    if name in __all__:
        for home in _HOMES:
            module = import_module(f"{__name__}.{home}")
            if name in module.__all__:
                value = getattr(module, name)
                globals()[name] = value  # later lookups are plain attribute reads
                return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "AllTiersFailedError",
    "AsyncChainChat",
    "AsyncChainCompletions",
    "AsyncChainResponses",
    "AsyncChainStream",
    "AsyncDropInStream",
    "AsyncFallbackChain",
    "AsyncResponsesDropInStream",
    "Attempt",
    "AttemptEnded",
    "AttemptStarted",
    "BreakerBusyError",
    "BreakerChanged",
    "BreakerConfig",
    "BreakerOpenError",
    "BreakerState",
    "CacheConfig",
    "CacheCorruptError",
    "CacheError",
    "CacheEvent",
    "CacheStats",
    "CachedAnswer",
    "ChainChat",
    "ChainClosedError",
    "ChainCompletions",
    "ChainConfig",
    "ChainEvent",
    "ChainListener",
    "ChainResponse",
    "ChainResponses",
    "ChainStream",
    "ConfigError",
    "DeadlineExceededError",
    "DropInStream",
    "ExportRow",
    "FallbackChain",
    "FallbackChainError",
    "FallbackConfig",
    "FallbackTaken",
    "FirstTokenTimeoutError",
    "IdleTimeoutError",
    "ImportReport",
    "InputFileError",
    "LineError",
    "MalformedChunkError",
    "OpenAIConfig",
    "QuotaExceededError",
    "RateLimitedError",
    "RequestEnded",
    "RequestStarted",
    "ResponseCache",
    "ResponseIncompleteError",
    "ResponsesDropInStream",
    "RetryConfig",
    "RetryScheduled",
    "RouteConfig",
    "RouteRejectedError",
    "ServerError",
    "StreamDivergedError",
    "StreamEventError",
    "StreamNotFinishedError",
    "StreamProtocolError",
    "TierError",
    "TruncatedStreamError",
    "UnsafeCacheRowError",
    "UpstreamConnectionError",
    "UpstreamStatusError",
    "UpstreamTimeoutError",
    "WarmProgress",
    "WarmReport",
    "WarmRequest",
    "__version__",
    "awarm",
    "cache_key",
    "is_testing",
    "load_config",
    "set_testing",
    "trace_of",
    "warm",
]
