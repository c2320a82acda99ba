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

from ._breaker import BUSY, BreakerGate, BreakerState, Busy, Permit
from ._cache import (
    CachedAnswer,
    CacheStats,
    ExportRow,
    ImportReport,
    InputFileError,
    LineError,
    ResponseCache,
    cache_key,
)
from ._chain import (
    AsyncChainStream,
    AsyncFallbackChain,
    ChainStream,
    FallbackChain,
)
from ._config import (
    BreakerConfig,
    CacheConfig,
    ChainConfig,
    FallbackConfig,
    OpenAIConfig,
    RetryConfig,
    RouteConfig,
    load_config,
)
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
from ._warm import WarmProgress, WarmReport, WarmRequest, awarm, warm

Cache = ResponseCache
"""The fallback cache (alias of ResponseCache): get/put, stats, clear, prune, export, import."""

__version__ = "0.1.0"

__all__ = [
    "BUSY",
    "AllTiersFailedError",
    "AsyncChainStream",
    "AsyncFallbackChain",
    "Attempt",
    "AttemptEnded",
    "AttemptStarted",
    "BreakerBusyError",
    "BreakerChanged",
    "BreakerConfig",
    "BreakerGate",
    "BreakerOpenError",
    "BreakerState",
    "Busy",
    "Cache",
    "CacheConfig",
    "CacheCorruptError",
    "CacheError",
    "CacheEvent",
    "CacheStats",
    "CachedAnswer",
    "ChainClosedError",
    "ChainConfig",
    "ChainEvent",
    "ChainListener",
    "ChainResponse",
    "ChainStream",
    "ConfigError",
    "DeadlineExceededError",
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
    "Permit",
    "QuotaExceededError",
    "RateLimitedError",
    "RequestEnded",
    "RequestStarted",
    "ResponseCache",
    "RetryConfig",
    "RetryScheduled",
    "RouteConfig",
    "RouteRejectedError",
    "ServerError",
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
    "warm",
]
