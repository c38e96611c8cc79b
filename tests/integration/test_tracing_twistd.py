"""
Tracing and the slow-request log through the real ``twistd -n yatagarasu``: spans exported
over OTLP/HTTP to a receiver of the test's own (the span trees of an uncached and a cached
request, parent/child links, the incoming trace id continued), ``traceparent`` sent to moto
(which still accepts the SigV4 signature), one span per S3 attempt against an origin that
answers 500 then 200, the trace id in the access log and the audit file, spans flushed at
SIGTERM, the console exporter, and a stalled origin logged as a slow request with its breakdown.
"""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devharness.moto_s3 import MotoS3Server
from devharness.otlp_receiver import OtlpReceiver, ReceivedSpan
from devharness.ports import LOOPBACK
from devharness.proxy_config import bucket_config
from devharness.scripted_origin import Answer, ScriptedOrigin
from devharness.twistd import ProxyProcess, clean_exit
from devharness.waiting import wait_until

SERVER, CLIENT = 2, 3  # OTLP span kinds
STATUS_ERROR = 2
MEMORY = {"enabled": True, "memory": {"max_cache_size_mb": 8, "max_item_size_mb": 1}}


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    started = OtlpReceiver().start()
    yield started
    started.stop()


@pytest.fixture
def origin_factory() -> Iterator[Callable[[list[Answer]], ScriptedOrigin]]:
    origins: list[ScriptedOrigin] = []

    def make(script: list[Answer]) -> ScriptedOrigin:
        origins.append(ScriptedOrigin(script).start())
        return origins[-1]

    yield make
    for origin in origins:
        origin.stop()


def traceparent(trace_id: str, parent: str = "00f067aa0ba902b7") -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-{parent}-01"}


def tracing(receiver: OtlpReceiver, **extra: Any) -> dict[str, Any]:
    section = {
        "enabled": True,
        "exporter": "otlp",
        "otlp_endpoint": receiver.endpoint,
        "service_name": "yatagarasu-it",
    }
    section.update(extra)
    return {"tracing": section}


def spans_of(receiver: OtlpReceiver, trace_id: str, count: int) -> dict[str, ReceivedSpan]:
    wait_until(
        lambda: len(receiver.trace(trace_id)) >= count,
        timeout=20,
        what=f"{count} spans of trace {trace_id}",
    )
    spans = receiver.trace(trace_id)
    named = {span.name: span for span in spans}
    assert len(named) == len(spans) == count, [span.name for span in spans]
    return named


def origin_bucket(origin: ScriptedOrigin, **s3: Any) -> dict[str, Any]:
    return {
        "name": "origin",
        "path_prefix": "/origin",
        "s3": {
            "bucket": "b",
            "endpoint": origin.endpoint,
            "credentials": {"source": "anonymous"},  # the scripted origin checks no signature
            **s3,
        },
    }


def test_span_trees_of_an_uncached_and_a_cached_request(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    receiver: OtlpReceiver,
) -> None:
    moto_s3.put_object(s3_bucket, "docs/a.txt", b"traced bytes\n", content_type="text/plain")
    audit = {
        "enabled": True,
        "outputs": ["file"],
        "file": {"path": str(tmp_path / "audit" / "audit.log"), "flush_interval_seconds": 1},
    }
    config = make_proxy_config(
        [bucket_config(moto_s3, "pub", s3_bucket)],
        cache=MEMORY,
        audit_log=audit,
        observability=tracing(receiver),
    )
    p = proxy(config)
    moto_s3.clear_requests()
    uncached_trace, cached_trace = (
        "4bf92f3577b34da6a3ce929d0e0e4736",
        "5cf92f3577b34da6a3ce929d0e0e4737",
    )
    miss = p.get("/pub/docs/a.txt", headers=traceparent(uncached_trace))
    assert (miss.status, miss.header("x-cache")) == (200, "MISS")
    hit = p.get("/pub/docs/a.txt", headers=traceparent(cached_trace))
    assert (hit.status, hit.header("x-cache"), hit.body) == (200, "HIT", b"traced bytes\n")

    uncached = spans_of(receiver, uncached_trace, 5)
    assert set(uncached) == {"GET", "cache.lookup", "cache.get memory", "S3 GET", "cache.fill"}
    server = uncached["GET"]
    assert (server.kind, server.parent_span_id) == (SERVER, "00f067aa0ba902b7")
    assert server.service_name == "yatagarasu-it"
    for child in ("cache.lookup", "S3 GET", "cache.fill"):
        assert uncached[child].parent_span_id == server.span_id, child
    assert uncached["cache.get memory"].parent_span_id == uncached["cache.lookup"].span_id
    assert uncached["S3 GET"].kind == CLIENT
    assert server.attributes["http.response.status_code"] == 200
    assert server.attributes["yatagarasu.cache_status"] == "miss"
    assert server.attributes["yatagarasu.bucket"] == "pub"
    assert server.attributes["url.path"] == "/pub/docs/a.txt"
    assert server.attributes["yatagarasu.request_id"] == miss.header("x-request-id")
    assert server.start_ns <= uncached["S3 GET"].start_ns <= uncached["S3 GET"].end_ns
    # the fill commits once the body was relayed: it may end after the response did
    assert uncached["S3 GET"].end_ns <= uncached["cache.fill"].start_ns

    cached = spans_of(receiver, cached_trace, 3)
    assert set(cached) == {"GET", "cache.lookup", "cache.get memory"}
    assert cached["GET"].attributes["yatagarasu.cache_status"] == "hit"
    assert cached["cache.lookup"].attributes["yatagarasu.cache.layer"] == "memory"
    assert cached["cache.lookup"].parent_span_id == cached["GET"].span_id

    # traceparent went to moto, which accepted the signed request (200) with it unsigned
    [fetched] = moto_s3.requests("GET", s3_bucket, "docs/a.txt")
    headers = {k.lower(): v for k, v in fetched.headers.items()}
    assert headers["traceparent"] == f"00-{uncached_trace}-{uncached['S3 GET'].span_id}-01"
    assert "traceparent" not in headers["authorization"]
    assert receiver.content_types[0] == "application/x-protobuf"

    log = p.settled_log_text()
    assert f"trace {uncached_trace}" in log and f"trace {cached_trace}" in log
    path = tmp_path / "audit" / "audit.log"
    wait_until(
        lambda: path.exists() and len(path.read_text().splitlines()) >= 3,
        timeout=10,
        what="the audit records",
    )
    traced = {
        record["correlation_id"]: record.get("trace_id")
        for record in map(json.loads, path.read_text().splitlines())
    }
    assert traced[miss.header("x-request-id")] == uncached_trace
    assert traced[hit.header("x-request-id")] == cached_trace


def test_each_s3_attempt_is_a_span_and_carries_its_traceparent(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    receiver: OtlpReceiver,
    origin_factory: Callable[[list[Answer]], ScriptedOrigin],
) -> None:
    origin = origin_factory([Answer(500, b"<Error><Code>InternalError</Code></Error>"), Answer()])
    retry = {"max_attempts": 3, "initial_backoff_ms": 10, "max_backoff_ms": 10}
    config = make_proxy_config(
        [origin_bucket(origin, retry=retry)], observability=tracing(receiver)
    )
    p = proxy(config)
    trace_id = "6cf92f3577b34da6a3ce929d0e0e4738"
    response = p.get("/origin/k", headers=traceparent(trace_id))
    assert (response.status, response.body) == (200, b"hello")
    wait_until(lambda: len(receiver.trace(trace_id)) >= 3, timeout=20, what="the spans")
    spans = receiver.trace(trace_id)
    [server] = [span for span in spans if span.name == "GET"]
    attempts = sorted(
        (span for span in spans if span.name == "S3 GET"),
        key=lambda span: span.attributes["yatagarasu.s3.attempt"],
    )
    assert [a.attributes["http.response.status_code"] for a in attempts] == [500, 200]
    assert [a.status_code == STATUS_ERROR for a in attempts] == [True, False]
    assert attempts[1].attributes["http.request.resend_count"] == 1
    assert {a.parent_span_id for a in attempts} == {server.span_id}
    sent = [r.headers["traceparent"] for r in origin.received if r.method == "GET"]
    assert sent == [f"00-{trace_id}-{a.span_id}-01" for a in attempts]


def test_spans_are_flushed_at_sigterm(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    receiver: OtlpReceiver,
    origin_factory: Callable[[list[Answer]], ScriptedOrigin],
) -> None:
    origin = origin_factory([Answer()])
    p = proxy(make_proxy_config([origin_bucket(origin)], observability=tracing(receiver)))
    trace_id = "7cf92f3577b34da6a3ce929d0e0e4739"
    assert p.get("/origin/k", headers=traceparent(trace_id)).status == 200
    assert clean_exit(p.stop(signal.SIGTERM))
    assert {span.name for span in receiver.trace(trace_id)} == {"GET", "S3 GET"}


def test_the_console_exporter_logs_spans(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    origin_factory: Callable[[list[Answer]], ScriptedOrigin],
) -> None:
    origin = origin_factory([Answer()])
    observability = {"tracing": {"enabled": True, "exporter": "console"}}
    p = proxy(make_proxy_config([origin_bucket(origin)], observability=observability))
    trace_id = "8cf92f3577b34da6a3ce929d0e0e473a"
    assert p.get("/origin/k", headers=traceparent(trace_id)).status == 200
    p.wait_for_log(f'"trace_id": "0x{trace_id}"', timeout=20)
    [line] = [
        line
        for line in p.log_text().splitlines()
        if "[yatagarasu.spans#info]" in line
        and '"kind": "SpanKind.SERVER"' in line
        and f'"trace_id": "0x{trace_id}"' in line
    ]
    span = json.loads(line.split("] ", 1)[1])
    assert span["name"] == "GET"
    assert span["attributes"]["http.response.status_code"] == 200


def test_a_stalled_origin_is_logged_as_a_slow_request_with_its_breakdown(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    origin_factory: Callable[[list[Answer]], ScriptedOrigin],
) -> None:
    origin = origin_factory([Answer(delay=1.0)])
    observability = {"slow_query": {"enabled": True, "threshold_ms": 400}}
    config = make_proxy_config(
        [origin_bucket(origin)], observability=observability, logging={"format": "json"}
    )
    p = proxy(config)
    response = p.get("/origin/slow.bin", headers=traceparent("9cf92f3577b34da6a3ce929d0e0e473b"))
    assert response.status == 200
    request_id = response.header("x-request-id")

    def slow_events() -> list[dict[str, Any]]:
        lines = p.log_text().split("\n")
        events = [json.loads(line[1:]) for line in lines if line.startswith("\x1e")]
        return [e for e in events if e.get("log_namespace") == "yatagarasu.slow_requests"]

    wait_until(lambda: len(slow_events()) == 1, timeout=10, what="the slow-request event")
    [event] = slow_events()
    assert event["log_level"] == "warn"
    assert event["request_id"] == request_id
    assert event["upstream_first_byte_ms"] >= 1000.0  # the origin waited 1 s before its head
    assert event["duration_ms"] >= event["upstream_first_byte_ms"]
    assert (event["auth_ms"], event["cache_lookup_ms"]) == (0.0, 0.0)
    assert event["transfer_ms"] >= 0.0
    assert event["log_text"].startswith(f"slow request {request_id}: GET /origin/slow.bin 200")
    assert "trace_id" not in event  # tracing is off: nothing of it in the logs or upstream
    [received] = origin.received
    assert "traceparent" not in received.headers


def test_every_worker_process_exports_its_own_spans(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    receiver: OtlpReceiver,
    origin_factory: Callable[[list[Answer]], ScriptedOrigin],
) -> None:
    origin = origin_factory([Answer()])
    config = make_proxy_config([origin_bucket(origin)], observability=tracing(receiver))
    config["server"] = {"workers": 2}
    p = proxy(config)
    wait_until(lambda: p.get("/ready").status == 200, timeout=20, what="both workers up")
    by_worker: dict[str, str] = {}
    for n in range(200):  # new connections until both workers answered (bounded)
        trace_id = f"{n + 1:032x}"
        response = p.get("/origin/k", headers=traceparent(trace_id))
        assert response.status == 200
        by_worker.setdefault(response.header("X-Yatagarasu-Worker") or "?", trace_id)
        if len(by_worker) == 2:
            break
    assert set(by_worker) == {"0", "1"}
    for trace_id in by_worker.values():
        spans = spans_of(receiver, trace_id, 2)
        assert spans["S3 GET"].parent_span_id == spans["GET"].span_id
    assert clean_exit(p.stop(signal.SIGTERM))


def test_a_collector_that_never_answers_neither_slows_requests_nor_holds_up_the_exit(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    origin_factory: Callable[[list[Answer]], ScriptedOrigin],
) -> None:
    origin = origin_factory([Answer()])
    # A listening socket that never accepts: the kernel completes the handshake, the export
    # request is sent, and no answer ever comes.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as blackhole:
        blackhole.bind((LOOPBACK, 0))
        blackhole.listen(16)
        endpoint = f"http://{LOOPBACK}:{blackhole.getsockname()[1]}"
        observability = {"tracing": {"enabled": True, "otlp_endpoint": endpoint}}
        p = proxy(make_proxy_config([origin_bucket(origin)], observability=observability))
        for _ in range(20):
            assert p.get("/origin/k", timeout=5.0).status == 200
        # The last flush gives up (the exporter's 4 s timeout, our 5 s deadline): a clean
        # exit, not the SIGKILL that stop() sends after 30 s.
        assert clean_exit(p.stop(signal.SIGTERM, timeout=30))
