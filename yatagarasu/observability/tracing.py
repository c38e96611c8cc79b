"""
The process's OpenTelemetry tracer (``observability.tracing``): its own ``TracerProvider``
(never the global one, so that every process and every test has its own), the W3C trace
context read from requests, and the service that exports spans and flushes them at shutdown.

Export never runs on the reactor thread: spans ended on it are queued (bounded) in a
``BatchSpanProcessor``, whose thread sends them. That processor is attached when the
service starts (after twistd has daemonized; ``--check`` starts no thread), and the last flush
at stop runs in a thread of its own with a deadline, so an unreachable collector never holds
up the exit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import SpanKind
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from yatagarasu import __version__
from yatagarasu.config.schema import TracingConfig
from yatagarasu.observability.timings import (
    PROPAGATOR,
    Attributes,
    RequestTimings,
    nanoseconds,
)

log = Logger()
span_log = Logger(namespace="yatagarasu.spans")

#: seconds one export to the collector may take (the exporter's own timeout)
EXPORT_TIMEOUT_SECONDS = 4.0
#: seconds the last flush at shutdown may take before the process goes on without it
SHUTDOWN_DEADLINE_SECONDS = 5.0
#: spans queued for export at most (more are dropped, never blocking a request)
MAX_QUEUED_SPANS = 2048
#: milliseconds between exports
EXPORT_INTERVAL_MS = 1000


class _HeadersGetter(Getter[Headers]):
    """Reads ``traceparent`` / ``tracestate`` from Twisted ``Headers``."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        values = carrier.getRawHeaders(key.encode("latin-1"))
        return [value.decode("latin-1") for value in values] if values else None

    def keys(self, carrier: Headers) -> list[str]:
        return [name.decode("latin-1") for name, _ in carrier.getAllRawHeaders()]


_GETTER = _HeadersGetter()

#: makes a span processor (with its exporter) when the service starts
ProcessorFactory = Callable[[], SpanProcessor]
#: runs a blocking call off the reactor thread; the Deferred fires when it returned
ThreadRunner = Callable[[Callable[[], object]], Deferred[None]]


class Tracing:
    """
    The process's tracer.

    :param config: the ``observability.tracing`` section (enabled).
    :param clock: span timestamps come from it (the reactor: epoch seconds).
    :param processor: makes the span processor that exports (``None``: spans are made,
        propagated and logged by id, and exported nowhere: ``exporter: none``).
    :param run_in_thread: runs the shutdown flush off the reactor thread.
    """

    def __init__(
        self,
        config: TracingConfig,
        clock: IReactorTime,
        processor: ProcessorFactory | None,
        run_in_thread: ThreadRunner,
    ) -> None:
        self.config = config
        self._clock = clock
        self._processor = processor
        self._run_in_thread = run_in_thread
        self.propagate = config.propagate_context
        self.provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(config.sampling_ratio)),
            resource=Resource.create(
                {"service.name": config.service_name, "service.version": __version__}
            ),
            shutdown_on_exit=False,
        )
        self.tracer = self.provider.get_tracer("yatagarasu", __version__)

    def start(
        self, headers: Headers, started: float, method: str, attributes: Attributes
    ) -> RequestTimings:
        """
        Start a request's server span (continuing an incoming ``traceparent`` when
        ``propagate_context`` is on) and its timing record.

        :param headers: the request's headers.
        :param started: when it arrived (clock seconds).
        :param method: the request method (the span's name).
        :param attributes: the span's first attributes (method, path, client...).
        :returns: the request's timing record, carrying the span.
        """
        parent = Context()
        if self.propagate and headers.hasHeader(b"traceparent"):
            parent = PROPAGATOR.extract(headers, parent, _GETTER)
        span = self.tracer.start_span(
            method, parent, SpanKind.SERVER, attributes, start_time=nanoseconds(started)
        )
        return RequestTimings(self._clock, started, self.tracer, span, propagate=self.propagate)

    def services(self) -> list[Service]:
        """:returns: the exporting service (none for ``exporter: none``)."""
        if self._processor is None:
            return []
        return [_ExportService(self, self._processor, self._run_in_thread, self._clock)]


class _ExportService(Service):
    """Attaches the exporting span processor at start; flushes and shuts it down at stop."""

    name = "tracing-export"

    def __init__(
        self,
        tracing: Tracing,
        processor: ProcessorFactory,
        run_in_thread: ThreadRunner,
        clock: IReactorTime,
    ) -> None:
        self._tracing = tracing
        self._processor = processor
        self._run_in_thread = run_in_thread
        self._clock = clock
        self._attached = False

    def startService(self) -> None:
        super().startService()
        if not self._attached:
            self._tracing.provider.add_span_processor(self._processor())
            self._attached = True

    def stopService(self) -> Deferred[None]:
        super().stopService()
        done = self._run_in_thread(self._tracing.provider.shutdown)
        done.addTimeout(SHUTDOWN_DEADLINE_SECONDS, self._clock)
        return done.addErrback(self._late)

    def _late(self, failure: Failure) -> None:
        if failure.check(TimeoutError):
            log.warn(
                "spans not flushed within {seconds:g}s at shutdown: going on without them",
                seconds=SHUTDOWN_DEADLINE_SECONDS,
            )
        else:
            log.failure("flushing spans at shutdown failed", failure)


def in_daemon_thread(reactor: Any) -> ThreadRunner:
    """
    :param reactor: provides ``callFromThread``.
    :returns: a runner starting each call in a daemon thread of its own (which never keeps
        the process alive), its Deferred fired on the reactor thread.
    """

    def run(work: Callable[[], object]) -> Deferred[None]:
        done: Deferred[None] = Deferred()

        def fire(failure: Failure | None) -> None:
            if not done.called:  # not given up on (the deadline)
                done.callback(None) if failure is None else done.errback(failure)

        def body() -> None:
            try:
                work()
            except BaseException:
                reactor.callFromThread(fire, Failure())
            else:
                reactor.callFromThread(fire, None)

        threading.Thread(target=body, name="yatagarasu-tracing", daemon=True).start()
        return done

    return run


class _LogStream:
    """Where the console exporter writes: each span a log event (from the reactor thread)."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor

    def write(self, text: str) -> int:
        self._reactor.callFromThread(span_log.info, "{span}", span=text.rstrip("\n"))
        return len(text)

    def flush(self) -> None:
        """Nothing is buffered."""


def _one_line(span: ReadableSpan) -> str:
    return str(span.to_json(indent=None)) + "\n"


def exporting_processor(config: TracingConfig, reactor: Any) -> ProcessorFactory | None:
    """
    :param config: the ``observability.tracing`` section.
    :param reactor: the console exporter logs through it.
    :returns: what makes the batch processor of the configured exporter (``None`` for
        ``exporter: none``).
    """
    if config.exporter == "none":
        return None

    def make() -> SpanProcessor:
        exporter: Any
        if config.exporter == "otlp":
            # Imported here: it brings requests and protobuf (~0.4 s), only where spans go out.
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter(endpoint=config.traces_url, timeout=EXPORT_TIMEOUT_SECONDS)
        else:
            exporter = ConsoleSpanExporter(
                service_name=config.service_name,
                out=_LogStream(reactor),  # type: ignore[arg-type]
                formatter=_one_line,
            )
        return BatchSpanProcessor(
            exporter,
            max_queue_size=MAX_QUEUED_SPANS,
            schedule_delay_millis=EXPORT_INTERVAL_MS,
            export_timeout_millis=EXPORT_TIMEOUT_SECONDS * 1000,
        )

    return make


def build_tracing(config: TracingConfig, reactor: Any) -> Tracing | None:
    """
    :param config: the ``observability.tracing`` section.
    :param reactor: time and ``callFromThread``.
    :returns: the process's tracer, or ``None`` when tracing is off (no span is ever made).
    """
    if not config.enabled:
        return None
    return Tracing(config, reactor, exporting_processor(config, reactor), in_daemon_thread(reactor))
