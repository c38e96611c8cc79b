"""/health and /ready (yatagarasu.web.health)."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.error import ConnectionRefusedError

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from tests.unit.web.bucket_harness import OBJECT_HEADERS, harness


def test_health_and_ready() -> None:
    h = harness()
    _, transport = h.get("/health")
    response = parse_response(transport.value())
    document = json.loads(response.body)
    assert (response.status, document["status"]) == (200, "healthy")
    assert document["uptime_seconds"] == 0
    _, transport = h.get("/ready")
    response = parse_response(transport.value())
    assert response.status == 200
    assert json.loads(response.body)["backends"]["pub"]["status"] == "healthy"
    h.draining = True
    _, transport = h.get("/ready")
    response = parse_response(transport.value())
    assert (response.status, json.loads(response.body)["status"]) == (503, "shutting_down")


def ready(h: Harness) -> tuple[int, dict[str, Any]]:
    _, transport = h.get("/ready")
    response = parse_response(transport.value())
    return response.status, json.loads(response.body)


def test_ready_shows_the_circuit_open_then_half_open_then_closed() -> None:
    h = harness(bucket_entry(s3={"retry": {"max_attempts": 1}}))
    for i in range(5):
        h.get(f"/pub/k{i}")
        h.agents["pub"].fail(ConnectionRefusedError())
    status, document = ready(h)
    assert (status, document["status"]) == (503, "unavailable")
    assert document["backends"]["pub"]["status"] == "unhealthy"
    primary = document["backends"]["pub"]["replicas"]["primary"]
    assert primary["state"] == "open"
    assert primary["endpoint"] == "http://127.0.0.1:9000"
    assert primary["consecutive_failures"] == 5
    assert "cannot connect" in primary["last_error"]
    h.clock.advance(60)  # circuit_breaker.timeout_seconds (default)
    status, document = ready(h)
    assert status == 200
    assert document["backends"]["pub"]["replicas"]["primary"]["state"] == "half_open"
    for i in range(2):  # success_threshold (default)
        _, transport = h.get(f"/pub/ok{i}")
        h.agents["pub"].answer(FakeResponse(200, OBJECT_HEADERS, body=b"."))
        assert parse_response(transport.value()).status == 200
    status, document = ready(h)
    assert status == 200
    replica = document["backends"]["pub"]["replicas"]["primary"]
    assert (replica["state"], replica["consecutive_failures"]) == ("closed", 0)
    assert replica["last_error"] is None


def test_health_subpath_is_not_health() -> None:
    h = harness()
    _, transport = h.get("/health/extra")
    assert parse_response(transport.value()).status == 404


def test_health_and_metrics_answer_other_methods_with_json_405() -> None:
    h = harness()
    for path in ("/health", "/ready", "/metrics"):
        _, transport = h.get(path, "Content-Length: 0", method="POST")
        response = parse_response(transport.value())
        assert response.status == 405, path
        assert response.header("allow") == "GET, HEAD"
        assert json.loads(response.body)["request_id"] == response.header("x-request-id")
