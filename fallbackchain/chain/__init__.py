"""The chain: the decision core, the sync and async drivers over it, and the drop-in surface.

The modules here are private; other parts of fallbackchain import from this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

# The openai SDK first, before any module of the chain imports from it: loaded from deep inside
# the chain's own imports (`from openai.types.chat import ...` in `_assembly`), the same import
# measured about 30 ms more CPU on CPython 3.11 (about 4,000 more page faults, with or without
# the GC or pymalloc; cause not pinned down). Measured in benchmarks/import_time.py (#14).
import openai  # noqa: F401 - imported for the order only

from .._lazy import loaded_on_first_use
from ._assembly import COMPLETE_FINISH_REASONS, AttemptAssembler, Display, Fragment, Piece
from ._backoff import RetryDecision, decide, full_jitter, is_transport_fault
from ._call_options import CacheUse, CallOptions, call_options, call_timeout
from ._core import RequestRun
from ._endpoint import CHAT, ChatEndpoint, Endpoint, StreamAssembly
from ._steps import Acquire, AwaitSlot, Neutral, Sleep, Tier, TryTier, UseCache
from ._sync import ChainStream, FallbackChain
from ._watch import AttemptWatch

if TYPE_CHECKING:
    from ._async import AsyncChainStream, AsyncFallbackChain
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

# The drop-in surfaces (chat's and the Responses API's) load on first use: an app that only
# streams through the chain does not pay for them at import. So does the async driver: a
# threaded app does not pay for it (#14: import time).
__getattr__ = loaded_on_first_use(
    globals(),
    {
        "AsyncChainStream": "._async",
        "AsyncFallbackChain": "._async",
        "AsyncChainChat": "._dropin",
        "AsyncChainCompletions": "._dropin",
        "AsyncChainResponses": "._responses_dropin",
        "AsyncDropInStream": "._dropin",
        "AsyncResponsesDropInStream": "._responses_stream",
        "AsyncResumingStream": "._responses_resume",
        "ChainChat": "._dropin",
        "ChainCompletions": "._dropin",
        "ChainResponses": "._responses_dropin",
        "Divergence": "._dropin",
        "DropInStream": "._dropin",
        "ENVELOPE_FIELD": "._responses_endpoint",
        "MAX_RESUMES": "._responses_resume",
        "RESPONSES": "._responses_endpoint",
        "ResponseAssembler": "._responses_assembly",
        "ResponseIncompleteError": "._responses_assembly",
        "ResponsesDropInStream": "._responses_stream",
        "ResponsesEndpoint": "._responses_endpoint",
        "Resumed": "._responses_resume",
        "ResumingStream": "._responses_resume",
        "StreamDivergedError": "._dropin",
        "responses_cache_key": "._responses_keys",
        "resumable": "._responses_endpoint",
        "resumptions_of": "._responses_resume",
        "trace_of": "._dropin",
    },
)
