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

from typing import TYPE_CHECKING, Final

from ._lazy import loaded_on_first_use

__version__ = "0.1.0"

# The public names load their module on first use (PEP 562), so `import fallbackchain` costs
# next to nothing and an app pays only for the parts it touches: `FallbackChain` needs the
# chain, the cache and the breakers, but not `warm`'s machinery. This table is the one list of
# public names, each with the module (or subpackage) that defines it and is imported when the
# name is first asked for; `__all__` is its keys. Type checkers and IDEs read the TYPE_CHECKING
# imports (re-exported with `as`, since `__all__` is built, not written out);
# tests/test_import_time.py checks that both agree.
_HOME_OF: Final[dict[str, str]] = {
    "AllTiersFailedError": "._errors",
    "AsyncChainChat": ".chain",
    "AsyncChainCompletions": ".chain",
    "AsyncChainResponses": ".chain",
    "AsyncChainStream": ".chain",
    "AsyncDropInStream": ".chain",
    "AsyncFallbackChain": ".chain",
    "AsyncResponsesDropInStream": ".chain",
    "Attempt": "._results",
    "AttemptEnded": "._hooks",
    "AttemptStarted": "._hooks",
    "BreakerBusyError": "._errors",
    "BreakerChanged": "._hooks",
    "BreakerConfig": "._config",
    "BreakerOpenError": "._errors",
    "BreakerState": ".breaker",
    "CacheConfig": "._config",
    "CacheCorruptError": "._errors",
    "CacheError": "._errors",
    "CacheEvent": "._hooks",
    "CacheStats": ".cache",
    "CachedAnswer": ".cache",
    "ChainChat": ".chain",
    "ChainClosedError": "._errors",
    "ChainCompletions": ".chain",
    "ChainConfig": "._config",
    "ChainEvent": "._results",
    "ChainListener": "._hooks",
    "ChainResponse": "._results",
    "ChainResponses": ".chain",
    "ChainStream": ".chain",
    "ConfigError": "._errors",
    "DeadlineExceededError": "._errors",
    "DropInStream": ".chain",
    "ExportRow": ".cache",
    "FallbackChain": ".chain",
    "FallbackChainError": "._errors",
    "FallbackConfig": "._config",
    "FallbackTaken": "._hooks",
    "FirstTokenTimeoutError": "._errors",
    "IdleTimeoutError": "._errors",
    "ImportReport": ".cache",
    "InputFileError": ".cache",
    "LineError": ".cache",
    "MalformedChunkError": "._errors",
    "OpenAIConfig": "._config",
    "QuotaExceededError": "._errors",
    "RateLimitedError": "._errors",
    "RequestEnded": "._hooks",
    "RequestStarted": "._hooks",
    "ResponseCache": ".cache",
    "ResponseIncompleteError": ".chain",
    "ResponsesDropInStream": ".chain",
    "RetryConfig": "._config",
    "RetryScheduled": "._hooks",
    "RouteConfig": "._config",
    "RouteRejectedError": "._errors",
    "ServerError": "._errors",
    "StreamDivergedError": ".chain",
    "StreamEventError": "._errors",
    "StreamNotFinishedError": "._errors",
    "StreamProtocolError": "._errors",
    "TierError": "._errors",
    "TruncatedStreamError": "._errors",
    "UnsafeCacheRowError": "._errors",
    "UpstreamConnectionError": "._errors",
    "UpstreamStatusError": "._errors",
    "UpstreamTimeoutError": "._errors",
    "WarmProgress": ".warming",
    "WarmReport": ".warming",
    "WarmRequest": ".warming",
    "awarm": ".warming",
    "cache_key": ".cache",
    "is_testing": "._timing",
    "load_config": "._config_file",
    "set_testing": "._timing",
    "trace_of": ".chain",
    "warm": ".warming",
}

if TYPE_CHECKING:
    # One parenthesised import per module: isort would split each `as` name into its own line.
    # isort: off
    from ._config import (
        BreakerConfig as BreakerConfig,
        CacheConfig as CacheConfig,
        ChainConfig as ChainConfig,
        FallbackConfig as FallbackConfig,
        OpenAIConfig as OpenAIConfig,
        RetryConfig as RetryConfig,
        RouteConfig as RouteConfig,
    )
    from ._config_file import load_config as load_config
    from ._errors import (
        AllTiersFailedError as AllTiersFailedError,
        BreakerBusyError as BreakerBusyError,
        BreakerOpenError as BreakerOpenError,
        CacheCorruptError as CacheCorruptError,
        CacheError as CacheError,
        ChainClosedError as ChainClosedError,
        ConfigError as ConfigError,
        DeadlineExceededError as DeadlineExceededError,
        FallbackChainError as FallbackChainError,
        FirstTokenTimeoutError as FirstTokenTimeoutError,
        IdleTimeoutError as IdleTimeoutError,
        MalformedChunkError as MalformedChunkError,
        QuotaExceededError as QuotaExceededError,
        RateLimitedError as RateLimitedError,
        RouteRejectedError as RouteRejectedError,
        ServerError as ServerError,
        StreamEventError as StreamEventError,
        StreamNotFinishedError as StreamNotFinishedError,
        StreamProtocolError as StreamProtocolError,
        TierError as TierError,
        TruncatedStreamError as TruncatedStreamError,
        UnsafeCacheRowError as UnsafeCacheRowError,
        UpstreamConnectionError as UpstreamConnectionError,
        UpstreamStatusError as UpstreamStatusError,
        UpstreamTimeoutError as UpstreamTimeoutError,
    )
    from ._hooks import (
        AttemptEnded as AttemptEnded,
        AttemptStarted as AttemptStarted,
        BreakerChanged as BreakerChanged,
        CacheEvent as CacheEvent,
        ChainListener as ChainListener,
        FallbackTaken as FallbackTaken,
        RequestEnded as RequestEnded,
        RequestStarted as RequestStarted,
        RetryScheduled as RetryScheduled,
    )
    from ._results import (
        Attempt as Attempt,
        ChainEvent as ChainEvent,
        ChainResponse as ChainResponse,
    )
    from ._timing import is_testing as is_testing, set_testing as set_testing
    from .breaker import BreakerState as BreakerState
    from .cache import (
        CachedAnswer as CachedAnswer,
        CacheStats as CacheStats,
        ExportRow as ExportRow,
        ImportReport as ImportReport,
        InputFileError as InputFileError,
        LineError as LineError,
        ResponseCache as ResponseCache,
        cache_key as cache_key,
    )
    from .chain import (
        AsyncChainChat as AsyncChainChat,
        AsyncChainCompletions as AsyncChainCompletions,
        AsyncChainResponses as AsyncChainResponses,
        AsyncChainStream as AsyncChainStream,
        AsyncDropInStream as AsyncDropInStream,
        AsyncFallbackChain as AsyncFallbackChain,
        AsyncResponsesDropInStream as AsyncResponsesDropInStream,
        ChainChat as ChainChat,
        ChainCompletions as ChainCompletions,
        ChainResponses as ChainResponses,
        ChainStream as ChainStream,
        DropInStream as DropInStream,
        FallbackChain as FallbackChain,
        ResponseIncompleteError as ResponseIncompleteError,
        ResponsesDropInStream as ResponsesDropInStream,
        StreamDivergedError as StreamDivergedError,
        trace_of as trace_of,
    )
    from .warming import (
        WarmProgress as WarmProgress,
        WarmReport as WarmReport,
        WarmRequest as WarmRequest,
        awarm as awarm,
        warm as warm,
    )
    # isort: on


__getattr__ = loaded_on_first_use(globals(), _HOME_OF)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = ["__version__"]
__all__.extend(_HOME_OF)
