"""Circuit breakers: a gate per route that asks permission before an attempt and hears its outcome.

The modules here are private; other parts of fallbackchain import from this package.
"""

from __future__ import annotations

from ._gate import (
    BUSY,
    AsyncGateStore,
    BreakerGate,
    BreakerState,
    Busy,
    GateStore,
    MemoryGateStore,
    Permit,
    StateChangeCallback,
)

__all__ = [
    "BUSY",
    "AsyncGateStore",
    "BreakerGate",
    "BreakerState",
    "Busy",
    "GateStore",
    "MemoryGateStore",
    "Permit",
    "StateChangeCallback",
]
