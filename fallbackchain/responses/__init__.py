"""The Responses API on the chain: stream assembly, resumption, cache keys, the SDK's shape.

The modules here are private; other parts of fallbackchain import from this package.
"""

from __future__ import annotations

from ._assembly import (
    RETRYABLE_INCOMPLETE,
    ResponseAssembler,
    ResponseIncompleteError,
    error_code,
)
from ._dropin import (
    AsyncChainResponses,
    AsyncResponsesDropInStream,
    ChainResponses,
    ResponsesDropInStream,
)
from ._endpoint import ENVELOPE_FIELD, RESPONSES, ResponsesEndpoint, resumable
from ._keys import RESPONSES_TRANSPORT_PARAMS, responses_cache_key
from ._resume import (
    MAX_RESUMES,
    TERMINAL_EVENTS,
    AsyncResumingStream,
    Resumed,
    ResumingStream,
    mark_resumptions,
    resumptions_of,
)

__all__ = [
    "ENVELOPE_FIELD",
    "MAX_RESUMES",
    "RESPONSES",
    "RESPONSES_TRANSPORT_PARAMS",
    "RETRYABLE_INCOMPLETE",
    "TERMINAL_EVENTS",
    "AsyncChainResponses",
    "AsyncResponsesDropInStream",
    "AsyncResumingStream",
    "ChainResponses",
    "ResponseAssembler",
    "ResponseIncompleteError",
    "ResponsesDropInStream",
    "ResponsesEndpoint",
    "Resumed",
    "ResumingStream",
    "error_code",
    "mark_resumptions",
    "responses_cache_key",
    "resumable",
    "resumptions_of",
]
