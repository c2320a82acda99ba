"""The chain: the decision core, the sync and async drivers over it, and the drop-in surface.

The modules here are private; other parts of fallbackchain import from this package.
"""

from __future__ import annotations

from ._assembly import COMPLETE_FINISH_REASONS, AttemptAssembler, Display, Fragment, Piece
from ._async import AsyncChainStream, AsyncFallbackChain
from ._backoff import RetryDecision, decide, full_jitter, is_transport_fault
from ._call_options import CacheUse, CallOptions, call_options, call_timeout
from ._core import RequestRun
from ._dropin import (
    AsyncChainChat,
    AsyncChainCompletions,
    AsyncDropInStream,
    ChainChat,
    ChainCompletions,
    Divergence,
    DropInStream,
    StreamDivergedError,
    trace_of,
)
from ._endpoint import CHAT, ChatEndpoint, Endpoint, StreamAssembly
from ._responses_assembly import ResponseAssembler, ResponseIncompleteError
from ._responses_dropin import AsyncChainResponses, ChainResponses
from ._responses_endpoint import ENVELOPE_FIELD, RESPONSES, ResponsesEndpoint, resumable
from ._responses_keys import responses_cache_key
from ._responses_resume import (
    MAX_RESUMES,
    AsyncResumingStream,
    Resumed,
    ResumingStream,
    resumptions_of,
)
from ._responses_stream import AsyncResponsesDropInStream, ResponsesDropInStream
from ._steps import Acquire, AwaitSlot, Neutral, Sleep, Tier, TryTier, UseCache
from ._sync import ChainStream, FallbackChain
from ._watch import AttemptWatch

__all__ = [
    "CHAT",
    "COMPLETE_FINISH_REASONS",
    "ENVELOPE_FIELD",
    "MAX_RESUMES",
    "RESPONSES",
    "Acquire",
    "AsyncChainChat",
    "AsyncChainCompletions",
    "AsyncChainResponses",
    "AsyncChainStream",
    "AsyncDropInStream",
    "AsyncFallbackChain",
    "AsyncResponsesDropInStream",
    "AsyncResumingStream",
    "AttemptAssembler",
    "AttemptWatch",
    "AwaitSlot",
    "CacheUse",
    "CallOptions",
    "ChainChat",
    "ChainCompletions",
    "ChainResponses",
    "ChainStream",
    "ChatEndpoint",
    "Display",
    "Divergence",
    "DropInStream",
    "Endpoint",
    "FallbackChain",
    "Fragment",
    "Neutral",
    "Piece",
    "RequestRun",
    "ResponseAssembler",
    "ResponseIncompleteError",
    "ResponsesDropInStream",
    "ResponsesEndpoint",
    "Resumed",
    "ResumingStream",
    "RetryDecision",
    "Sleep",
    "StreamAssembly",
    "StreamDivergedError",
    "Tier",
    "TryTier",
    "UseCache",
    "call_options",
    "call_timeout",
    "decide",
    "full_jitter",
    "is_transport_fault",
    "responses_cache_key",
    "resumable",
    "resumptions_of",
    "trace_of",
]
