"""Rate limits in the bucket pipeline, in memory: 429s, their fields, scopes, order, metrics."""

from __future__ import annotations

import json
from typing import Any

import jwt as pyjwt
from twisted.internet.defer import Deferred

from tests.unit.fakes import FakeResponse, Harness, Parsed, bucket_entry, parse_response
from yatagarasu.values import RateDecision

SECRET = "s" * 64
NOW = 1_800_000_000


def limited(rate_limit: dict[str, Any], *buckets: dict[str, Any], **top: Any) -> Harness:
    server = {"trusted_proxies": ["127.0.0.1"], "rate_limit": rate_limit}
    return Harness({"server": server, "buckets": list(buckets) or [bucket_entry()], **top})


def get(h: Harness, target: str, ip: str = "198.51.100.7", *headers: str) -> Parsed:
    """GET through the site, every S3 request it makes answered 200; the parsed response."""
    _, transport = h.get(target, f"X-Forwarded-For: {ip}", *headers)
    for agent in h.agents.values():
        for sent in agent.sent:
            if not sent.result.called:
                sent.result.callback(FakeResponse(200, {}, body=b"ok"))
    return parse_response(transport.value())


def test_per_ip_limit_answers_429_with_json_retry_after_and_ratelimit_fields() -> None:
    h = limited({"per_ip": {"requests_per_second": 1, "burst": 2}})
    statuses = []
    for _ in range(2):
        statuses.append(get(h, "/pub/k").status)
    refused = get(h, "/pub/k")
    assert statuses == [200, 200]
    assert refused.status == 429
    document = json.loads(refused.body)
    assert document["error"] == "Too Many Requests" and document["status"] == 429
    assert document["message"] == "rate limit exceeded (per_ip)"
    assert document["request_id"] == refused.header("x-request-id")
    assert refused.header("content-type") == "application/json"
    assert refused.header("retry-after") == "1"
    assert refused.header("ratelimit-limit") == "2"
    assert refused.header("ratelimit-remaining") == "0"
    assert refused.header("ratelimit-reset") == "2"
    assert len(h.agents["pub"].sent) == 2  # the refused one never reached S3
    # another client is not limited by this one's address
    assert get(h, "/pub/k", "198.51.100.8").status != 429
    h.clock.advance(1.0)
    assert get(h, "/pub/k").status == 200


def test_head_refused_has_no_body_but_the_same_fields() -> None:
    h = limited({"global": {"requests_per_second": 1, "burst": 1}})
    get(h, "/pub/k")
    _, transport = h.get("/pub/k", method="HEAD")
    refused = parse_response(transport.value())
    assert (refused.status, refused.body) == (429, b"")
    assert refused.header("retry-after") == "1" and refused.header("ratelimit-limit") == "1"


def test_global_limit_is_shared_by_every_client_and_bucket() -> None:
    h = limited(
        {"global": {"requests_per_second": 0.5, "burst": 3}},
        bucket_entry("a", "/a"),
        bucket_entry("b", "/b"),
    )
    codes = [get(h, f"/{b}/k", f"192.0.2.{i}").status for i, b in enumerate("abab")]
    assert codes[3] == 429 and 429 not in codes[:3]
    assert get(h, "/b/k").header("retry-after") == "2"


def test_bucket_limit_from_either_spelling_counts_only_that_bucket() -> None:
    h = limited(
        {},
        bucket_entry("a", "/a", rate_limit={"requests_per_second": 1, "burst": 1}),
        bucket_entry("b", "/b", s3={"rate_limit": {"requests_per_second": 1, "burst": 1}}),
        bucket_entry("c", "/c"),
    )
    for bucket in "abc":
        get(h, f"/{bucket}/k")
    assert get(h, "/a/k").status == 429
    second_b = get(h, "/b/k", "203.0.113.9")
    assert second_b.status == 429 and "(bucket)" in json.loads(second_b.body)["message"]
    assert get(h, "/c/k").status != 429
    metrics = h.assembly.metrics.render().decode()
    assert 'yatagarasu_rate_limited_total{bucket="a",scope="bucket"} 1.0' in metrics
    assert 'yatagarasu_rate_limited_total{bucket="b",scope="bucket"} 1.0' in metrics


def test_a_bucket_limit_needs_no_server_section() -> None:
    h = Harness({"buckets": [bucket_entry(rate_limit={"requests_per_second": 1, "burst": 1})]})
    assert get(h, "/pub/k").status == 200
    assert get(h, "/pub/k").status == 429


def test_the_per_ip_table_is_exported_as_metrics() -> None:
    h = limited({"per_ip": {"requests_per_second": 1, "burst": 1}, "max_keys": 3})
    for i in range(5):
        get(h, "/pub/k", f"192.0.2.{i}")
    metrics = h.assembly.metrics.render().decode()
    assert 'yatagarasu_rate_limit_keys{scope="per_ip"} 3.0' in metrics
    assert 'yatagarasu_rate_limit_evictions_total{scope="per_ip"} 2.0' in metrics
    h.reload({**h.document, "server": {"trusted_proxies": ["127.0.0.1"]}})
    assert "yatagarasu_rate_limit_keys{" not in h.assembly.metrics.render().decode()


def test_disabled_rate_limit_limits_nothing() -> None:
    h = limited(
        {"enabled": False, "per_ip": {"requests_per_second": 1, "burst": 1}},
        bucket_entry(rate_limit={"requests_per_second": 1, "burst": 1}),
    )
    assert h.assembly.limiter is None
    for _ in range(3):
        assert get(h, "/pub/k").status != 429


def test_per_user_limit_counts_the_jwt_subject_after_authentication() -> None:
    h = limited(
        {"per_user": {"requests_per_second": 1, "burst": 1}},
        bucket_entry(auth={"enabled": True}, jwt={"secret": SECRET}),
    )
    h.clock.advance(NOW)

    def bearer(sub: str) -> str:
        claims = {"sub": sub, "exp": NOW + 3600}
        return f"Authorization: Bearer {pyjwt.encode(claims, SECRET, algorithm='HS256')}"

    get(h, "/pub/k", "192.0.2.1", bearer("ann"))
    # the same user from another address is limited; another user is not
    refused = get(h, "/pub/k", "192.0.2.2", bearer("ann"))
    assert refused.status == 429 and "(per_user)" in json.loads(refused.body)["message"]
    assert get(h, "/pub/k", "192.0.2.2", bearer("bob")).status != 429
    # no token: 401, never counted against a user (per_user runs after authentication)
    for _ in range(3):
        assert get(h, "/pub/k").status == 401
    metrics = h.assembly.metrics.render().decode()
    assert 'yatagarasu_rate_limited_total{bucket="pub",scope="per_user"} 1.0' in metrics


def test_rate_limits_run_after_the_ip_filter_and_before_authentication() -> None:
    h = limited(
        {"per_ip": {"requests_per_second": 1, "burst": 1}},
        bucket_entry(
            auth={"enabled": True}, jwt={"secret": SECRET}, ip_filter={"blocklist": ["192.0.2.66"]}
        ),
    )
    for _ in range(3):
        assert get(h, "/pub/k", "192.0.2.66").status == 403
    assert get(h, "/pub/k").status == 401
    assert get(h, "/pub/k").status == 429  # no token needed to be limited


def test_allowed_responses_carry_ratelimit_fields_only_when_switched_on() -> None:
    rules = {"per_ip": {"requests_per_second": 1, "burst": 5}}
    quiet = limited(rules)
    assert get(quiet, "/pub/k").header("ratelimit-limit") is None
    loud = limited({**rules, "headers_on_allowed": True})
    response = get(loud, "/pub/k")
    assert response.status == 200
    assert response.header("ratelimit-limit") == "5"
    assert response.header("ratelimit-remaining") == "4"
    assert response.header("ratelimit-reset") == "1"
    assert response.header("retry-after") is None


def test_a_memory_hit_under_local_limits_is_answered_within_the_call() -> None:
    h = limited(
        {"per_ip": {"requests_per_second": 100}, "headers_on_allowed": True},
        cache={"enabled": True},
    )
    get(h, "/pub/k")
    sent = len(h.agents["pub"].sent)
    _, transport = h.get("/pub/k", "X-Forwarded-For: 198.51.100.7")  # no agent answer
    response = parse_response(transport.value())
    assert (response.status, response.header("x-cache")) == (200, "HIT")
    assert response.header("ratelimit-remaining") == "98"
    assert len(h.agents["pub"].sent) == sent and h.site.active_count == 0


def test_the_proxy_routes_are_never_limited() -> None:
    h = limited({"global": {"requests_per_second": 1, "burst": 1}})
    get(h, "/pub/k")
    for _ in range(3):
        _, transport = h.get("/health")
        assert parse_response(transport.value()).status == 200


def test_a_reload_builds_the_limits_of_the_new_configuration() -> None:
    h = limited({"per_ip": {"requests_per_second": 1, "burst": 1}})
    get(h, "/pub/k")
    assert get(h, "/pub/k").status == 429
    document = {**h.document, "server": {"trusted_proxies": ["127.0.0.1"]}}
    assert h.reload(document).status == 200
    assert h.assembly.limiter is None
    assert get(h, "/pub/k").status != 429


def test_a_shared_limiter_that_cannot_answer_follows_its_fail_mode_later() -> None:
    h = limited({"per_ip": {"requests_per_second": 1, "burst": 1}})
    limiter: Any = h.assembly.limiter
    pending: list[Deferred[RateDecision]] = []

    def acquire(checks: Any) -> Deferred[RateDecision]:
        pending.append(Deferred())
        return pending[-1]

    limiter.acquire = acquire  # as a Redis limiter answers: later, maybe degraded
    _, refused = h.get("/pub/k", "X-Forwarded-For: 192.0.2.1")
    _, allowed = h.get("/pub/k", "X-Forwarded-For: 192.0.2.1")
    assert refused.value() == b"" and len(pending) == 2
    pending[0].callback(RateDecision(False, "per_ip", 1, 0, 1.0, 1.0, degraded=True))
    pending[1].callback(RateDecision(True, "per_ip", 1, 0, 1.0, 1.0, degraded=True))
    closed = parse_response(refused.value())
    assert closed.status == 503 and closed.header("retry-after") == "1"
    assert json.loads(closed.body)["message"] == "rate limits cannot be checked"
    h.agents["pub"].answer(FakeResponse(200, {}, body=b"ok"))
    assert parse_response(allowed.value()).status == 200
    metrics = h.assembly.metrics.render().decode()
    assert 'yatagarasu_rate_limit_backend_unavailable_total{outcome="refused"} 1.0' in metrics
    assert 'yatagarasu_rate_limit_backend_unavailable_total{outcome="allowed"} 1.0' in metrics
