"""The in-memory proxy with tracing on, its spans collected in memory (fake clock, fake S3)."""

from __future__ import annotations

from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.unit.fakes import Harness, bucket_entry

#: The harness clock starts here (epoch seconds).
START = 1_800_000_000.0


def traced(
    *buckets: dict[str, Any],
    tracing: dict[str, Any] | None = None,
    slow_query: dict[str, Any] | None = None,
    **document: Any,
) -> tuple[Harness, InMemorySpanExporter]:
    """
    :returns: a harness whose process traces (``exporter: none``, plus an in-memory exporter
        attached to the process's own provider) and the exporter.
    """
    observability: dict[str, Any] = {"tracing": {"enabled": True, "exporter": "none"}}
    observability["tracing"].update(tracing or {})
    if slow_query is not None:
        observability["slow_query"] = slow_query
    h = Harness(
        {"buckets": list(buckets) or [bucket_entry()], "observability": observability, **document}
    )
    h.clock.advance(START)
    exporter = InMemorySpanExporter()
    assert h.site.tracing is not None
    h.site.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
    return h, exporter


def by_name(spans: tuple[ReadableSpan, ...] | list[ReadableSpan]) -> dict[str, ReadableSpan]:
    """:returns: the spans by name (each name once)."""
    named = {span.name: span for span in spans}
    assert len(named) == len(spans), [span.name for span in spans]
    return named


def parent_of(span: ReadableSpan) -> int | None:
    """:returns: the span id of its parent (``None`` for a root)."""
    return span.parent.span_id if span.parent is not None else None


def span_id(span: ReadableSpan) -> int:
    """:returns: its span id."""
    context = span.get_span_context()
    assert context is not None
    return context.span_id


def trace_id(span: ReadableSpan) -> int:
    """:returns: its trace id."""
    context = span.get_span_context()
    assert context is not None
    return context.trace_id
