"""
Upstreams without usable credentials through the whole in-memory proxy: a replica without
them is skipped without touching its circuit breaker, a bucket without any answers 503 with
``Retry-After``, and ``/ready`` shows each provider's state and last error.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from tests.unit.web.bucket_harness import OBJECT_HEADERS

#: a profile no shared file has: every fetch fails, whatever the environment
MISSING = {"source": "profile", "profile": "yatagarasu-test-no-such-profile"}
REPLICAS = [
    {"name": "east", "bucket": "e", "priority": 1, "endpoint": "http://127.0.0.1:9001"},
    {"name": "west", "bucket": "w", "priority": 2, "endpoint": "http://127.0.0.1:9002"},
]


def harness(east: dict[str, Any], west: dict[str, Any]) -> Harness:
    replicas = copy.deepcopy(REPLICAS)
    replicas[0]["credentials"], replicas[1]["credentials"] = east, west
    entry = bucket_entry(s3={"replicas": replicas})
    for key in ("bucket", "endpoint", "access_key", "secret_key"):
        entry["s3"].pop(key, None)
    h = Harness({"buckets": [entry]})
    h.reloader.startService()  # the providers' first fetches
    return h


def ready(h: Harness) -> tuple[int, Any]:
    response = parse_response(h.get("/ready")[1].value())
    return response.status, json.loads(response.body)


def test_a_replica_without_credentials_is_skipped_without_counting_against_its_breaker() -> None:
    h = harness(MISSING, {"source": "anonymous"})
    for _ in range(6):  # more than the breaker's failure threshold
        _, transport = h.get("/pub/k")
        h.agents["pub/west"].answer(FakeResponse(200, OBJECT_HEADERS, body=b"from west"))
        response = parse_response(transport.value())
        assert (response.status, response.body) == (200, b"from west")
    assert h.agents["pub/east"].sent == []
    east = h.clients["pub"].replicas[0]
    assert east.breaker.consecutive_failures == 0 and east.breaker.state.value == "closed"
    status, body = ready(h)
    assert status == 200 and body["status"] == "ready"
    replicas = body["backends"]["pub"]["replicas"]
    assert replicas["east"]["credentials"]["source"] == "profile"
    assert replicas["east"]["credentials"]["state"] == "failed"
    assert "yatagarasu-test-no-such-profile" in replicas["east"]["credentials"]["last_error"]
    assert replicas["west"]["credentials"] == {
        "source": "anonymous",
        "state": "ready",
        "expires_in_seconds": None,
        "last_error": None,
    }


def test_a_bucket_without_credentials_answers_503_with_retry_after_and_is_not_ready() -> None:
    h = harness(MISSING, MISSING)
    _, transport = h.get("/pub/k")
    response = parse_response(transport.value())
    assert response.status == 503
    assert int(response.header("retry-after") or "0") >= 1
    error = json.loads(response.body)
    assert error["status"] == 503 and error["error"] == "Service Unavailable"
    assert error["message"].startswith("no usable S3 credentials (source profile)")
    assert h.agents["pub/east"].sent == [] and h.agents["pub/west"].sent == []
    status, body = ready(h)
    assert status == 503 and body["status"] == "unavailable"
    assert body["backends"]["pub"]["status"] == "unhealthy"
    assert all(r["consecutive_failures"] == 0 for r in body["backends"]["pub"]["replicas"].values())


def test_a_reload_keeps_the_provider_of_an_unchanged_upstream_and_rebuilds_a_changed_one() -> None:
    h = harness(MISSING, {"source": "anonymous"})
    east, west = (r.credentials for r in h.clients["pub"].replicas)
    document = copy.deepcopy(h.document)
    document["buckets"][0]["s3"]["replicas"][1]["credentials"] = {
        "source": "profile",
        "profile": "yatagarasu-test-other",
    }
    assert h.reload(document).status == 200
    kept, rebuilt = (r.credentials for r in h.clients["pub"].replicas)
    assert kept is east and rebuilt is not west
    assert rebuilt.status()["source"] == "profile"
