"""OpenTelemetry for a chain: spans and metrics built from the listener events.

Import it through :mod:`fallbackchain.otel`; it needs ``opentelemetry-api``
(``pip install 'fallbackchain[otel]'``). ``import fallbackchain`` never imports OpenTelemetry.

Spans (instrumentation scope ``fallbackchain``):

* ``fallbackchain.request``, from ``RequestStarted`` to ``RequestEnded``: a child of whatever
  span is current when the request starts (say, a web framework's server span). Attributes
  ``gen_ai.operation.name``, ``gen_ai.request.model``, ``fallbackchain.api`` (``"chat"`` or
  ``"responses"``: the provider API), ``fallbackchain.request_id``, ``fallbackchain.streaming``;
  at the end ``fallbackchain.source`` (the tier that answered, or ``"cache"``),
  ``fallbackchain.attempts``, ``fallbackchain.outcome`` (``success``, ``failure``,
  ``abandoned``) and ``error.type`` when nothing answered. A failure sets the ERROR status; an
  abandoned request (closed early, cancelled) does not, as it is neutral for the breakers too.
  Retries, fallbacks and cache reads are span events on it.
* ``fallbackchain.attempt``, a child of the request span per attempt: ``fallbackchain.tier``,
  ``fallbackchain.attempt.number``, ``fallbackchain.attempt.probe``, then
  ``fallbackchain.outcome``, ``error.type``, ``http.response.status_code`` and
  ``fallbackchain.time_to_first_token`` (seconds). A failed attempt has the ERROR status.

Metrics: counters ``fallbackchain.requests``, ``fallbackchain.attempts``,
``fallbackchain.retries``, ``fallbackchain.fallbacks``, ``fallbackchain.cache`` and
``fallbackchain.breaker.changes``; the gauge ``fallbackchain.breaker.open`` (1 while a tier's
breaker is open or half-open, else 0); histograms (seconds) ``fallbackchain.request.duration``,
``fallbackchain.attempt.duration`` and ``fallbackchain.time_to_first_token``. Attributes are
tier names, outcomes and error class names only: no prompt text, no cache key, no secret.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

try:
    from opentelemetry import metrics, trace
    from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation
    from opentelemetry.trace import Span, SpanKind, Status, StatusCode, TracerProvider
    from opentelemetry.util.types import AttributeValue
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "fallbackchain.otel needs the OpenTelemetry API: pip install 'fallbackchain[otel]'",
        name=exc.name,
    ) from exc

from . import __version__
from ._hooks import (
    AttemptEnded,
    AttemptStarted,
    BreakerChanged,
    CacheEvent,
    FallbackTaken,
    RequestEnded,
    RequestStarted,
    RetryScheduled,
)
from .breaker import BreakerState

__all__ = ["OpenTelemetryListener"]

_SCOPE: Final = "fallbackchain"

# gen_ai.operation.name per the GenAI semantic conventions: a well-known value MUST be used when
# one applies, and both the chat-completions and the Responses API are "chat" operations (a
# model answering a conversation). Which API it was is fallbackchain.api.
_OPERATION: Final = {"chat": "chat", "responses": "chat"}

# RequestEnded.error values that mean the caller stopped the request (neutral, not a failure).
_ABANDONED: Final = frozenset(
    {"GeneratorExit", "CancelledError", "KeyboardInterrupt", "closed early"}
)

# Seconds: from a cache hit (sub-millisecond) to a long generation behind retries.
_SECONDS_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
)  # fmt: skip

Attributes = dict[str, AttributeValue]


# The counters an OTelListener records: (name after "fallbackchain.", unit, description).
_COUNTERS: Final = (
    ("requests", "{request}", "Requests, by how they ended"),
    ("attempts", "{attempt}", "Attempts at live tiers"),
    ("retries", "{retry}", "Retries scheduled on a tier"),
    ("fallbacks", "{fallback}", "Requests moved from one tier to the next (or to the cache)"),
    ("cache", "{operation}", "Cache hits, misses and stores"),
    ("breaker.changes", "{change}", "Circuit breaker state changes"),
)


@dataclass(slots=True)
class _OpenRequest:
    span: Span
    attempts: dict[tuple[str, int], Span] = field(default_factory=dict)


class OpenTelemetryListener:
    """A chain listener that records spans and metrics through the OpenTelemetry API.

    ``tracer_provider`` and ``meter_provider`` default to the global providers (no-ops until an
    SDK is configured). One listener may serve several chains and threads: its state is
    guarded by a lock. At most ``max_open_requests`` request spans are kept open; past that the
    oldest is ended (``fallbackchain.outcome = "unfinished"``), so a request whose end is never
    reported (an async generator never closed, say) cannot leak.
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        max_open_requests: int = 10_000,
    ) -> None:
        if max_open_requests < 1:
            raise ValueError("max_open_requests must be >= 1")
        self._max_open = max_open_requests
        self._tracer = trace.get_tracer(_SCOPE, __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter(_SCOPE, __version__, meter_provider=meter_provider)
        self._lock = threading.Lock()
        self._open: OrderedDict[int, _OpenRequest] = OrderedDict()
        self._breakers: dict[str, BreakerState] = {}

        made = {
            name: meter.create_counter(f"fallbackchain.{name}", unit=unit, description=text)
            for name, unit, text in _COUNTERS
        }
        self._requests = made["requests"]
        self._attempts = made["attempts"]
        self._retries = made["retries"]
        self._fallbacks = made["fallbacks"]
        self._cache = made["cache"]
        self._breaker_changes = made["breaker.changes"]
        meter.create_observable_gauge(
            "fallbackchain.breaker.open",
            callbacks=[self._observe_breakers],
            unit="1",
            description="1 while a tier's breaker is open or half-open, 0 while closed",
        )
        self._request_duration = meter.create_histogram(
            "fallbackchain.request.duration",
            unit="s",
            description="Upstream time of a request (consumer pauses excluded)",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self._attempt_duration = meter.create_histogram(
            "fallbackchain.attempt.duration",
            unit="s",
            description="Duration of one attempt at a live tier",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )
        self._ttft = meter.create_histogram(
            "fallbackchain.time_to_first_token",
            unit="s",
            description="From an attempt's start to its first content",
            explicit_bucket_boundaries_advisory=_SECONDS_BUCKETS,
        )

    @property
    def open_requests(self) -> int:
        """How many request spans are open right now (0 once every request has ended)."""
        with self._lock:
            return len(self._open)

    # -- requests ---------------------------------------------------------------------------

    def on_request_start(self, event: RequestStarted) -> None:
        span = self._tracer.start_span(
            "fallbackchain.request",
            kind=SpanKind.INTERNAL,
            attributes={
                "gen_ai.operation.name": _OPERATION.get(event.api, event.api),
                "gen_ai.request.model": event.model,
                "fallbackchain.api": event.api,
                "fallbackchain.request_id": event.request_id,
                "fallbackchain.streaming": event.streaming,
            },
        )
        evicted: list[_OpenRequest] = []
        with self._lock:
            self._open[event.request_id] = _OpenRequest(span)
            while len(self._open) > self._max_open:
                evicted.append(self._open.popitem(last=False)[1])
        for stale in evicted:
            _end_request(stale, {"fallbackchain.outcome": "unfinished"})

    def on_request_end(self, event: RequestEnded) -> None:
        with self._lock:
            request = self._open.pop(event.request_id, None)
        if event.source is not None:
            outcome = "success"
            attributes: Attributes = {"fallbackchain.source": event.source}
        else:
            outcome = "abandoned" if event.error in _ABANDONED else "failure"
            attributes = {"error.type": event.error or "_OTHER"}
        attributes["fallbackchain.outcome"] = outcome
        self._requests.add(1, attributes)
        self._request_duration.record(event.duration, attributes)
        if request is None:
            return
        span_attributes: Attributes = {**attributes, "fallbackchain.attempts": event.attempts}
        # GenAI semantic conventions: what this answer was billed (0 for a cached answer)
        if event.input_tokens is not None:
            span_attributes["gen_ai.usage.input_tokens"] = event.input_tokens
        if event.output_tokens is not None:
            span_attributes["gen_ai.usage.output_tokens"] = event.output_tokens
        status = Status(StatusCode.ERROR, event.error) if outcome == "failure" else None
        _end_request(request, span_attributes, status)

    # -- attempts ---------------------------------------------------------------------------

    def on_attempt_start(self, event: AttemptStarted) -> None:
        with self._lock:
            # A granted permit: the breaker is closed (or half-open for a probe) unless a
            # change was already reported, which wins.
            self._breakers.setdefault(event.tier, "half-open" if event.probe else "closed")
            request = self._open.get(event.request_id)
        if request is None:
            return
        span = self._tracer.start_span(
            "fallbackchain.attempt",
            context=trace.set_span_in_context(request.span),
            kind=SpanKind.INTERNAL,
            attributes={
                "fallbackchain.tier": event.tier,
                "fallbackchain.attempt.number": event.number,
                "fallbackchain.attempt.probe": event.probe,
            },
        )
        with self._lock:
            kept = self._open.get(event.request_id) is request
            if kept:
                request.attempts[(event.tier, event.number)] = span
        if not kept:  # the request ended meanwhile: do not keep an orphan open
            span.end()

    def on_attempt_end(self, event: AttemptEnded) -> None:
        metric: Attributes = {
            "fallbackchain.tier": event.tier,
            "fallbackchain.outcome": event.outcome,
        }
        if event.error_type is not None:
            metric["error.type"] = event.error_type
        self._attempts.add(1, metric)
        self._attempt_duration.record(event.duration, metric)
        if event.time_to_first_token is not None:
            self._ttft.record(event.time_to_first_token, {"fallbackchain.tier": event.tier})
        with self._lock:
            request = self._open.get(event.request_id)
            span = request.attempts.pop((event.tier, event.number), None) if request else None
        if span is None:
            return
        span.set_attribute("fallbackchain.outcome", event.outcome)
        if event.error_type is not None:
            span.set_attribute("error.type", event.error_type)
        if event.status_code is not None:
            span.set_attribute("http.response.status_code", event.status_code)
        if event.time_to_first_token is not None:
            span.set_attribute("fallbackchain.time_to_first_token", event.time_to_first_token)
        if event.outcome == "failure":
            span.set_status(Status(StatusCode.ERROR, event.error_type))
        span.end()

    # -- steps between attempts -------------------------------------------------------------

    def on_retry(self, event: RetryScheduled) -> None:
        self._retries.add(1, {"fallbackchain.tier": event.tier})
        attributes: Attributes = {
            "fallbackchain.tier": event.tier,
            "fallbackchain.retry.delay": event.delay,
        }
        if event.retry_after is not None:
            attributes["fallbackchain.retry.retry_after"] = event.retry_after
        self._span_event(event.request_id, "fallbackchain.retry", attributes)

    def on_fallback(self, event: FallbackTaken) -> None:
        moved: Attributes = {
            "fallbackchain.from_tier": event.from_tier,
            "fallbackchain.to_tier": event.to_tier,
        }
        self._fallbacks.add(1, moved)
        # ``reason`` is an error class name and a fixed decision text: never request content.
        self._span_event(
            event.request_id,
            "fallbackchain.fallback",
            {**moved, "fallbackchain.fallback.reason": event.reason},
        )

    def on_cache(self, event: CacheEvent) -> None:
        self._cache.add(1, {"fallbackchain.cache.kind": event.kind})
        attributes: Attributes = {"fallbackchain.cache.kind": event.kind}
        if event.age is not None:
            attributes["fallbackchain.cache.age"] = event.age
        self._span_event(event.request_id, "fallbackchain.cache", attributes)

    # -- breakers ---------------------------------------------------------------------------

    def on_breaker_change(self, event: BreakerChanged) -> None:
        with self._lock:
            self._breakers[event.tier] = event.new
        self._breaker_changes.add(
            1,
            {
                "fallbackchain.tier": event.tier,
                "fallbackchain.breaker.from": event.old,
                "fallbackchain.breaker.to": event.new,
            },
        )

    def _observe_breakers(self, options: CallbackOptions) -> Iterable[Observation]:
        with self._lock:
            states = list(self._breakers.items())
        return [
            Observation(0 if state == "closed" else 1, {"fallbackchain.tier": tier})
            for tier, state in states
        ]

    # -- helpers ----------------------------------------------------------------------------

    def _span_event(self, request_id: int, name: str, attributes: Attributes) -> None:
        with self._lock:
            request = self._open.get(request_id)
        if request is not None:
            request.span.add_event(name, attributes)


def _end_request(
    request: _OpenRequest, attributes: Attributes, status: Status | None = None
) -> None:
    """End the attempt spans still open (as abandoned), then the request span."""
    for span in request.attempts.values():
        span.set_attribute("fallbackchain.outcome", "abandoned")
        span.end()
    request.attempts.clear()
    request.span.set_attributes(attributes)
    if status is not None:
        request.span.set_status(status)
    request.span.end()
