"""
Replicas and circuit breakers through the whole in-memory proxy: failover before the first
byte, the 503 of an open circuit, ``/ready`` and the metrics.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from twisted.internet.error import ConnectionRefusedError

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from tests.unit.web.bucket_harness import OBJECT_HEADERS

REPLICAS = [
    {"name": "east", "bucket": "e", "priority": 1, "endpoint": "http://127.0.0.1:9001"},
    {"name": "west", "bucket": "w", "priority": 2, "endpoint": "http://127.0.0.1:9002"},
]


def harness(**s3: Any) -> Harness:
    entry = bucket_entry(
        s3={
            "replicas": REPLICAS,
            "retry": {"max_attempts": 2},
            "credentials": {"source": "anonymous"},
            **s3,
        }
    )
    del entry["s3"]["bucket"], entry["s3"]["endpoint"]
    entry["s3"].pop("access_key", None)
    entry["s3"].pop("secret_key", None)
    return Harness({"buckets": [entry]})


def metric_lines(h: Harness, name: str) -> list[str]:
    body = parse_response(h.get("/metrics")[1].value()).body.decode()
    return [line for line in body.splitlines() if line.startswith(name)]


def test_fails_over_to_the_next_replica_before_the_first_byte() -> None:
    h = harness()
    _, transport = h.get("/pub/k")
    h.agents["pub/east"].fail(ConnectionRefusedError())
    assert transport.value() == b""  # nothing sent yet
    h.agents["pub/west"].answer(FakeResponse(200, OBJECT_HEADERS, body=b"from west"))
    response = parse_response(transport.value())
    assert (response.status, response.body) == (200, b"from west")
    assert metric_lines(h, "yatagarasu_replica_failovers_total") == [
        'yatagarasu_replica_failovers_total{bucket="pub",from_replica="east",to_replica="west"} 1.0'
    ]


def test_a_failure_after_the_first_byte_aborts_and_does_not_fail_over() -> None:
    h = harness()
    _, transport = h.get("/pub/k")
    upstream = FakeResponse(200, {**OBJECT_HEADERS, "Content-Length": "10"}, length=10)
    h.agents["pub/east"].answer(upstream)
    upstream.push(b"12345")
    upstream.end(ConnectionRefusedError())
    assert transport.disconnecting or transport.disconnected
    assert h.agents["pub/west"].sent == []


def test_every_circuit_open_is_503_with_retry_after_and_ready_says_so() -> None:
    h = harness(circuit_breaker={"failure_threshold": 1, "timeout_seconds": 20})
    _, transport = h.get("/pub/k")
    h.agents["pub/east"].fail(ConnectionRefusedError())
    h.agents["pub/west"].answer(FakeResponse(500, {}, body=b"<Error><Code>InternalError</Code>"))
    assert parse_response(transport.value()).status == 502
    _, transport = h.get("/pub/k")
    response = parse_response(transport.value())
    assert response.status == 503
    assert response.header("retry-after") == "20"
    assert json.loads(response.body)["message"].startswith("every circuit is open")
    _, transport = h.get("/ready")
    ready = parse_response(transport.value())
    assert ready.status == 503
    replicas = json.loads(ready.body)["backends"]["pub"]["replicas"]
    assert {name: r["state"] for name, r in replicas.items()} == {"east": "open", "west": "open"}
    assert replicas["west"]["endpoint"] == "http://127.0.0.1:9002"
    assert "InternalError" in replicas["west"]["last_error"]
    assert sorted(metric_lines(h, "yatagarasu_circuit_state")) == [
        'yatagarasu_circuit_state{bucket="pub",replica="east"} 1.0',
        'yatagarasu_circuit_state{bucket="pub",replica="west"} 1.0',
    ]


def test_a_reload_keeps_the_circuits_of_unchanged_replicas() -> None:
    h = harness(circuit_breaker={"failure_threshold": 1, "timeout_seconds": 20})
    _, transport = h.get("/pub/k")
    h.agents["pub/east"].fail(ConnectionRefusedError())
    h.agents["pub/west"].fail(ConnectionRefusedError())
    assert parse_response(transport.value()).status == 502
    document = copy.deepcopy(h.document)
    document["buckets"][0]["s3"]["replicas"][1]["endpoint"] = "http://127.0.0.1:9003"
    assert h.reload(document).status == 200
    states = {r.name: r.breaker.state.value for r in h.clients["pub"].replicas}
    assert states == {"east": "open", "west": "closed"}  # west's section changed
    _, transport = h.get("/pub/k")
    assert h.agents["pub/west"].sent[-1].uri == b"http://127.0.0.1:9003/w/k"
