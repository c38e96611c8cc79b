"""The process's tracer on a fake clock: built from config, its own provider, export service."""

from __future__ import annotations

from collections.abc import Callable

from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, globalLogPublisher
from twisted.web.http_headers import Headers

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from tests.unit.observability.tracing_harness import traced
from yatagarasu.config.schema import TracingConfig
from yatagarasu.observability.tracing import (
    SHUTDOWN_DEADLINE_SECONDS,
    Tracing,
    _LogStream,
    build_tracing,
    exporting_processor,
)
from yatagarasu.tap import summary

ON = TracingConfig(enabled=True)


def run_now(work: Callable[[], object]) -> Deferred[None]:
    work()
    return succeed(None)


def in_memory(exporter: InMemorySpanExporter) -> Callable[[], SpanProcessor]:
    return lambda: SimpleSpanProcessor(exporter)


def one_span(tracing: Tracing, clock: Clock) -> None:
    timings = tracing.start(Headers(), clock.seconds(), "GET", {})
    timings.finish(clock.seconds(), {"http.response.status_code": 200}, server_error=False)


def test_off_builds_nothing_and_none_exports_nowhere() -> None:
    clock = Clock()
    assert build_tracing(TracingConfig(), clock) is None
    silent = build_tracing(TracingConfig(enabled=True, exporter="none"), clock)
    assert silent is not None and silent.services() == []
    assert exporting_processor(TracingConfig(enabled=True, exporter="none"), clock) is None
    exporting = build_tracing(ON, clock)
    assert exporting is not None and len(exporting.services()) == 1


def test_each_tracer_has_its_own_provider_and_the_global_one_is_untouched() -> None:
    clock = Clock()
    first_spans, second_spans = InMemorySpanExporter(), InMemorySpanExporter()
    first = Tracing(ON, clock, in_memory(first_spans), run_now)
    second = Tracing(ON, clock, in_memory(second_spans), run_now)
    for tracing in (first, second):
        for service in tracing.services():
            service.startService()
    one_span(first, clock)
    assert (len(first_spans.get_finished_spans()), len(second_spans.get_finished_spans())) == (1, 0)
    assert first.provider is not second.provider
    assert not isinstance(trace.get_tracer_provider(), TracerProvider)


def test_the_service_exports_from_its_start_and_flushes_at_stop() -> None:
    clock = Clock()
    spans = InMemorySpanExporter()
    made: list[SpanProcessor] = []

    def factory() -> SpanProcessor:
        made.append(SimpleSpanProcessor(spans))
        return made[-1]

    tracing = Tracing(ON, clock, factory, run_now)
    [service] = tracing.services()
    one_span(tracing, clock)  # before the start (--check, before daemonizing): not exported
    assert made == [] and spans.get_finished_spans() == ()
    service.startService()
    one_span(tracing, clock)
    assert len(spans.get_finished_spans()) == 1
    stopped = service.stopService()
    assert stopped.called
    one_span(tracing, clock)  # after the shutdown the provider exports nothing
    assert len(spans.get_finished_spans()) == 1
    assert len(made) == 1


def test_the_last_flush_has_a_deadline() -> None:
    clock = Clock()
    hanging: list[Deferred[None]] = []

    def never(work: Callable[[], object]) -> Deferred[None]:
        hanging.append(Deferred())
        return hanging[-1]

    tracing = Tracing(ON, clock, in_memory(InMemorySpanExporter()), never)
    [service] = tracing.services()
    service.startService()
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        stopped = service.stopService()
        clock.advance(SHUTDOWN_DEADLINE_SECONDS - 0.5)
        assert not stopped.called
        clock.advance(0.5)
        assert stopped.called
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert any("spans not flushed" in e.get("log_format", "") for e in events)


class _CallNow:
    def callFromThread(self, f: Callable[..., object], *args: object, **kwargs: object) -> None:
        f(*args, **kwargs)


def test_the_console_exporter_writes_log_events_from_the_reactor_thread() -> None:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        assert _LogStream(_CallNow()).write('{"name": "GET"}\n') == 16
    finally:
        globalLogPublisher.removeObserver(events.append)
    [event] = [e for e in events if e.get("log_namespace") == "yatagarasu.spans"]
    assert event["span"] == '{"name": "GET"}'


def test_a_sampling_ratio_of_zero_records_no_span_but_keeps_trace_ids() -> None:
    h, exporter = traced(tracing={"sampling_ratio": 0.0})
    _, transport = h.get("/pub/a.txt")
    [sent] = h.agents["pub"].sent
    h.agents["pub"].answer(FakeResponse(200, {}, body=b"x"))
    assert parse_response(transport.value()).status == 200
    assert exporter.get_finished_spans() == ()
    [traceparent] = sent.headers.getRawHeaders(b"traceparent")
    flags = int(traceparent.rsplit(b"-", 1)[1], 16)
    assert flags & 1 == 0  # not sampled, still one trace with S3


def test_check_summary_says_where_spans_go() -> None:
    h, _ = traced(
        tracing={"exporter": "otlp", "otlp_endpoint": "http://127.0.0.1:4318"},
        slow_query={"enabled": True, "threshold_ms": 250},
    )
    text = summary("yatagarasu.yaml", h.assembly)
    assert (
        "tracing: otlp to http://127.0.0.1:4318/v1/traces, sampling 1, traceparent in and to S3\n"
        in text
    )
    assert "slow-request log: over 250 ms\n" in text
    plain = Harness({"buckets": [bucket_entry()]})
    assert "tracing" not in summary("yatagarasu.yaml", plain.assembly)
    assert "slow-request" not in summary("yatagarasu.yaml", plain.assembly)
