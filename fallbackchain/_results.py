"""What a request gives back: stream events, attempts and the final response (all frozen)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletion

    from ._errors import TierError

__all__ = ["Attempt", "ChainEvent", "ChainResponse", "EventType", "Source"]

EventType = Literal["delta", "reset"]
Source = str
"""``"stream"``, ``"completion"`` or ``"cache"`` (fallback tiers use their configured name)."""


@dataclass(frozen=True, slots=True)
class ChainEvent:
    """One event of a chain stream.

    ``type == "delta"``: ``text`` is new answer text, to append to what was shown.
    ``type == "reset"``: discard everything shown so far; the deltas that follow replace it
    (``text`` is empty). The deltas after the last reset, joined, equal ``response.text``.
    """

    type: EventType
    text: str
    source: Source


@dataclass(frozen=True, slots=True)
class Attempt:
    """One try at one tier.

    ``error`` is ``None`` for the attempt that answered, else a short text (never the prompt or
    a secret); ``exception`` is the mapped :class:`~fallbackchain.TierError` (its ``__cause__``
    is the original foreign error). ``delay_before`` is the backoff slept before this attempt.
    """

    tier: str
    error: str | None
    duration: float
    exception: TierError | None = field(default=None, repr=False, compare=False)
    status_code: int | None = None
    retry_after: float | None = None
    delay_before: float = 0.0
    time_to_first_token: float | None = None

    @property
    def error_type(self) -> str | None:
        """The class name of the mapped error, or ``None`` on success."""
        return type(self.exception).__name__ if self.exception is not None else None


@dataclass(frozen=True, slots=True)
class ChainResponse:
    """The whole answer to one request, whichever tier gave it.

    ``completion`` is an openai ``ChatCompletion`` (for a streamed answer, assembled from the
    chunks). ``text`` is the first choice's content (``""`` for a pure tool call). ``source`` is
    the tier that answered; ``cache_age`` is the age in seconds of a cached answer, else ``None``.
    """

    text: str
    source: Source
    completion: ChatCompletion
    attempts: tuple[Attempt, ...]
    cache_age: float | None = None

    @property
    def from_cache(self) -> bool:
        """True when the answer came from the fallback cache."""
        return self.source == "cache"
