"""/health and /ready (yatagarasu.web.health)."""

from __future__ import annotations

import json

from twisted.internet.error import ConnectionRefusedError

from tests.unit.fakes import FakeResponse, parse_response
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


def test_ready_is_503_when_every_upstream_keeps_failing() -> None:
    h = harness()
    for i in range(5):
        h.get(f"/pub/k{i}")
        h.agents["pub"].fail(ConnectionRefusedError())
    _, transport = h.get("/ready")
    response = parse_response(transport.value())
    document = json.loads(response.body)
    assert (response.status, document["status"]) == (503, "unavailable")
    replicas = document["backends"]["pub"]["replicas"]
    assert replicas["http://127.0.0.1:9000"]["consecutive_failures"] == 5
    h.get("/pub/ok")
    h.agents["pub"].answer(FakeResponse(200, OBJECT_HEADERS, body=b"."))
    _, transport = h.get("/ready")
    assert parse_response(transport.value()).status == 200


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
