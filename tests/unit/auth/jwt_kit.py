"""Tokens, keys, schemes and requests on a Clock, shared by the auth unit tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest

from yatagarasu.auth.jwt import JwtScheme, JwtSchemeFactory
from yatagarasu.values import Identity

SECRET = "s" * 64


#: The injected clock's time in these tests; tokens are built from it, never from wall time.
NOW = 1_800_000_000.0


def clock_at(now: float = NOW) -> Clock:
    """:returns: a fake clock reading ``now``."""
    clock = Clock()
    clock.advance(now)
    return clock


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(private: Any) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def token(key: Any, alg: str, claims: dict[str, Any] | None = None, **headers: Any) -> str:
    payload = {"sub": "alice", "exp": int(NOW) + 3600, **(claims or {})}
    return jwt.encode(payload, key, algorithm=alg, headers=headers or None)


def scheme(settings: dict[str, Any], clock: Any = None) -> JwtScheme:
    return JwtSchemeFactory().build(settings, "jwt", clock or clock_at())


def request_with(
    value: str | None = None,
    header: str = "Authorization",
    args: dict[bytes, list[bytes]] | None = None,
) -> DummyRequest:
    request = DummyRequest([b"k"])
    if value is not None:
        request.requestHeaders.setRawHeaders(header, [value])
    request.args = args or {}
    return request


def outcome(d: Deferred[Identity]) -> Identity | BaseException:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "authentication did not finish synchronously"
    result = results[0]
    return result.value if isinstance(result, Failure) else result


def accepted(s: JwtScheme, tok: str) -> Identity:
    result = outcome(s.authenticate(request_with(f"Bearer {tok}")))
    assert isinstance(result, Identity), result
    return result


def refused(s: JwtScheme, tok: str) -> BaseException:
    result = outcome(s.authenticate(request_with(f"Bearer {tok}")))
    assert isinstance(result, BaseException), result
    return result
