"""JWKS key sets (yatagarasu.auth.jwks): parsing, refresh, rotation and failures on a Clock."""

from __future__ import annotations

import json
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from tests.unit.auth.jwt_kit import accepted, clock_at, refused, rsa_key, token
from tests.unit.fakes import FakeResponse
from yatagarasu.auth.jwks import JwksKeySet, parse_jwks
from yatagarasu.auth.jwt import JwtScheme


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


def build_settings(raw: dict[str, Any]) -> Any:
    from yatagarasu.auth.jwt import jwt_settings

    return jwt_settings(raw, "jwt")
