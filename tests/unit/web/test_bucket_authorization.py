"""
Authorization in the bucket pipeline, in memory: after authentication, before the cache and
S3; 403 on a denial, 503 when the policy service gives no answer and the fail mode is closed;
decisions counted in /metrics. The OPA authorizer is the real one, its HTTP calls answered on
the harness's MemoryReactorClock.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.defer import fail

from tests.unit.auth.jwt_kit import NOW, SECRET, token
from tests.unit.auth.memory_http import MemoryHttpServer
from tests.unit.cache_harness import cached, fetch, obj
from tests.unit.fakes import Harness, bucket_entry, lose, parse_response
from yatagarasu.errors import ConfigError

OPA = {"type": "opa", "opa_url": "http://127.0.0.1:8181", "opa_policy_path": "y/allow"}


def opa_bucket(**authorization: Any) -> dict[str, Any]:
    return bucket_entry(
        jwt={"enabled": True, "secret": SECRET}, authorization={**OPA, **authorization}
    )


def harness(bucket: dict[str, Any]) -> tuple[Harness, MemoryHttpServer]:
    h = Harness({"buckets": [bucket]})
    h.clock.advance(NOW)  # the tokens are built from NOW
    return h, MemoryHttpServer(h.clock)


def bearer(claims: dict[str, Any] | None = None) -> str:
    return f"Authorization: Bearer {token(SECRET, 'HS256', claims)}"


def metric_lines(h: Harness) -> list[str]:
    text = h.assembly.metrics.render().decode()
    return [line for line in text.splitlines() if line.startswith("yatagarasu_authorization_")]


def test_allowed_requests_reach_s3_and_denied_ones_do_not() -> None:
    h, opa = harness(opa_bucket())
    _, transport = h.get("/pub/docs/a.txt", bearer({"groups": ["r"]}))
    assert h.agents["pub"].sent == []  # S3 waits for the decision
    asked = opa.answer(200, {"result": True})
    document = asked.json()["input"]
    assert (document["subject"], document["bucket"], document["key"]) == (
        "alice",
        "pub",
        "docs/a.txt",
    )
    assert document["jwt_claims"]["groups"] == ["r"]
    assert (document["method"], document["client_ip"]) == ("GET", "127.0.0.1")
    h.agents["pub"].answer(obj())
    assert parse_response(transport.value()).status == 200
    _, transport = h.get("/pub/docs/b.txt", bearer())
    opa.answer(200, {"result": False})
    denied = parse_response(transport.value())
    assert denied.status == 403
    assert json.loads(denied.body)["message"] == "denied by opa"
    assert len(h.agents["pub"].sent) == 1
    assert metric_lines(h) == [
        'yatagarasu_authorization_decisions_total{authorizer="opa",bucket="pub",decision="allow",'
        'result="allow"} 1.0',
        'yatagarasu_authorization_decisions_total{authorizer="opa",bucket="pub",decision="deny",'
        'result="deny"} 1.0',
    ]


def test_authentication_comes_first() -> None:
    h, opa = harness(opa_bucket())
    _, transport = h.get("/pub/a.txt")
    assert parse_response(transport.value()).status == 401
    assert opa.pending() == 0


@pytest.mark.parametrize(("mode", "status"), [("closed", 503), ("open", 200)])
def test_no_answer_follows_the_fail_mode(mode: str, status: int) -> None:
    h, opa = harness(opa_bucket(opa_fail_mode=mode, opa_timeout_ms=100))
    _, transport = h.get("/pub/a.txt", bearer())
    assert opa.pending() == 1
    h.clock.advance(0.1)
    if status == 200:
        h.agents["pub"].answer(obj())
    response = parse_response(transport.value())
    assert response.status == status
    if status == 503:
        assert response.header("retry-after") == "1"
        assert json.loads(response.body)["message"] == "authorization service unavailable (opa)"
        assert h.agents["pub"].sent == []
    verdict = "deny" if mode == "closed" else "allow"
    assert metric_lines(h) == [
        'yatagarasu_authorization_decisions_total{authorizer="opa",bucket="pub",'
        f'decision="{verdict}",result="error"}} 1.0'
    ]


def test_a_cached_object_is_served_only_to_an_allowed_request() -> None:
    h = cached(opa_bucket(opa_cache_ttl_seconds=60))
    h.clock.advance(NOW - h.clock.seconds())
    opa = MemoryHttpServer(h.clock)
    _, transport = h.get("/pub/a.txt", bearer())
    opa.answer(200, {"result": True})
    h.agents["pub"].answer(obj())
    assert parse_response(transport.value()).header("x-cache") == "MISS"
    authorizer: Any = h.access.authorizers["pub"]
    deferred_calls: list[Any] = []
    authorize = authorizer.authorize
    authorizer.authorize = lambda q: deferred_calls.append(q) or authorize(q)
    hit = fetch(h, "/pub/a.txt", bearer())  # same token, same input: the cached decision
    assert (hit.status, hit.header("x-cache")) == (200, "HIT")
    assert deferred_calls == []  # answered by authorize_now: no Deferred on the way
    assert len(opa.received) == 1
    _, transport = h.get("/pub/a.txt", bearer({"role": "other"}))  # another input: asked
    opa.answer(200, {"result": False})
    assert parse_response(transport.value()).status == 403
    assert len(h.agents["pub"].sent) == 1
    assert 'decision="allow",result="cached"} 1.0' in "\n".join(metric_lines(h))


def test_a_client_going_away_cancels_the_policy_call() -> None:
    h, opa = harness(opa_bucket())
    channel, _ = h.get("/pub/a.txt", bearer())
    assert opa.pending() == 1
    lose(channel)
    assert opa.closed(0)
    assert metric_lines(h) == []


def test_a_public_bucket_can_be_authorized_too() -> None:
    h, opa = harness(bucket_entry(authorization=OPA))
    _, transport = h.get("/pub/a.txt")
    document = opa.answer(200, {"result": False}).json()["input"]
    assert (document["subject"], document["jwt_claims"]) == (None, {})
    assert parse_response(transport.value()).status == 403


def test_a_third_party_authorizer_plugin() -> None:
    bucket = bucket_entry(
        jwt={"enabled": True, "secret": SECRET},
        authorization={"type": "owner_prefix", "shared_prefixes": ["public/"]},
    )
    h, _ = harness(bucket)
    _, transport = h.get("/pub/bob/x", bearer())
    response = parse_response(transport.value())
    assert (response.status, json.loads(response.body)["message"]) == (
        403,
        "alice may not read this key",
    )
    h.get("/pub/alice/x", bearer())
    h.get("/pub/public/x", bearer())
    assert [s.uri.rsplit(b"/", 2)[-2:] for s in h.agents["pub"].sent] == [
        [b"alice", b"x"],
        [b"public", b"x"],
    ]


@pytest.mark.parametrize(
    ("authorization", "path", "message"),
    [
        ({"opa_url": "http://x"}, "buckets[0].authorization.type", "is required (available: "),
        ({"type": "xacml"}, "buckets[0].authorization.type", "unknown IAuthorizerFactory 'xacml'"),
        ({**OPA, "opa_url": "opa"}, "buckets[0].authorization.opa_url", "expected http(s)"),
        ({"type": "owner_prefix", "x": 1}, "buckets[0].authorization.x", "unknown key"),
    ],
)
def test_bad_authorization_settings_name_the_key(
    authorization: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        Harness({"buckets": [bucket_entry(authorization=authorization)]})
    assert caught.value.path == path
    assert message in caught.value.message
    if "available" in message:
        assert "opa, openfga, owner_prefix" in caught.value.message


def test_an_old_generation_closes_its_authorizers() -> None:
    h, opa = harness(opa_bucket())
    _, transport = h.get("/pub/a.txt", bearer())
    opa.answer(200, {"result": True})
    h.agents["pub"].answer(obj())
    assert parse_response(transport.value()).status == 200
    assert not opa.closed(0)  # the pooled connection is kept
    report = h.reload({"buckets": [bucket_entry()]})
    assert report.ok, report
    h.clock.advance(0)  # the old generation retires on the next turn
    assert opa.closed(0)


def test_an_authorizer_that_fails_is_answered_500_never_allowed() -> None:
    h, _ = harness(opa_bucket())
    authorizer: Any = h.access.authorizers["pub"]
    authorizer.authorize_now = lambda q: None
    authorizer.authorize = lambda q: fail(RuntimeError("plugin bug"))
    _, transport = h.get("/pub/a.txt", bearer())
    response = parse_response(transport.value())
    assert (response.status, json.loads(response.body)["message"]) == (500, "internal error")
    assert h.agents["pub"].sent == []


def test_the_per_user_rate_limit_comes_before_authorization() -> None:
    h = Harness(
        {
            "server": {"rate_limit": {"per_user": {"requests_per_second": 1, "burst": 1}}},
            "buckets": [opa_bucket()],
        }
    )
    h.clock.advance(NOW)
    opa = MemoryHttpServer(h.clock)
    _, first = h.get("/pub/a.txt", bearer())
    assert opa.pending() == 1  # the first request of alice is within her limit: OPA is asked
    opa.answer(200, {"result": True})
    h.agents["pub"].answer(obj())
    assert parse_response(first.value()).status == 200
    _, second = h.get("/pub/a.txt", bearer())
    refused = parse_response(second.value())
    assert refused.status == 429
    assert "(per_user)" in json.loads(refused.body)["message"]
    assert opa.pending() == 0  # refused by the limit: the policy service is never asked
    assert len(metric_lines(h)) == 1
