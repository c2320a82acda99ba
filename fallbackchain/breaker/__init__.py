"""Circuit breakers: a gate per route that asks permission before an attempt and hears its outcome.

The modules here are private; other parts of fallbackchain import from this package.

| module | one idea |
| --- | --- |
| ``_gate`` | :class:`BreakerGate`: ask before an attempt, report after, wait while busy |
| ``_permit`` | :class:`Permit` (one attempt's permission), :data:`BUSY` |
| ``_stores`` | the steps a store takes, and :class:`MemoryGateStore` (pybreaker's breaker) |
| ``_redis_store`` | ``RedisGateStore``: the same steps as Lua scripts on one Redis hash |

Glossary:

* **closed / open / half-open**: pybreaker's states. Open refuses every attempt until
  ``reset_timeout`` has passed; then half-open lets one probe through.
* **probe**: the one attempt a half-open breaker lets through. Its success closes the breaker,
  its failure opens it again.
* **proven / unproven**: a closed breaker is proven once an attempt succeeded (or produced
  content) since the last failure. A new breaker, and one whose last attempt failed, is
  unproven (the Redis hash keeps the earlier name, the field ``trusted``).
* **limited permit**: what an unproven breaker admits, at most ``fail_max`` at a time
  counting the failures; each holds a **slot** until it ends or produces content.
* **busy** (:data:`BUSY`): unproven, every slot taken: ask again shortly.
* **first content** (:meth:`Permit.first_content`): the attempt started answering, so the
  upstream is up: a limited permit frees its slot and the breaker is proven.
* **ending a permit**: exactly one of success, failure or release (neutral: counted by none).
* **step**: one atomic change to a breaker's state (an ask, or a permit's end or first
  content), taken by the store; its **decision** says what an ask admits and any transition.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._optional import loaded_on_first_use
from ._gate import BreakerGate, StateChangeCallback
from ._permit import BUSY, Busy, Permit
from ._stores import BreakerState, GateStore, MemoryGateStore

if TYPE_CHECKING:
    from ._redis_store import RedisGateStore

__all__ = [
    "BUSY",
    "BreakerGate",
    "BreakerState",
    "Busy",
    "GateStore",
    "MemoryGateStore",
    "Permit",
    "RedisGateStore",
    "StateChangeCallback",
]

# RedisGateStore imports the redis client: loaded only when first asked for.
__getattr__ = loaded_on_first_use(__name__, {"RedisGateStore": "._redis_store"})
