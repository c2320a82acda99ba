"""OpenTelemetry: spans per request and attempt, and metrics, read back from the SDK's in-memory
exporters while a real chain talks to the fault server. Providers are passed explicitly; no
global is set."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading

import openai
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from fallbackchain import AllTiersFailedError, AsyncFallbackChain
from fallbackchain._hooks import RequestEnded, RequestStarted
from fallbackchain.otel import OpenTelemetryListener
from fallbackchain.testing import Fault

from .conftest import make_config, user

PROMPT = "a private question about my invoice"


class Telemetry:
    """An SDK tracer and meter provider with in-memory exporters, and a listener using them."""

    def __init__(self, **listener_options):
        self.exporter = InMemorySpanExporter()
        self.tracer_provider = TracerProvider()
        self.tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.meter_provider = MeterProvider(metric_readers=[self.reader])
        self.listener = OpenTelemetryListener(
            tracer_provider=self.tracer_provider,
            meter_provider=self.meter_provider,
            **listener_options,
        )

    def spans(self, name):
        return [s for s in self.exporter.get_finished_spans() if s.name == name]

    def metrics(self):
        data = self.reader.get_metrics_data()
        found = {}
        for resource in data.resource_metrics if data else ():
            for scope in resource.scope_metrics:
                assert scope.scope.name == "fallbackchain"
                for metric in scope.metrics:
                    found[metric.name] = metric
        return found

    def points(self, name):
        """``{frozenset(attributes): value}``; a histogram's value is its count."""
        metric = self.metrics()[name]
        return {
            frozenset(p.attributes.items()): getattr(p, "value", getattr(p, "count", None))
            for p in metric.data.data_points
        }

    def close(self):
        self.tracer_provider.shutdown()
        self.meter_provider.shutdown()


def attrs(**pairs):
    return frozenset((k.replace("__", "."), v) for k, v in pairs.items())


@pytest.fixture
def otel():
    telemetry = Telemetry()
    yield telemetry
    telemetry.close()


def all_attribute_text(otel):
    parts = []
    for span in otel.exporter.get_finished_spans():
        parts.append(repr(dict(span.attributes)))
        parts.extend(repr(dict(e.attributes)) for e in span.events)
    for metric in otel.metrics().values():
        parts.extend(repr(dict(p.attributes)) for p in metric.data.data_points)
    return "\n".join(parts)


# -- spans -------------------------------------------------------------------------------------


def test_a_request_is_one_span_with_a_child_span_per_attempt(otel, make_chain, server):
    chain = make_chain(otel.listener)
    chain.complete(user(PROMPT))
    [request] = otel.spans("fallbackchain.request")
    [attempt] = otel.spans("fallbackchain.attempt")
    assert attempt.parent.span_id == request.context.span_id
    assert attempt.context.trace_id == request.context.trace_id
    assert request.attributes["fallbackchain.source"] == "stream"
    assert request.attributes["fallbackchain.attempts"] == 1
    assert request.attributes["fallbackchain.outcome"] == "success"
    assert request.attributes["gen_ai.request.model"] == "test-model"
    assert "error.type" not in request.attributes
    assert request.status.status_code is StatusCode.UNSET
    assert attempt.attributes["fallbackchain.tier"] == "stream"
    assert attempt.attributes["fallbackchain.attempt.number"] == 1
    assert attempt.attributes["fallbackchain.attempt.probe"] is False
    assert attempt.attributes["fallbackchain.outcome"] == "success"
    assert attempt.attributes["fallbackchain.time_to_first_token"] >= 0
    assert request.start_time <= attempt.start_time <= attempt.end_time <= request.end_time
    assert otel.listener.open_requests == 0


def test_the_request_span_names_its_api_and_a_semconv_operation(otel, make_chain, server):
    chain = make_chain(otel.listener)
    chain.complete(user(PROMPT))
    chain.responses.create(input=PROMPT)
    chat, responses = sorted(otel.spans("fallbackchain.request"), key=lambda s: s.start_time)
    assert chat.attributes["fallbackchain.api"] == "chat"
    assert responses.attributes["fallbackchain.api"] == "responses"
    # both are "chat" operations: a well-known value MUST be used when one applies
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert responses.attributes["gen_ai.operation.name"] == "chat"
    assert responses.attributes["fallbackchain.outcome"] == "success"


def test_a_retried_attempt_is_a_failed_child_span_and_a_retry_event(otel, make_chain, server):
    chain = make_chain(otel.listener)
    server.push(Fault.status(503), stream=True)
    chain.complete(user(PROMPT))
    [request] = otel.spans("fallbackchain.request")
    failed, ok = sorted(otel.spans("fallbackchain.attempt"), key=lambda s: s.start_time)
    assert {failed.parent.span_id, ok.parent.span_id} == {request.context.span_id}
    assert failed.attributes["fallbackchain.outcome"] == "failure"
    assert failed.attributes["error.type"] == "ServerError"
    assert failed.attributes["http.response.status_code"] == 503
    assert failed.status.status_code is StatusCode.ERROR
    assert (ok.attributes["fallbackchain.attempt.number"], ok.status.status_code) == (
        2, StatusCode.UNSET)
    assert request.attributes["fallbackchain.attempts"] == 2
    [retry] = [e for e in request.events if e.name == "fallbackchain.retry"]
    assert retry.attributes["fallbackchain.tier"] == "stream"
    assert retry.attributes["fallbackchain.retry.delay"] == pytest.approx(0.005)


def test_a_request_nothing_answers_is_an_error_span_with_its_error_type(otel, make_chain, server):
    chain = make_chain(otel.listener)
    server.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):
        chain.complete(user(PROMPT))
    [request] = otel.spans("fallbackchain.request")
    assert request.status.status_code is StatusCode.ERROR
    assert request.attributes["error.type"] == "AllTiersFailedError"
    assert request.attributes["fallbackchain.outcome"] == "failure"
    assert "fallbackchain.source" not in request.attributes
    assert [e.attributes["fallbackchain.cache.kind"] for e in request.events
            if e.name == "fallbackchain.cache"] == ["miss"]
    # a 503 is the route's fault: its retry budget (3 attempts, whichever tier) is spent once
    assert len(otel.spans("fallbackchain.attempt")) == 3


def test_closing_a_stream_early_is_abandoned_not_an_error(otel, make_chain, server):
    chain = make_chain(otel.listener)
    with chain.stream(user(PROMPT)) as stream:
        next(stream)
    [request] = otel.spans("fallbackchain.request")
    [attempt] = otel.spans("fallbackchain.attempt")
    assert request.attributes["fallbackchain.outcome"] == "abandoned"
    assert request.attributes["error.type"] == "GeneratorExit"
    assert request.status.status_code is StatusCode.UNSET
    assert attempt.attributes["fallbackchain.outcome"] == "abandoned"
    assert attempt.status.status_code is StatusCode.UNSET
    assert otel.listener.open_requests == 0


def test_the_request_span_is_a_child_of_the_callers_current_span(otel, make_chain, server):
    chain = make_chain(otel.listener)
    tracer = otel.tracer_provider.get_tracer("app")
    with tracer.start_as_current_span("handler") as handler:
        chain.complete(user(PROMPT))
    [request] = otel.spans("fallbackchain.request")
    assert request.parent.span_id == handler.get_span_context().span_id


def test_async_chain_spans_nest_the_same_way(otel, server, tmp_path, clock):
    async def go():
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="k")
        chain = AsyncFallbackChain(make_config(tmp_path, server.base_url), client=client,
                                   clock=clock, sleep=clock.async_sleep, random=lambda: 0.5,
                                   listeners=[otel.listener])
        async with chain:
            server.push(Fault.drop(after_chunks=3), stream=True)
            response = await chain.complete(user(PROMPT))
        await client.close()
        return response

    assert asyncio.run(go()).source == "stream"
    [request] = otel.spans("fallbackchain.request")
    attempts = otel.spans("fallbackchain.attempt")
    assert [a.attributes["fallbackchain.outcome"] for a in attempts] == ["failure", "success"]
    assert all(a.parent.span_id == request.context.span_id for a in attempts)
    assert otel.listener.open_requests == 0


def test_concurrent_requests_keep_their_attempts_under_their_own_span(otel, make_chain, server):
    chain = make_chain(otel.listener)
    threads = [threading.Thread(target=chain.complete, args=(user(f"q{i}"),)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    requests = otel.spans("fallbackchain.request")
    attempts = otel.spans("fallbackchain.attempt")
    assert len(requests) == len(attempts) == 16
    assert {a.parent.span_id for a in attempts} == {r.context.span_id for r in requests}
    assert otel.listener.open_requests == 0


def test_a_request_whose_end_is_never_reported_cannot_leak():
    telemetry = Telemetry(max_open_requests=2)
    try:
        for request_id in (1, 2, 3):
            telemetry.listener.on_request_start(RequestStarted(request_id, None, "m", True))
        assert telemetry.listener.open_requests == 2
        [evicted] = telemetry.spans("fallbackchain.request")
        assert evicted.attributes["fallbackchain.request_id"] == 1
        assert evicted.attributes["fallbackchain.outcome"] == "unfinished"
        telemetry.listener.on_request_end(RequestEnded(1, "stream", None, 0.1, 1))  # late: ignored
        for request_id in (2, 3):
            telemetry.listener.on_request_end(RequestEnded(request_id, "stream", None, 0.1, 1))
        assert telemetry.listener.open_requests == 0
    finally:
        telemetry.close()


def test_no_prompt_and_no_secret_reach_spans_or_metrics(otel, make_chain, server):
    chain = make_chain(otel.listener)
    chain.complete(user(PROMPT))
    server.default = Fault.status(503)
    chain.complete(user(PROMPT))
    text = all_attribute_text(otel)
    assert "fallbackchain.source" in text
    assert PROMPT not in text and "invoice" not in text
    assert "SECRET" not in text
    assert chain.cache_key(user(PROMPT)) not in text


# -- metrics -----------------------------------------------------------------------------------


def test_a_success_counts_one_request_by_source_and_records_latencies(otel, make_chain, server):
    chain = make_chain(otel.listener)
    chain.complete(user(PROMPT))
    ok = attrs(fallbackchain__source="stream", fallbackchain__outcome="success")
    assert otel.points("fallbackchain.requests") == {ok: 1}
    assert otel.points("fallbackchain.attempts") == {
        attrs(fallbackchain__tier="stream", fallbackchain__outcome="success"): 1}
    assert otel.points("fallbackchain.request.duration") == {ok: 1}
    assert otel.points("fallbackchain.attempt.duration") == {
        attrs(fallbackchain__tier="stream", fallbackchain__outcome="success"): 1}
    assert otel.points("fallbackchain.time_to_first_token") == {
        attrs(fallbackchain__tier="stream"): 1}
    assert otel.points("fallbackchain.cache") == {attrs(fallbackchain__cache__kind="store"): 1}
    assert otel.points("fallbackchain.breaker.open") == {attrs(fallbackchain__tier="stream"): 0}
    histogram = otel.metrics()["fallbackchain.request.duration"]
    assert histogram.unit == "s"
    assert histogram.data.data_points[0].explicit_bounds[0] == 0.005  # seconds, not ms


def test_a_retry_counts_the_failed_attempt_and_the_retry(otel, make_chain, server):
    chain = make_chain(otel.listener)
    server.push(Fault.status(503), stream=True)
    chain.complete(user(PROMPT))
    assert otel.points("fallbackchain.retries") == {attrs(fallbackchain__tier="stream"): 1}
    assert otel.points("fallbackchain.attempts") == {
        attrs(fallbackchain__tier="stream", fallbackchain__outcome="failure",
              error__type="ServerError"): 1,
        attrs(fallbackchain__tier="stream", fallbackchain__outcome="success"): 1,
    }
    assert otel.points("fallbackchain.requests") == {
        attrs(fallbackchain__source="stream", fallbackchain__outcome="success"): 1}


def test_a_fallback_to_the_cache_counts_each_move_and_the_hit(otel, make_chain, server):
    chain = make_chain(otel.listener)
    chain.complete(user(PROMPT))
    server.default = Fault.status(503)
    assert chain.complete(user(PROMPT)).source == "cache"
    # the route's budget is spent on the stream tier: the whole route is skipped at once
    assert otel.points("fallbackchain.fallbacks") == {
        attrs(fallbackchain__from_tier="stream", fallbackchain__to_tier="cache"): 1,
    }
    assert otel.points("fallbackchain.cache") == {
        attrs(fallbackchain__cache__kind="store"): 1,
        attrs(fallbackchain__cache__kind="hit"): 1,
    }
    assert otel.points("fallbackchain.requests") == {
        attrs(fallbackchain__source="stream", fallbackchain__outcome="success"): 1,
        attrs(fallbackchain__source="cache", fallbackchain__outcome="success"): 1,
    }
    [_, cached] = sorted(otel.spans("fallbackchain.request"), key=lambda s: s.start_time)
    assert cached.attributes["fallbackchain.source"] == "cache"
    assert [e.name for e in cached.events].count("fallbackchain.fallback") == 1


def test_an_open_breaker_is_a_gauge_of_one_and_a_counted_change(otel, make_chain, server):
    chain = make_chain(otel.listener, breaker__fail_max=3)
    server.default = Fault.status(503)
    for _ in range(2):  # the first request opens the stream breaker, the second the completion's
        with pytest.raises(AllTiersFailedError):
            chain.complete(user(PROMPT))
    assert chain.breaker_states() == {"stream": "open", "completion": "open"}
    assert otel.points("fallbackchain.breaker.open") == {
        attrs(fallbackchain__tier="stream"): 1,
        attrs(fallbackchain__tier="completion"): 1,
    }
    assert otel.points("fallbackchain.breaker.changes") == {
        attrs(fallbackchain__tier=tier, fallbackchain__breaker__from="closed",
              fallbackchain__breaker__to="open"): 1
        for tier in ("stream", "completion")
    }
    assert otel.points("fallbackchain.requests") == {
        attrs(error__type="AllTiersFailedError", fallbackchain__outcome="failure"): 2}
    assert otel.points("fallbackchain.cache") == {attrs(fallbackchain__cache__kind="miss"): 2}


def test_a_breaker_that_closes_again_reads_zero(otel, make_chain, server, clock):
    chain = make_chain(otel.listener, breaker__fail_max=3)
    server.default = Fault.status(503)
    with pytest.raises(AllTiersFailedError):
        chain.complete(user(PROMPT))
    server.default = Fault.ok()
    clock.advance(3.0)  # past reset_timeout: one probe closes the stream breaker
    assert chain.complete(user(PROMPT)).source == "stream"
    points = otel.points("fallbackchain.breaker.open")
    assert points[attrs(fallbackchain__tier="stream")] == 0
    [probe] = [s for s in otel.spans("fallbackchain.attempt")
               if s.attributes["fallbackchain.attempt.probe"]]
    assert probe.attributes["fallbackchain.outcome"] == "success"


# -- costing nothing when not installed --------------------------------------------------------


def run_python(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.slow  # a subprocess
def test_importing_fallbackchain_does_not_import_opentelemetry():
    # redis >= 8 imports the OpenTelemetry SDK when both are installed, and pybreaker imports
    # redis when it can: block redis so that only fallbackchain's own imports are measured.
    result = run_python(
        "import sys; sys.modules['redis'] = None\n"
        "import fallbackchain, fallbackchain.testing\n"
        "leaked = sorted(m for m in sys.modules if m.split('.')[0] == 'opentelemetry')\n"
        "assert not leaked, leaked\n"
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.slow  # a subprocess
def test_the_otel_module_names_the_extra_when_opentelemetry_is_missing():
    result = run_python(
        "import sys; sys.modules['opentelemetry'] = None; sys.modules['redis'] = None\n"
        "import fallbackchain\n"
        "fallbackchain.FallbackChain  # the library works without it\n"
        "try:\n"
        "    import fallbackchain.otel\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    raise SystemExit('imported without opentelemetry')\n"
    )
    assert result.returncode == 0, result.stderr
    assert "pip install 'fallbackchain[otel]'" in result.stdout


def test_request_spans_carry_the_billed_usage_and_zero_for_a_cached_answer(
    otel, make_chain, server
):
    chain = make_chain(otel.listener)
    live = chain.complete(user(PROMPT))
    server.default = Fault.status(503)
    assert chain.complete(user(PROMPT)).source == "cache"
    first, second = sorted(otel.spans("fallbackchain.request"), key=lambda s: s.start_time)
    assert first.attributes["gen_ai.usage.input_tokens"] == live.completion.usage.prompt_tokens
    assert first.attributes["gen_ai.usage.output_tokens"] == live.completion.usage.completion_tokens
    assert second.attributes["gen_ai.usage.input_tokens"] == 0
    assert second.attributes["gen_ai.usage.output_tokens"] == 0
