"""JWKS key sets (yatagarasu.auth.jwks): parsing, refresh, rotation and failures on a Clock."""

from __future__ import annotations

import json
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from twisted.internet.defer import Deferred

from tests.unit.auth.jwt_kit import (
    accepted,
    clock_at,
    outcome,
    refused,
    request_with,
    rsa_key,
    token,
)
from tests.unit.fakes import FakeResponse
from yatagarasu.auth.jwks import JwksKeySet, parse_jwks
from yatagarasu.auth.jwt import JwtScheme
from yatagarasu.values import Identity


def jwk_of(private: Any, kid: str, alg: str | None, family: str = "RS256") -> dict[str, Any]:
    algorithm = jwt.get_algorithm_by_name(alg or family)
    document = json.loads(algorithm.to_jwk(private.public_key()))
    document["kid"] = kid
    if alg:
        document["alg"] = alg
    return document


def test_parse_jwks_keeps_usable_keys() -> None:
    rsa_private = rsa_key()
    ec_private = ec.generate_private_key(ec.SECP256R1())
    document = {
        "keys": [
            jwk_of(rsa_private, "r1", "RS256"),
            jwk_of(ec_private, "e1", None, "ES256"),
            {"kty": "oct", "k": "c2VjcmV0", "kid": "sym"},
            {"kty": "XYZ", "kid": "weird"},
            {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
            {**jwk_of(rsa_private, "enc", "RS256"), "use": "enc"},
        ]
    }
    keys = parse_jwks(document, None)
    assert [(k.kid, sorted(k.algorithms)) for k in keys] == [("r1", ["RS256"]), ("e1", ["ES256"])]


class JwksAgent:
    """Answers JWKS fetches with a document the test controls."""

    def __init__(self) -> None:
        self.document: dict[str, Any] | None = None
        self.fetches = 0

    def request(self, method: bytes, uri: bytes, headers: Any = None, body: Any = None) -> Any:
        from twisted.internet.defer import fail, succeed

        self.fetches += 1
        if self.document is None:
            return fail(ConnectionRefusedError("down"))
        return succeed(FakeResponse(200, {}, body=json.dumps(self.document).encode()))


def test_jwks_refresh_rotation_and_failures() -> None:
    clock = clock_at()
    keyset = JwksKeySet(clock, "https://issuer/jwks.json", 3600, None, min_refresh_seconds=10)
    agent = JwksAgent()
    keyset._agent = agent  # type: ignore[assignment]
    first, second = rsa_key(), rsa_key()
    agent.document = {"keys": [jwk_of(first, "k1", "RS256")]}
    service = keyset.service()
    service.startService()  # TimerService refreshes at once
    s = JwtScheme(build_settings({"jwks_url": "https://issuer/jwks.json"}), [], keyset, clock, ())
    accepted(s, token(first, "RS256", kid="k1"))
    # Rotation: an unknown kid triggers a refresh at once (even right after the first fetch)...
    agent.document = {"keys": [jwk_of(first, "k1", "RS256"), jwk_of(second, "k2", "RS256")]}
    accepted(s, token(second, "RS256", kid="k2"))
    fetches = agent.fetches
    # ... but garbage kids refresh at most once per min_refresh_seconds.
    for _ in range(5):
        refused(s, token(second, "RS256", kid="garbage"))
    assert agent.fetches == fetches
    clock.advance(11)
    refused(s, token(second, "RS256", kid="garbage"))
    assert agent.fetches == fetches + 1
    fetches = agent.fetches
    # The issuer goes down: the periodic refresh fails and old keys stay.
    agent.document = None
    clock.advance(3600)
    assert agent.fetches == fetches + 1
    accepted(s, token(first, "RS256", {"exp": int(clock.seconds()) + 60}, kid="k1"))
    service.stopService()


class PendingJwksAgent(JwksAgent):
    """Holds each JWKS fetch until the test answers it."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[Deferred[Any]] = []

    def request(self, method: bytes, uri: bytes, headers: Any = None, body: Any = None) -> Any:
        self.fetches += 1
        waiting: Deferred[Any] = Deferred()
        self.pending.append(waiting)
        return waiting

    def answer(self) -> None:
        body = json.dumps(self.document).encode()
        self.pending.pop(0).callback(FakeResponse(200, {}, body=body))


def test_unknown_kid_during_the_first_fetch_keeps_the_rotation_budget() -> None:
    # A token arriving while the fetch at start is under way joins it; the next rotation (a kid
    # published a moment later) must still refresh at once, not wait min_refresh_seconds.
    clock = clock_at()
    keyset = JwksKeySet(clock, "https://issuer/jwks.json", 3600, None, min_refresh_seconds=10)
    agent = PendingJwksAgent()
    keyset._agent = agent  # type: ignore[assignment]
    first, second = rsa_key(), rsa_key()
    agent.document = {"keys": [jwk_of(first, "k1", "RS256")]}
    service = keyset.service()
    service.startService()
    s = JwtScheme(build_settings({"jwks_url": "https://issuer/jwks.json"}), [], keyset, clock, ())
    early = s.authenticate(request_with(f"Bearer {token(first, 'RS256', kid='k1')}"))
    assert agent.fetches == 1  # joined the fetch at start instead of starting another
    agent.answer()
    assert isinstance(outcome(early), Identity)
    agent.document = {"keys": [jwk_of(first, "k1", "RS256"), jwk_of(second, "k2", "RS256")]}
    clock.advance(1)
    rotated = s.authenticate(request_with(f"Bearer {token(second, 'RS256', kid='k2')}"))
    assert agent.fetches == 2
    agent.answer()
    assert isinstance(outcome(rotated), Identity)
    service.stopService()


def build_settings(raw: dict[str, Any]) -> Any:
    from yatagarasu.auth.jwt import jwt_settings

    return jwt_settings(raw, "jwt")
