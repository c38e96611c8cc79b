"""The slow-request log on a fake clock: threshold, breakdown, request id, off by default."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from twisted.logger import LogEvent, LogLevel, globalLogPublisher

from tests.unit.auth.jwt_kit import NOW, SECRET, token
from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from tests.unit.observability.tracing_harness import traced

OBJECT = {"Content-Type": "text/plain", "Cache-Control": "max-age=60"}
CACHE = {"enabled": True, "memory": {"max_cache_size_mb": 4, "max_item_size_mb": 1}}


@pytest.fixture
def slow_events() -> Iterator[list[LogEvent]]:
    events: list[LogEvent] = []

    def keep(event: LogEvent) -> None:
        if event.get("log_namespace") == "yatagarasu.slow_requests":
            events.append(event)

    globalLogPublisher.addObserver(keep)
    yield events
    globalLogPublisher.removeObserver(keep)


def slow_harness(*buckets: dict[str, Any], **slow_query: Any) -> Harness:
    h = Harness(
        {
            "buckets": list(buckets) or [bucket_entry()],
            "observability": {"slow_query": {"enabled": True, "threshold_ms": 500, **slow_query}},
        }
    )
    h.clock.advance(NOW)
    return h


def test_a_slow_request_is_logged_at_warn_with_its_breakdown(slow_events: list[LogEvent]) -> None:
    h = slow_harness(bucket_entry(jwt={"enabled": True, "secret": SECRET}))
    _, transport = h.get("/pub/a.txt", f"Authorization: Bearer {token(SECRET, 'HS256')}")
    h.clock.advance(0.4)  # S3's first byte after 400 ms
    upstream = FakeResponse(200, OBJECT, length=4)
    h.agents["pub"].answer(upstream)
    upstream.push(b"ab")
    h.clock.advance(0.3)  # then 300 ms of transfer
    upstream.push(b"cd")
    upstream.end()
    response = parse_response(transport.value())
    assert response.status == 200
    [event] = slow_events
    assert event["log_level"] is LogLevel.warn
    assert event["request_id"] == response.header("x-request-id")
    assert (event["duration_ms"], event["threshold_ms"]) == (700.0, 500.0)
    assert event["auth_ms"] == 0.0  # a JWT is verified within the reactor turn
    assert event["cache_lookup_ms"] == 0.0
    assert event["upstream_first_byte_ms"] == 400.0
    assert event["transfer_ms"] == 300.0
    assert (event["status"], event["bucket"], event["path"]) == (200, "pub", "/pub/a.txt")
    assert "trace_id" not in event  # tracing is off
    text = event["log_format"].format(**event)
    assert text.startswith(f"slow request {event['request_id']}: GET /pub/a.txt 200 in 700.0ms")
    assert "upstream first byte 400.0ms, transfer 300.0ms" in text


def test_a_fast_request_is_not_logged(slow_events: list[LogEvent]) -> None:
    h = slow_harness()
    _, transport = h.get("/pub/a.txt")
    h.clock.advance(0.5)  # exactly the threshold: not over it
    h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"x"))
    assert parse_response(transport.value()).status == 200
    assert slow_events == []


def test_without_breakdown_only_the_total(slow_events: list[LogEvent]) -> None:
    h = slow_harness(include_breakdown=False)
    _, transport = h.get("/pub/a.txt")
    h.clock.advance(0.6)
    h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"x"))
    assert parse_response(transport.value()).status == 200
    [event] = slow_events
    assert event["duration_ms"] == 600.0
    assert "upstream_first_byte_ms" not in event
    assert "auth" not in event["log_format"]


def test_cache_lookup_time_counts_and_a_hit_transfers_from_the_lookup(
    slow_events: list[LogEvent],
) -> None:
    h, _ = traced(
        cache=CACHE, slow_query={"enabled": True, "threshold_ms": 0, "include_breakdown": True}
    )
    _, transport = h.get("/pub/a.txt")
    h.clock.advance(0.1)
    h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"hello"))
    assert parse_response(transport.value()).header("x-cache") == "MISS"
    [miss] = slow_events
    assert (miss["upstream_first_byte_ms"], miss["transfer_ms"]) == (100.0, 0.0)
    assert len(miss["trace_id"]) == 32  # traced too: the same record
    _, transport = h.get("/pub/a.txt")
    assert parse_response(transport.value()).header("x-cache") == "HIT"
    assert len(slow_events) == 1  # 0 ms is not over a 0 ms threshold


def test_a_reload_changes_the_threshold(slow_events: list[LogEvent]) -> None:
    h = slow_harness()
    document = dict(h.document)
    document["observability"] = {"slow_query": {"enabled": True, "threshold_ms": 50}}
    assert h.reload(document).status == 200
    _, transport = h.get("/pub/a.txt")
    h.clock.advance(0.1)
    h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"x"))
    assert parse_response(transport.value()).status == 200
    [event] = slow_events
    assert event["threshold_ms"] == 50.0
