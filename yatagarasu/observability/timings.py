"""
The timing record of one request: how long it spent in authentication, the cache lookup and
waiting for S3's first byte, and when its body started, all on the injected clock. When the
request is traced, each measured stage is also an OpenTelemetry span, child of the request's
server span: the slow-request log and the trace are made from the same measurements.

A request carries one :class:`RequestTimings` only when tracing or the slow-request log is on;
otherwise ``request.timings`` is ``None`` and no stage is measured (the memory-hit path makes
no object for it at all).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from opentelemetry.context import Context
from opentelemetry.propagators.textmap import Setter
from opentelemetry.trace import (
    Span,
    SpanKind,
    Status,
    StatusCode,
    Tracer,
    format_trace_id,
    set_span_in_context,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

#: stages whose time the slow-request log reports (:attr:`RequestTimings.totals` keys)
AUTH = "auth"
CACHE_LOOKUP = "cache_lookup"
UPSTREAM_FIRST_BYTE = "upstream_first_byte"

Attributes = Mapping[str, str | bool | int | float]

T = TypeVar("T")

PROPAGATOR = TraceContextTextMapPropagator()


class _HeadersSetter(Setter[Headers]):
    """Writes ``traceparent`` / ``tracestate`` into Twisted ``Headers``."""

    def set(self, carrier: Headers, key: str, value: str) -> None:
        carrier.setRawHeaders(key.encode("latin-1"), [value.encode("latin-1")])


_SETTER = _HeadersSetter()


def nanoseconds(seconds: float) -> int:
    """
    :param seconds: epoch seconds (the clock's).
    :returns: epoch nanoseconds (what OpenTelemetry timestamps are).
    """
    return int(seconds * 1e9)


class Phase:
    """
    One measured stage of a request (authentication, a cache lookup, an S3 attempt...):
    started when it was made (:meth:`RequestTimings.begin`), over at :meth:`end` (later calls
    do nothing).

    :ivar started: when it began (clock seconds).
    :ivar span: its span, when the request is traced and the stage has one.
    """

    __slots__ = ("_done", "_stage", "_timings", "span", "started")

    def __init__(
        self, timings: RequestTimings, stage: str | None, started: float, span: Span | None
    ) -> None:
        self._timings = timings
        self._stage = stage
        self._done = False
        self.started = started
        self.span = span

    @property
    def context(self) -> Context | None:
        """The context whose current span is this stage's (for child spans), if it has one."""
        return set_span_in_context(self.span) if self.span is not None else None

    def end(self, attributes: Attributes | None = None, error: object = None) -> float:
        """
        The stage is over: add its time to its stage total, end its span.

        :param attributes: set on the span first.
        :param error: what went wrong (an exception or a text): the span's status is then
            ``ERROR`` with ``error.type``.
        :returns: when it ended (clock seconds).
        """
        now = self._timings.clock.seconds()
        if self._done:
            return now
        self._done = True
        if self._stage is not None:
            totals = self._timings.totals
            totals[self._stage] = totals.get(self._stage, 0.0) + now - self.started
        span = self.span
        if span is not None:
            if attributes:
                span.set_attributes(attributes)
            if error is not None:
                described = error if isinstance(error, str) else type(error).__name__
                span.set_attribute("error.type", described)
                span.set_status(Status(StatusCode.ERROR, str(error)))
            span.end(end_time=nanoseconds(now))
        return now

    def settle(self, result: T) -> T:
        """
        :meth:`end`, as a Deferred callback for success and failure alike (``addBoth``).

        :param result: what the Deferred carries (a ``Failure`` ends the stage as failed).
        :returns: ``result``, passed on.
        """
        if isinstance(result, Failure):
            self.end(error=result.value)
        else:
            self.end()
        return result

    def child(self, name: str, started: float, ended: float, attributes: Attributes) -> None:
        """
        Record a sub-step measured by the caller (a cache layer's answer) as a child span.

        :param name: the span name.
        :param started: when it began (clock seconds).
        :param ended: when it ended.
        :param attributes: the span's attributes.
        """
        tracer = self._timings.tracer
        if tracer is None or self.span is None:
            return
        span = tracer.start_span(
            name, self.context, attributes=attributes, start_time=nanoseconds(started)
        )
        span.end(end_time=nanoseconds(ended))

    def inject(self, headers: Headers) -> None:
        """
        Add the W3C ``traceparent`` (and ``tracestate``) of this stage's span to outgoing
        headers, when context propagation is on.

        :param headers: the headers of the request about to be sent.
        """
        if self.span is not None and self._timings.propagate:
            PROPAGATOR.inject(headers, self.context, _SETTER)


class RequestTimings:
    """
    The timing record of one request.

    :param clock: the injected clock (every stage is measured on it).
    :param started: when the request arrived (clock seconds).
    :param tracer: makes the stages' spans (``None``: measured, not traced).
    :param span: the request's server span (``None`` when not traced).
    :param propagate: whether ``traceparent`` goes to S3 (``tracing.propagate_context``).
    :ivar totals: seconds spent per stage (:data:`AUTH`, :data:`CACHE_LOOKUP`,
        :data:`UPSTREAM_FIRST_BYTE`), summed over every time the stage ran.
    :ivar body_from: when the answer's body became available (S3's last response head,
        or the cache hit), ``None`` when the request got no body from either.
    """

    __slots__ = (
        "_context",
        "body_from",
        "clock",
        "propagate",
        "span",
        "started",
        "totals",
        "tracer",
    )

    def __init__(
        self,
        clock: IReactorTime,
        started: float,
        tracer: Tracer | None = None,
        span: Span | None = None,
        *,
        propagate: bool = False,
    ) -> None:
        self.clock = clock
        self.started = started
        self.tracer = tracer
        self.span = span
        self.propagate = propagate
        self.totals: dict[str, float] = {}
        self.body_from: float | None = None
        self._context = set_span_in_context(span) if span is not None else None

    @property
    def trace_id(self) -> str | None:
        """The trace id (32 hex digits) when the request is traced, else ``None``."""
        if self.span is None:
            return None
        return format_trace_id(self.span.get_span_context().trace_id)

    def seconds(self, stage: str) -> float:
        """
        :param stage: :data:`AUTH`, :data:`CACHE_LOOKUP` or :data:`UPSTREAM_FIRST_BYTE`.
        :returns: the seconds spent in it (0.0 when it never ran).
        """
        return self.totals.get(stage, 0.0)

    def begin(
        self,
        stage: str | None,
        name: str | None = None,
        *,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: Attributes | None = None,
        parent: Phase | None = None,
    ) -> Phase:
        """
        Start measuring a stage now.

        :param stage: the total it adds to (``None``: none, e.g. one S3 attempt).
        :param name: its span name (``None``: no span, measured only).
        :param kind: the span kind (``CLIENT`` for requests to S3).
        :param attributes: the span's first attributes.
        :param parent: the stage it is part of (default: the request's server span).
        :returns: the running stage; call :meth:`Phase.end`.
        """
        now = self.clock.seconds()
        span = None
        if self.tracer is not None and name is not None:
            context = parent.context if parent is not None else self._context
            span = self.tracer.start_span(
                name, context, kind, attributes, start_time=nanoseconds(now)
            )
        return Phase(self, stage, now, span)

    def finish(self, ended: float, attributes: Mapping[str, Any], *, server_error: bool) -> None:
        """
        The response has ended: end the server span.

        :param ended: when (clock seconds).
        :param attributes: the span's final attributes (status, bytes, bucket, cache status).
        :param server_error: whether the status was 5xx (the span's status is then ``ERROR``).
        """
        span = self.span
        if span is None:
            return
        span.set_attributes({k: v for k, v in attributes.items() if v is not None})
        if server_error:
            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=nanoseconds(ended))
