"""
The ``openfga`` authorizer on a MemoryReactorClock, its HTTP side answered in memory: the
Check request (tuple key, model id, bearer token), the user/relation/object mapping, the
decision cache and the fail modes.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from tests.unit.auth.memory_http import MemoryHttpServer
from yatagarasu.auth.openfga import (
    OpenFgaAuthorizer,
    OpenFgaAuthorizerFactory,
    OpenFgaSettings,
    openfga_object,
    openfga_user,
)
from yatagarasu.errors import ConfigError
from yatagarasu.values import AuthorizationQuery, Decision, Identity

PATH = "buckets[1].authorization"
STORE = "01ARZ3NDEKTSV4RRFFQ69G5FAV"
ALICE = Identity("alice", {"sub": "alice", "user": {"id": "u-7"}}, "jwt")


def build(clock: MemoryReactorClock, **settings: Any) -> OpenFgaAuthorizer:
    base = {"openfga_endpoint": "http://127.0.0.1:8080", "openfga_store_id": STORE}
    return OpenFgaAuthorizerFactory().build({**base, **settings}, PATH, clock)


def query(key: str = "docs/a.txt", identity: Identity | None = ALICE) -> AuthorizationQuery:
    return AuthorizationQuery("products", key, "HEAD", "127.0.0.1", identity)


def decide(authorizer: OpenFgaAuthorizer, q: AuthorizationQuery) -> list[Any]:
    results: list[Any] = []
    authorizer.authorize(q).addBoth(results.append)
    return results


def test_a_check_call_with_model_id_and_bearer_token() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    authorizer = build(
        clock, openfga_authorization_model_id="01HXJR6WBQD3ABCDEFGHIJKLMN", openfga_api_token="tok"
    )
    results = decide(authorizer, query())
    request = server.answer(200, {"allowed": True, "resolution": ""})
    assert (request.method, request.path) == ("POST", f"/stores/{STORE}/check")
    assert request.headers["authorization"] == "Bearer tok"
    assert request.json() == {
        "tuple_key": {
            "user": "user:alice",
            "relation": "viewer",
            "object": "file:products/docs/a.txt",
        },
        "authorization_model_id": "01HXJR6WBQD3ABCDEFGHIJKLMN",
    }
    assert results == [Decision(True, "allow", "allowed by openfga")]


def test_without_model_id_or_token_neither_is_sent_and_false_denies() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    results = decide(build(clock, openfga_user_claim="user.id"), query("dir/"))
    request = server.answer(200, {"allowed": False})
    assert "authorization" not in request.headers
    assert request.json() == {
        "tuple_key": {"user": "user:u-7", "relation": "viewer", "object": "folder:products/dir/"}
    }
    assert results == [Decision(False, "deny", "denied by openfga")]


def test_no_user_id_is_denied_without_asking() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    authorizer = build(clock, openfga_user_claim="email")
    for identity in (ALICE, None, Identity("x", {"email": 5}, "jwt")):
        results = decide(authorizer, query(identity=identity))
        denied = Decision(False, "deny", "denied by openfga: no user id in claim 'email'")
        assert results == [denied]
        assert authorizer.authorize_now(query(identity=identity)) == denied
    assert server.pending() == 0


def test_the_mapping_helpers() -> None:
    assert openfga_user(ALICE, "sub") == "user:alice"
    assert openfga_user(ALICE, "user.id") == "user:u-7"
    assert openfga_user(ALICE, "sub.id") is None
    assert openfga_user(Identity("x", {"sub": ""}), "sub") is None
    assert openfga_object("b", "a/b.txt") == "file:b/a/b.txt"
    assert openfga_object("b", "/a/") == "folder:b/a/"


def test_decisions_are_cached_per_tuple_for_the_ttl() -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    authorizer = build(clock, openfga_cache_ttl_seconds=5)
    first = decide(authorizer, query())
    server.answer(200, {"allowed": True})
    assert first == [Decision(True, "allow", "allowed by openfga")]
    bob = Identity("bob", {"sub": "bob"}, "jwt")
    assert decide(authorizer, query()) == [Decision(True, "cached", "allowed by openfga")]
    assert authorizer.authorize_now(query()) == Decision(True, "cached", "allowed by openfga")
    assert authorizer.authorize_now(query(identity=bob)) is None
    other = decide(authorizer, query(identity=bob))
    server.answer(200, {"allowed": False})
    assert other == [Decision(False, "deny", "denied by openfga")]
    clock.advance(5)
    decide(authorizer, query())
    assert server.pending() == 1


@pytest.mark.parametrize(("mode", "allowed"), [("closed", False), ("open", True)])
def test_unusable_answers_follow_the_fail_mode(mode: str, allowed: bool) -> None:
    clock = MemoryReactorClock()
    server = MemoryHttpServer(clock)
    authorizer = build(clock, openfga_fail_mode=mode, openfga_timeout_ms=20)
    for answer, reason in (
        ({"code": "validation_error"}, "answer has no boolean 'allowed'"),
        ({"allowed": "yes"}, "answer has no boolean 'allowed'"),
        ([True], "answer has no boolean 'allowed'"),
    ):
        results = decide(authorizer, query())
        server.answer(200, answer)
        assert results == [Decision(allowed, "error", f"openfga gave no answer ({reason})")]
    results = decide(authorizer, query())
    clock.advance(0.02)
    assert results == [
        Decision(allowed, "error", "openfga gave no answer (no answer within 20 ms)")
    ]


def test_the_api_token_stays_out_of_repr() -> None:
    settings = OpenFgaSettings("http://fga", STORE, openfga_api_token="very-secret")
    assert "very-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("settings", "path", "message"),
    [
        ({"openfga_endpoint": "fga:8080"}, "openfga_endpoint", "expected http(s)://host[:port]"),
        ({"openfga_store_id": "a/b"}, "openfga_store_id", "expected an id"),
        ({"openfga_authorization_model_id": "x y"}, "openfga_authorization_model_id", "an id"),
        ({"openfga_api_token": " "}, "openfga_api_token", "one word of printable characters"),
        ({"openfga_api_token": "secret\r\nX: 1"}, "openfga_api_token", "one word of printable"),
        ({"openfga_timeout_ms": -5}, "openfga_timeout_ms", "must be > 0"),
        ({"openfga_cache_ttl_seconds": -1}, "openfga_cache_ttl_seconds", "must be >= 0"),
        ({"openfga_fail_mode": "shut"}, "openfga_fail_mode", "must be one of"),
        ({"openfga_user_claim": "user..id"}, "openfga_user_claim", "expected a claim name"),
        ({"opa_url": "http://opa"}, "opa_url", "unknown key"),
    ],
)
def test_settings_are_validated_with_dotted_paths(
    settings: dict[str, Any], path: str, message: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        build(MemoryReactorClock(), **settings)
    assert caught.value.path == f"{PATH}.{path}"
    assert message in caught.value.message
    assert "secret" not in str(caught.value)
