"""The Responses API on the chain: stream assembly, cache keys, and the SDK's shape on top.

The modules here are private; other parts of fallbackchain import from this package.
"""

from __future__ import annotations

from ._assembly import RETRYABLE_INCOMPLETE, ResponseAssembler, ResponseIncompleteError
from ._keys import RESPONSES_TRANSPORT_PARAMS, responses_cache_key

__all__ = [
    "RESPONSES_TRANSPORT_PARAMS",
    "RETRYABLE_INCOMPLETE",
    "ResponseAssembler",
    "ResponseIncompleteError",
    "responses_cache_key",
]
