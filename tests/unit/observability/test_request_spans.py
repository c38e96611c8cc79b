"""
Spans of whole requests through the Site (fake clock, fake S3): the server span and its
children (auth, cache lookup per layer, each S3 attempt, cache fill), W3C trace context in and
out, and the trace id in the access log and the audit record.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from opentelemetry.trace import SpanKind, StatusCode
from twisted.logger import LogEvent, globalLogPublisher

from tests.unit.auth.jwt_kit import NOW, SECRET, token
from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from tests.unit.observability.tracing_harness import (
    START,
    by_name,
    parent_of,
    span_id,
    trace_id,
    traced,
)

CACHE = {"enabled": True, "memory": {"max_cache_size_mb": 4, "max_item_size_mb": 1}}
OBJECT = {"Content-Type": "text/plain", "ETag": '"v1"', "Cache-Control": "max-age=60"}
INCOMING_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
INCOMING_PARENT = "00f067aa0ba902b7"
TRACEPARENT = f"traceparent: 00-{INCOMING_TRACE}-{INCOMING_PARENT}-01"


def test_a_miss_then_a_hit_make_two_span_trees() -> None:
    h, exporter = traced(cache=CACHE)
    _, transport = h.get("/pub/a.txt", "User-Agent: curl/8")
    h.clock.advance(0.25)
    h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"hello"))
    assert parse_response(transport.value()).header("x-cache") == "MISS"
    miss = by_name(exporter.get_finished_spans())
    assert set(miss) == {"GET", "cache.lookup", "cache.get memory", "S3 GET", "cache.fill"}
    server = miss["GET"]
    assert server.kind is SpanKind.SERVER
    assert parent_of(server) is None
    assert parent_of(miss["cache.lookup"]) == span_id(server)
    assert parent_of(miss["cache.get memory"]) == span_id(miss["cache.lookup"])
    assert parent_of(miss["S3 GET"]) == span_id(server)
    assert parent_of(miss["cache.fill"]) == span_id(server)
    assert len({trace_id(span) for span in miss.values()}) == 1
    assert dict(server.attributes or {}) == {
        "http.request.method": "GET",
        "url.path": "/pub/a.txt",
        "url.scheme": "http",
        "network.protocol.version": "1.1",
        "client.address": "127.0.0.1",
        "user_agent.original": "curl/8",
        "yatagarasu.request_id": parse_response(transport.value()).header("x-request-id"),
        "http.response.status_code": 200,
        "http.response.body.size": 5,
        "yatagarasu.bucket": "pub",
        "yatagarasu.object_key": "a.txt",
        "yatagarasu.cache_status": "miss",
    }
    assert (server.start_time, server.end_time) == (int(START * 1e9), int((START + 0.25) * 1e9))
    client = miss["S3 GET"]
    assert client.kind is SpanKind.CLIENT
    assert client.end_time == int((START + 0.25) * 1e9)
    assert (client.attributes or {})["http.response.status_code"] == 200
    assert (client.attributes or {})["yatagarasu.s3.attempt"] == 1
    assert (client.attributes or {})["server.address"] == "127.0.0.1"
    assert (client.attributes or {})["server.port"] == 9000
    assert (miss["cache.get memory"].attributes or {})["yatagarasu.cache.hit"] is False
    assert (miss["cache.fill"].attributes or {})["yatagarasu.cache.fill_bytes"] == 5

    exporter.clear()
    _, transport = h.get("/pub/a.txt")
    assert parse_response(transport.value()).header("x-cache") == "HIT"
    hit = by_name(exporter.get_finished_spans())
    assert set(hit) == {"GET", "cache.lookup", "cache.get memory"}
    assert (hit["cache.lookup"].attributes or {})["yatagarasu.cache.layer"] == "memory"
    assert (hit["GET"].attributes or {})["yatagarasu.cache_status"] == "hit"
    assert trace_id(hit["GET"]) != trace_id(server)  # a new trace per request


def test_an_incoming_traceparent_is_continued_and_sent_to_s3() -> None:
    h, exporter = traced()
    _, transport = h.get("/pub/a.txt", TRACEPARENT)
    [sent] = h.agents["pub"].sent
    h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"x"))
    assert parse_response(transport.value()).status == 200
    spans = by_name(exporter.get_finished_spans())
    server, client = spans["GET"], spans["S3 GET"]
    assert f"{trace_id(server):032x}" == INCOMING_TRACE
    assert parent_of(server) == int(INCOMING_PARENT, 16)
    [traceparent] = sent.headers.getRawHeaders(b"traceparent")
    assert traceparent.decode() == f"00-{INCOMING_TRACE}-{span_id(client):016x}-01"
    # SigV4 signs host and x-amz-* only: traceparent is sent unsigned.
    [authorization] = sent.headers.getRawHeaders(b"authorization")
    assert b"SignedHeaders=host;x-amz-content-sha256;x-amz-date," in authorization


def test_without_propagation_the_incoming_context_is_ignored_and_nothing_is_sent() -> None:
    h, exporter = traced(tracing={"propagate_context": False})
    _, transport = h.get("/pub/a.txt", TRACEPARENT)
    [sent] = h.agents["pub"].sent
    h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"x"))
    assert parse_response(transport.value()).status == 200
    server = by_name(exporter.get_finished_spans())["GET"]
    assert f"{trace_id(server):032x}" != INCOMING_TRACE
    assert parent_of(server) is None
    assert sent.headers.getRawHeaders(b"traceparent") is None


def test_an_unsampled_incoming_trace_is_not_recorded_but_still_propagated() -> None:
    h, exporter = traced()
    _, transport = h.get("/pub/a.txt", f"traceparent: 00-{INCOMING_TRACE}-{INCOMING_PARENT}-00")
    [sent] = h.agents["pub"].sent
    h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"x"))
    assert parse_response(transport.value()).status == 200
    assert exporter.get_finished_spans() == ()
    [traceparent] = sent.headers.getRawHeaders(b"traceparent")
    assert traceparent.decode().startswith(f"00-{INCOMING_TRACE}-")
    assert traceparent.decode().endswith("-00")


def test_each_s3_attempt_is_a_span_and_retries_show() -> None:
    entry = bucket_entry(
        s3={"retry": {"max_attempts": 3, "initial_backoff_ms": 100, "max_backoff_ms": 100}}
    )
    h, exporter = traced(entry)
    _, transport = h.get("/pub/a.txt")
    agent = h.agents["pub"]
    agent.answer(FakeResponse(500, {}, body=b"<Error><Code>InternalError</Code></Error>"))
    h.clock.advance(0.1)
    assert len(agent.sent) == 2
    agent.answer(FakeResponse(503, {}, body=b"<Error><Code>SlowDown</Code></Error>"))
    h.clock.advance(0.1)
    assert len(agent.sent) == 3
    agent.answer(FakeResponse(200, OBJECT, body=b"x"))
    assert parse_response(transport.value()).status == 200
    spans = exporter.get_finished_spans()
    attempts = [span for span in spans if span.name == "S3 GET"]
    [server] = [span for span in spans if span.name == "GET"]
    assert [(a.attributes or {})["yatagarasu.s3.attempt"] for a in attempts] == [1, 2, 3]
    assert [(a.attributes or {})["http.response.status_code"] for a in attempts] == [500, 503, 200]
    assert [a.status.status_code for a in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    assert [(a.attributes or {}).get("http.request.resend_count") for a in attempts] == [
        None,
        1,
        2,
    ]
    assert {parent_of(a) for a in attempts} == {span_id(server)}
    traceparents = [s.headers.getRawHeaders(b"traceparent")[0].decode() for s in agent.sent]
    assert [t.split("-")[2] for t in traceparents] == [f"{span_id(a):016x}" for a in attempts]


def test_a_5xx_answer_marks_the_server_span_as_an_error() -> None:
    h, exporter = traced()
    _, transport = h.get("/pub/a.txt")
    h.agents["pub"].answer(FakeResponse(500, {}, body=b"<Error><Code>InternalError</Code></Error>"))
    assert parse_response(transport.value()).status == 502
    server = by_name(exporter.get_finished_spans())["GET"]
    assert server.status.status_code is StatusCode.ERROR
    assert (server.attributes or {})["error.type"] == "502"


def test_authentication_is_a_span_failed_or_not() -> None:
    h, exporter = traced(bucket_entry(jwt={"enabled": True, "secret": SECRET}))
    assert h.clock.seconds() == NOW  # the jwt kit's tokens are made for its NOW
    _, transport = h.get("/pub/a.txt", "Authorization: Bearer garbage")
    assert parse_response(transport.value()).status == 401
    denied = by_name(exporter.get_finished_spans())
    assert set(denied) == {"GET", "auth"}
    assert denied["auth"].status.status_code is StatusCode.ERROR
    assert (denied["auth"].attributes or {})["yatagarasu.auth.scheme"] == "jwt"
    assert parent_of(denied["auth"]) == span_id(denied["GET"])
    exporter.clear()
    _, transport = h.get("/pub/a.txt", f"Authorization: Bearer {token(SECRET, 'HS256')}")
    h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"x"))
    assert parse_response(transport.value()).status == 200
    allowed = by_name(exporter.get_finished_spans())
    assert set(allowed) == {"GET", "auth", "S3 GET"}
    assert allowed["auth"].status.status_code is StatusCode.UNSET


def test_a_client_that_goes_away_ends_the_span_as_aborted() -> None:
    h, exporter = traced()
    channel, _ = h.get("/pub/a.txt")
    upstream = FakeResponse(200, OBJECT, length=10)
    h.agents["pub"].answer(upstream)
    upstream.push(b"12345")
    channel.connectionLost(ConnectionResetError())
    server = by_name(exporter.get_finished_spans())["GET"]
    assert (server.attributes or {})["yatagarasu.aborted"] is True
    assert (server.attributes or {})["http.response.body.size"] == 5


def test_with_tracing_off_a_request_has_no_timings_and_no_span() -> None:
    h = Harness({"buckets": [bucket_entry()]})
    assert h.site.tracing is None and h.site.served.slow_log is None
    h.get("/pub/a.txt")
    [request] = list(h.site._active)
    assert request.timings is None


def _capture() -> list[LogEvent]:
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    return events


def test_the_trace_id_is_in_the_access_log_and_the_audit_record(tmp_path: Path) -> None:
    audit: dict[str, Any] = {
        "enabled": True,
        "outputs": ["file"],
        "file": {"path": str(tmp_path / "audit.log"), "flush_interval_seconds": 1},
    }
    h, exporter = traced(audit_log=audit)
    for service in h.assembly.services:
        service.startService()
    events = _capture()
    try:
        _, transport = h.get("/pub/a.txt", TRACEPARENT)
        h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"x"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert parse_response(transport.value()).status == 200
    [access] = [e for e in events if e.get("log_namespace") == "yatagarasu.access"]
    assert access["trace_id"] == INCOMING_TRACE
    assert access["log_format"].endswith(" trace {trace_id}")
    assert f"{trace_id(by_name(exporter.get_finished_spans())['GET']):032x}" == INCOMING_TRACE
    h.clock.advance(1)
    [record] = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert record["trace_id"] == INCOMING_TRACE
    assert list(record)[-1] == "trace_id"
    for service in h.assembly.services:
        service.stopService()


def test_without_tracing_the_access_log_and_audit_record_have_no_trace_id(
    tmp_path: Path,
) -> None:
    audit: dict[str, Any] = {
        "enabled": True,
        "outputs": ["file"],
        "file": {"path": str(tmp_path / "audit.log"), "flush_interval_seconds": 1},
    }
    h = Harness({"buckets": [bucket_entry()], "audit_log": audit})
    for service in h.assembly.services:
        service.startService()
    events = _capture()
    try:
        _, transport = h.get("/pub/a.txt", TRACEPARENT)
        h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"x"))
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert parse_response(transport.value()).status == 200
    assert h.agents["pub"].sent[0].headers.getRawHeaders(b"traceparent") is None
    [access] = [e for e in events if e.get("log_namespace") == "yatagarasu.access"]
    assert "trace_id" not in access
    h.clock.advance(1)
    [record] = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
    assert "trace_id" not in record
    for service in h.assembly.services:
        service.stopService()


def test_a_reload_keeps_the_tracer_and_refuses_to_change_it() -> None:
    h, _ = traced()
    tracing = h.site.tracing
    same = dict(h.document)
    same["buckets"] = [bucket_entry(), bucket_entry("two", "/two")]
    assert h.reload(same).status == 200
    assert h.assembly.tracing is tracing
    changed = dict(h.document)
    changed["observability"] = {
        "tracing": {"enabled": True, "exporter": "none", "sampling_ratio": 0.5}
    }
    report = h.reload(changed)
    assert report.status == 400
    assert report.message == (
        "observability.tracing: changed; observability.tracing changes need a restart"
    )
