"""
Asking S3 (yatagarasu.web.upstream): retries, 5xx, SlowDown, connect and first-byte timeouts,
cancellation.
"""

from __future__ import annotations

import json

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectTimeoutError

from tests.unit.fakes import FakeResponse, bucket_entry, parse_response
from tests.unit.web.bucket_harness import OBJECT_HEADERS, harness


def test_client_going_away_cancels_upstream_request() -> None:
    h = harness()
    channel, _ = h.get("/pub/k")
    sent = h.agents["pub"].sent[0]
    channel.connectionLost(ConnectionRefusedError())
    assert sent.cancelled


def test_retries_5xx_then_serves() -> None:
    h = harness(bucket_entry(s3={"retry": {"max_attempts": 3, "initial_backoff_ms": 100}}))
    _, transport = h.get("/pub/k")
    agent = h.agents["pub"]
    agent.answer(FakeResponse(500, {}, body=b"<Error><Code>InternalError</Code></Error>"))
    assert len(agent.sent) == 1
    h.clock.advance(0.2)
    assert len(agent.sent) == 2
    agent.answer(FakeResponse(200, OBJECT_HEADERS, body=b"ok"))
    response = parse_response(transport.value())
    assert (response.status, response.body) == (200, b"ok")


def test_5xx_after_all_attempts_is_502() -> None:
    h = harness(bucket_entry(s3={"retry": {"max_attempts": 2, "initial_backoff_ms": 10}}))
    _, transport = h.get("/pub/k")
    agent = h.agents["pub"]
    agent.answer(FakeResponse(500, {}, body=b"<Error><Code>InternalError</Code></Error>"))
    h.clock.advance(1)
    agent.answer(FakeResponse(500, {}, body=b"<Error><Code>InternalError</Code></Error>"))
    response = parse_response(transport.value())
    assert response.status == 502
    assert json.loads(response.body)["s3_code"] == "InternalError"
    assert len(agent.sent) == 2


def test_slowdown_is_503_with_retry_after() -> None:
    h = harness()
    _, transport = h.get("/pub/k")
    h.agents["pub"].answer(FakeResponse(503, {}, body=b"<Error><Code>SlowDown</Code></Error>"))
    response = parse_response(transport.value())
    assert response.status == 503
    assert response.header("retry-after") == "1"


def test_connection_refused_is_502_and_connect_timeout_504() -> None:
    h = harness()
    _, transport = h.get("/pub/a")
    h.agents["pub"].fail(ConnectionRefusedError())
    assert parse_response(transport.value()).status == 502
    _, transport = h.get("/pub/b")
    h.agents["pub"].fail(ConnectTimeoutError())
    assert parse_response(transport.value()).status == 504


def test_first_byte_timeout_is_504() -> None:
    h = harness(bucket_entry(s3={"first_byte_timeout": 3}))
    _, transport = h.get("/pub/k")
    h.clock.advance(2.9)
    assert transport.value() == b""
    h.clock.advance(0.2)
    assert h.agents["pub"].sent[0].cancelled
    response = parse_response(transport.value())
    assert response.status == 504
    assert "3s" in json.loads(response.body)["message"]


def test_cancel_while_waiting_for_s3_is_not_an_upstream_failure() -> None:
    h = harness(bucket_entry(s3={"retry": {"max_attempts": 3}}))
    for _ in range(6):
        channel, _ = h.get("/pub/k")
        channel.connectionLost(ConnectionRefusedError())
    assert all(sent.cancelled for sent in h.agents["pub"].sent)
    assert len(h.agents["pub"].sent) == 6  # no retries for clients that are gone
    _, transport = h.get("/ready")
    assert parse_response(transport.value()).status == 200
