"""
The ``opa`` authorizer on a MemoryReactorClock, its HTTP side answered in memory: the data API
request it sends, how it reads the answer, its decision cache and its fail modes.
"""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent, globalLogPublisher

from tests.unit.auth.memory_http import MemoryHttpServer
from yatagarasu.auth.opa import OpaAuthorizer, OpaAuthorizerFactory, _EncodedClaims, opa_input
from yatagarasu.errors import ConfigError
from yatagarasu.testing import result_of
from yatagarasu.values import AuthorizationQuery, Decision, Identity

PATH = "buckets[0].authorization"
ALICE = Identity("alice", {"sub": "alice", "groups": ["readers"]}, "jwt")


def build(clock: MemoryReactorClock, **settings: Any) -> OpaAuthorizer:
    base = {"opa_url": "http://127.0.0.1:8181/", "opa_policy_path": "/yatagarasu/authz/allow"}
    return OpaAuthorizerFactory().build({**base, **settings}, PATH, clock)


def query(key: str = "docs/a.txt", identity: Identity | None = ALICE) -> AuthorizationQuery:
    return AuthorizationQuery("products", key, "GET", "203.0.113.9", identity)


def decide(authorizer: OpaAuthorizer, q: AuthorizationQuery) -> list[Any]:
    results: list[Any] = []
    authorizer.authorize(q).addBoth(results.append)
    return results


def test_posts_the_input_document_and_allows_only_on_result_true() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    authorizer = build(clock, opa_cache_ttl_seconds=0)
    results = decide(authorizer, query())
    request = server.answer(200, {"result": True})
    assert (request.method, request.path) == ("POST", "/v1/data/yatagarasu/authz/allow")
    assert request.json() == {
        "input": {
            "jwt_claims": {"sub": "alice", "groups": ["readers"]},
            "subject": "alice",
            "bucket": "products",
            "key": "docs/a.txt",
            "path": "docs/a.txt",
            "method": "GET",
            "client_ip": "203.0.113.9",
        }
    }
    assert results == [Decision(True, "allow", "allowed by opa")]
    for answer in ({"result": False}, {}, {"result": "true"}, {"result": {"allow": True}}):
        results = decide(authorizer, query())
        server.answer(200, answer)
        assert results == [Decision(False, "deny", "denied by opa")], answer


def test_an_anonymous_request_has_empty_claims() -> None:
    document = opa_input(query(identity=None))
    assert (document["jwt_claims"], document["subject"]) == ({}, None)


def test_decisions_are_cached_for_the_ttl_per_input() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    authorizer = build(clock, opa_cache_ttl_seconds=30)
    first = decide(authorizer, query())
    server.answer(200, {"result": False})
    assert first == [Decision(False, "deny", "denied by opa")]
    assert decide(authorizer, query()) == [Decision(False, "cached", "denied by opa")]
    assert server.pending() == 0
    other = decide(authorizer, query("docs/b.txt"))  # another input: asked
    server.answer(200, {"result": True})
    assert other == [Decision(True, "allow", "allowed by opa")]
    clock.advance(30)
    expired = decide(authorizer, query())
    assert server.pending() == 1
    server.answer(200, {"result": True})
    assert expired == [Decision(True, "allow", "allowed by opa")]
    assert len(server.received) == 3


@pytest.mark.parametrize(("mode", "allowed"), [("closed", False), ("open", True)])
def test_no_answer_follows_the_fail_mode_and_is_not_cached(mode: str, allowed: bool) -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    settings: dict[str, Any] = {"opa_timeout_ms": 50}
    if mode == "open":
        settings["opa_fail_mode"] = "open"
    authorizer = build(clock, **settings)
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        results = decide(authorizer, query())
        clock.advance(0.05)
        assert results == [
            Decision(allowed, "error", "opa gave no answer (no answer within 50 ms)")
        ]
        again = decide(authorizer, query())  # not cached: asked again
        server.answer(500, {})
        assert again == [Decision(allowed, "error", "opa gave no answer (answered HTTP 500)")]
        recovered = decide(authorizer, query())
        server.answer(200, {"result": True})
        assert recovered == [Decision(True, "allow", "allowed by opa")]
    finally:
        globalLogPublisher.removeObserver(events.append)
    ours = [e for e in events if e.get("authorizer") == "opa"]
    assert [e["log_level"].name for e in ours] == ["warn", "info"]  # once down, once up
    assert ours[0]["fail_mode"] == mode
    assert ours[0]["outcome"] == ("allowed" if allowed else "refused")


def test_cancelling_a_decision_cancels_the_call() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    authorizer = build(clock)
    deciding = authorizer.authorize(query())
    assert server.pending() == 1
    assert not server.closed(0)
    deciding.cancel()
    with pytest.raises(CancelledError):
        result_of(deciding)
    assert server.closed(0)  # the request in flight was aborted
    clock.advance(10)  # the time limit passes: nothing fires any more


@pytest.mark.parametrize(
    ("settings", "path", "message"),
    [
        ({"opa_url": "ftp://x"}, "opa_url", "expected http(s)://host[:port]"),
        ({"opa_url": "http://u:p@opa:1"}, "opa_url", "credentials"),
        ({"opa_policy_path": "a b"}, "opa_policy_path", "expected a rule path"),
        ({"opa_policy_path": "v1/data/a"}, "opa_policy_path", "leave out v1/data/"),
        ({"opa_timeout_ms": 0}, "opa_timeout_ms", "must be > 0"),
        ({"opa_cache_ttl_seconds": -1}, "opa_cache_ttl_seconds", "must be >= 0"),
        ({"opa_fail_mode": "ajar"}, "opa_fail_mode", "must be one of 'open', 'closed'"),
        ({"opa_timout_ms": 5}, "opa_timout_ms", "did you mean 'opa_timeout_ms'"),
        ({"openfga_store_id": "S"}, "openfga_store_id", "unknown key"),
    ],
)
def test_settings_are_validated_with_dotted_paths(
    settings: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build(MemoryReactorClock(), **settings)
    assert caught.value.path == f"{PATH}.{path}"
    assert message in caught.value.message


def test_url_and_policy_path_are_required() -> None:
    with pytest.raises(ConfigError) as caught:
        OpaAuthorizerFactory().build({"opa_url": "http://opa"}, PATH, MemoryReactorClock())
    assert (caught.value.path, caught.value.message) == (f"{PATH}.opa_policy_path", "is required")


def test_a_remembered_decision_is_known_at_once() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    authorizer = build(clock)
    assert authorizer.authorize_now(query()) is None
    decide(authorizer, query())
    server.answer(200, {"result": True})
    assert authorizer.authorize_now(query()) == Decision(True, "cached", "allowed by opa")
    assert authorizer.authorize_now(query("docs/other")) is None
    same_claims = Identity("alice", {"groups": ["readers"], "sub": "alice"}, "jwt")
    assert authorizer.authorize_now(query(identity=same_claims)) is not None  # equal claims
    other = Identity("alice", {"sub": "alice", "groups": ["writers"]}, "jwt")
    assert authorizer.authorize_now(query(identity=other)) is None
    assert authorizer.authorize_now(query(identity=None)) is None
    clock.advance(60)
    assert authorizer.authorize_now(query()) is None  # expired with the TTL
    assert server.pending() == 0  # authorize_now never asks


def test_claims_are_encoded_once_per_identity_object_and_the_memo_is_bounded() -> None:
    encoded = _EncodedClaims(max_entries=2)
    first = encoded.encode(ALICE)
    assert first == '{"groups": ["readers"], "sub": "alice"}'
    assert encoded.encode(ALICE) is first
    identities = [Identity(str(i), {"sub": str(i)}) for i in range(3)]
    for identity in identities:
        encoded.encode(identity)
    assert len(encoded._known) == 2
    assert encoded.encode(identities[0]) == '{"sub": "0"}'  # forgotten, encoded again


def test_a_base_path_in_opa_url_is_kept() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    authorizer = build(clock, opa_url="http://127.0.0.1:8181/opa/")
    decide(authorizer, query())
    assert server.answer(200, {"result": True}).path == "/opa/v1/data/yatagarasu/authz/allow"


def test_concurrent_identical_queries_share_one_call() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    authorizer = build(clock, opa_cache_ttl_seconds=0)
    first, second = decide(authorizer, query()), decide(authorizer, query())
    other = decide(authorizer, query("docs/b.txt"))
    assert server.pending() == 2  # one call per distinct input
    server.answer(200, {"result": True})
    assert first == [Decision(True, "allow", "allowed by opa")]
    assert second == [Decision(True, "cached", "allowed by opa")]  # reused, not asked
    server.answer(200, {"result": False})
    assert other == [Decision(False, "deny", "denied by opa")]
    late = decide(authorizer, query())  # TTL 0: nothing remembered, a new call
    assert server.pending() == 1
    clock.advance(0.1)
    assert late == [Decision(False, "error", "opa gave no answer (no answer within 100 ms)")]


def test_claims_that_are_not_json_are_sent_as_text() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    odd = Identity("robot", {"sub": "robot", "since": datetime.date(2026, 12, 2)}, "apikey")
    results = decide(build(clock), query(identity=odd))
    request = server.answer(200, {"result": True})
    assert request.json()["input"]["jwt_claims"] == {"sub": "robot", "since": "2026-12-02"}
    assert results == [Decision(True, "allow", "allowed by opa")]
