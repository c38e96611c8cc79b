"""
A tiny OTLP/HTTP trace receiver on 127.0.0.1 for tests: accepts ``POST /v1/traces``
(``application/x-protobuf``), decodes each export with the opentelemetry-proto classes and keeps
the spans.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from devharness.ports import LOOPBACK


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as the receiver decoded it (ids as lowercase hex)."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: int
    attributes: dict[str, Any]
    status_code: int
    start_ns: int
    end_ns: int
    service_name: str


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    return getattr(any_value, kind) if kind is not None else None


def decode(body: bytes) -> list[ReceivedSpan]:
    """
    :param body: an ``ExportTraceServiceRequest`` (protobuf).
    :returns: its spans.
    """
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=span.kind,
                        attributes={a.key: _value(a.value) for a in span.attributes},
                        status_code=span.status.code,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        service_name=str(resource.get("service.name", "")),
                    )
                )
    return spans


class OtlpReceiver:
    """
    Start with :meth:`start`, point ``observability.tracing.otlp_endpoint`` at :attr:`endpoint`,
    read :attr:`spans`; :meth:`stop` at the end.

    :ivar spans: every span received so far, in arrival order.
    :ivar content_types: the ``Content-Type`` of every export received.
    """

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.content_types: list[str] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.path != "/v1/traces":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                spans = decode(body)
                with receiver._lock:
                    receiver.spans.extend(spans)
                    receiver.content_types.append(self.headers.get("Content-Type", ""))
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def endpoint(self) -> str:
        """:returns: ``http://127.0.0.1:<port>`` (the exporter adds ``/v1/traces``)."""
        return f"http://{LOOPBACK}:{self._server.server_address[1]}"

    def start(self) -> OtlpReceiver:
        """:returns: itself, serving."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self._server.shutdown()
        self._thread.join(10)
        self._server.server_close()

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        """
        :param trace_id: 32 hex digits.
        :returns: the spans of that trace received so far.
        """
        with self._lock:
            return [span for span in self.spans if span.trace_id == trace_id]
