"""One request's timing record on a fake clock: stage totals, spans, idempotent ends."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from yatagarasu.observability.timings import AUTH, CACHE_LOOKUP, RequestTimings


def traced_timings(clock: Clock) -> tuple[RequestTimings, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    server = tracer.start_span("GET", start_time=0)
    return RequestTimings(clock, clock.seconds(), tracer, server, propagate=True), exporter


def test_stage_totals_add_up_on_the_clock_without_spans() -> None:
    clock = Clock()
    timings = RequestTimings(clock, 0.0)
    first = timings.begin(AUTH, "auth")
    assert first.span is None and timings.trace_id is None
    clock.advance(0.2)
    first.end()
    second = timings.begin(AUTH)
    clock.advance(0.05)
    assert second.end() == 0.25
    assert timings.seconds(AUTH) == 0.25
    assert timings.seconds(CACHE_LOOKUP) == 0.0
    clock.advance(1)
    second.end()  # again: nothing more is added
    assert timings.seconds(AUTH) == 0.25
    headers = Headers()
    first.inject(headers)
    assert headers.getRawHeaders(b"traceparent") is None


def test_a_failed_stage_ends_its_span_once_with_an_error() -> None:
    clock = Clock()
    timings, exporter = traced_timings(clock)
    stage = timings.begin(AUTH, "auth")
    failing: Deferred[None] = Deferred()
    failing.addBoth(stage.settle)
    failing.addErrback(lambda failure: None)
    clock.advance(0.5)
    failing.errback(Failure(ValueError("bad token")))
    stage.end()
    [span] = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert (span.attributes or {})["error.type"] == "ValueError"
    assert span.end_time == int(0.5 * 1e9)
    assert timings.seconds(AUTH) == 0.5


def test_children_of_a_stage_and_the_context_sent_on() -> None:
    clock = Clock()
    timings, exporter = traced_timings(clock)
    lookup = timings.begin(CACHE_LOOKUP, "cache.lookup")
    lookup.child("cache.get memory", 0.0, 0.001, {"yatagarasu.cache.hit": False})
    lookup.end()
    attempt = timings.begin(None, "S3 GET")
    headers = Headers()
    attempt.inject(headers)
    attempt.end({"http.response.status_code": 200})
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert spans["cache.get memory"].parent is not None
    assert spans["cache.get memory"].parent.span_id == spans["cache.lookup"].context.span_id
    assert spans["cache.get memory"].end_time == 1_000_000
    [traceparent] = headers.getRawHeaders(b"traceparent")
    assert traceparent.decode().split("-")[2] == f"{spans['S3 GET'].context.span_id:016x}"
    assert timings.trace_id == f"{spans['S3 GET'].context.trace_id:032x}"
