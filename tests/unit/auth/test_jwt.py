"""The JWT scheme (yatagarasu.auth.jwt): algorithms, keys, time claims, issuer and audience."""

from __future__ import annotations

import json
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

from tests.unit.auth.jwt_kit import (
    NOW,
    SECRET,
    accepted,
    clock_at,
    outcome,
    public_pem,
    refused,
    request_with,
    rsa_key,
    scheme,
    token,
    write,
)
from yatagarasu import plugins
from yatagarasu.config import ConfigError
from yatagarasu.discovery import find
from yatagarasu.errors import AuthenticationRequired, InvalidCredentials
from yatagarasu.interfaces import IAuthScheme, IAuthSchemeFactory


def test_plugin_and_interfaces() -> None:
    factory = find(IAuthSchemeFactory, "jwt", "auth.scheme", plugins)
    assert verifyObject(IAuthSchemeFactory, factory)
    assert IPlugin.providedBy(factory)
    assert verifyObject(IAuthScheme, scheme({"secret": SECRET}))
    with pytest.raises(ConfigError, match=r"unknown IAuthSchemeFactory 'nope' \(available: .*jwt"):
        find(IAuthSchemeFactory, "nope", "buckets[0].auth.scheme", plugins)


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_algorithms(alg: str) -> None:
    s = scheme({"secret": SECRET, "algorithm": alg})
    assert accepted(s, token(SECRET, alg)).subject == "alice"
    other = "HS256" if alg != "HS256" else "HS512"
    assert isinstance(refused(s, token(SECRET, other)), InvalidCredentials)


@pytest.mark.parametrize("alg", ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512"])
def test_rsa_algorithms(tmp_path: Path, alg: str) -> None:
    private = rsa_key()
    s = scheme({"rsa_public_key_path": write(tmp_path, "k.pem", public_pem(private))})
    assert accepted(s, token(private, alg)).subject == "alice"
    assert isinstance(refused(s, token(rsa_key(), alg)), InvalidCredentials)


@pytest.mark.parametrize(("curve", "alg"), [(ec.SECP256R1(), "ES256"), (ec.SECP384R1(), "ES384")])
def test_ecdsa_algorithms(tmp_path: Path, curve: ec.EllipticCurve, alg: str) -> None:
    private = ec.generate_private_key(curve)
    s = scheme(
        {"ecdsa_public_key_path": write(tmp_path, "k.pem", public_pem(private)), "algorithm": alg}
    )
    assert accepted(s, token(private, alg)).subject == "alice"


def test_eddsa(tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    s = scheme({"public_key_path": write(tmp_path, "k.pem", public_pem(private))})
    assert accepted(s, token(private, "EdDSA")).subject == "alice"


def test_configured_algorithm_must_fit_the_key(tmp_path: Path) -> None:
    path = write(tmp_path, "k.pem", public_pem(rsa_key()))
    with pytest.raises(ConfigError) as info:
        scheme({"rsa_public_key_path": path, "algorithm": "HS256"})
    assert info.value.path == "jwt.algorithm"
    with pytest.raises(ConfigError, match="PEM key is not a shared secret"):
        scheme({"secret": public_pem(rsa_key()).decode()})
    with pytest.raises(ConfigError, match="cannot read"):
        scheme({"rsa_public_key_path": str(tmp_path / "missing.pem")})
    with pytest.raises(ConfigError, match="no verification key"):
        scheme({"algorithm": "HS256"})


# --- attacks -------------------------------------------------------------------------------


def test_alg_none_is_rejected() -> None:
    s = scheme({"secret": SECRET})
    unsigned = jwt.encode({"sub": "x", "exp": int(NOW) + 60}, None, algorithm="none")
    assert isinstance(refused(s, unsigned), InvalidCredentials)


def test_algorithm_confusion_hs256_with_rsa_public_key(tmp_path: Path) -> None:
    private = rsa_key()
    pem = public_pem(private)
    s = scheme({"rsa_public_key_path": write(tmp_path, "k.pem", pem)})
    # Forge: HMAC-sign with the public PEM as the secret (what a naive verifier would accept).
    header = jwt.utils.base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = jwt.utils.base64url_encode(json.dumps({"sub": "mallory", "exp": int(NOW) + 60}).encode())
    import hashlib
    import hmac

    signature = jwt.utils.base64url_encode(
        hmac.new(pem, header + b"." + body, hashlib.sha256).digest()
    )
    forged = (header + b"." + body + b"." + signature).decode()
    error = refused(s, forged)
    assert isinstance(error, InvalidCredentials)
    assert "algorithm" in error.message


def test_tampered_payload_is_rejected() -> None:
    s = scheme({"secret": SECRET})
    header, _, signature = token(SECRET, "HS256").split(".")
    body = jwt.utils.base64url_encode(json.dumps({"sub": "root", "exp": int(NOW) + 60}).encode())
    assert isinstance(refused(s, f"{header}.{body.decode()}.{signature}"), InvalidCredentials)


def test_time_checks_and_leeway() -> None:
    s = scheme({"secret": SECRET})
    expired = refused(s, token(SECRET, "HS256", {"exp": int(NOW) - 10}))
    assert isinstance(expired, InvalidCredentials) and expired.message == "token expired"
    early = refused(s, token(SECRET, "HS256", {"nbf": int(NOW) + 600}))
    assert isinstance(early, InvalidCredentials) and early.message == "token not yet valid"
    lenient = scheme({"secret": SECRET, "leeway_seconds": 60})
    accepted(lenient, token(SECRET, "HS256", {"exp": int(NOW) - 10}))
    accepted(lenient, token(SECRET, "HS256", {"nbf": int(NOW) + 50, "iat": int(NOW) + 50}))
    assert refused(lenient, token(SECRET, "HS256", {"exp": int(NOW) - 61})).message == (
        "token expired"
    )
    assert refused(lenient, token(SECRET, "HS256", {"iat": int(NOW) + 61})).message == (
        "token not yet valid"
    )


def test_time_claims_are_checked_against_the_injected_clock_only() -> None:
    clock = clock_at()
    s = scheme({"secret": SECRET, "verified_token_cache_size": 0}, clock)
    in_window = token(SECRET, "HS256", {"nbf": int(NOW) + 100, "exp": int(NOW) + 200})
    assert refused(s, in_window).message == "token not yet valid"
    clock.advance(100)  # nbf == now: valid
    accepted(s, in_window)
    clock.advance(99)
    accepted(s, in_window)
    clock.advance(1)  # exp == now: expired
    assert refused(s, in_window).message == "token expired"
    # Long expired by the wall clock (1970), valid by the injected clock...
    old = scheme({"secret": SECRET}, clock_at(1000.0))
    accepted(old, token(SECRET, "HS256", {"iat": 900, "exp": 1100}))
    # ... and valid by the wall clock (exp in 2096), expired by the injected clock.
    late = scheme({"secret": SECRET}, clock_at(4_100_000_000.0))
    assert refused(late, token(SECRET, "HS256", {"exp": 4_000_000_000})).message == (
        "token expired"
    )


@pytest.mark.parametrize(
    ("claim", "message"),
    [
        ("exp", "invalid token (DecodeError)"),
        ("nbf", "invalid token (DecodeError)"),
        ("iat", "invalid token (InvalidIssuedAtError)"),
    ],
)
def test_time_claim_that_is_not_a_number(claim: str, message: str) -> None:
    error = refused(scheme({"secret": SECRET}), token(SECRET, "HS256", {claim: "soon"}))
    assert isinstance(error, InvalidCredentials) and error.message == message


def test_exp_required_unless_relaxed() -> None:
    no_exp = jwt.encode({"sub": "alice"}, SECRET, algorithm="HS256")
    error = refused(scheme({"secret": SECRET}), no_exp)
    assert isinstance(error, InvalidCredentials) and "exp" in error.message
    accepted(scheme({"secret": SECRET, "require_exp": False}), no_exp)


def test_issuer_and_audience() -> None:
    s = scheme({"secret": SECRET, "issuer": "https://issuer", "audience": ["api", "cdn"]})
    accepted(s, token(SECRET, "HS256", {"iss": "https://issuer", "aud": "cdn"}))
    assert "issuer" in refused(s, token(SECRET, "HS256", {"iss": "evil", "aud": "cdn"})).message
    assert (
        "audience"
        in refused(s, token(SECRET, "HS256", {"iss": "https://issuer", "aud": "other"})).message
    )


def test_malformed_and_huge_tokens() -> None:
    s = scheme({"secret": SECRET})
    assert isinstance(refused(s, "not.a.jwt"), InvalidCredentials)
    assert isinstance(refused(s, "x" * 100_000), InvalidCredentials)
    huge = token(SECRET, "HS256", {"pad": "p" * 20_000})
    assert refused(s, huge).message == "token too large"


def test_missing_token_is_authentication_required() -> None:
    result = outcome(scheme({"secret": SECRET}).authenticate(request_with()))
    assert isinstance(result, AuthenticationRequired)
    assert result.status == 401
    assert ("WWW-Authenticate", 'Bearer realm="yatagarasu"') in result.headers


# --- keys and kid ----------------------------------------------------------------------------


def test_key_rotation_by_kid(tmp_path: Path) -> None:
    old, new = rsa_key(), rsa_key()
    s = scheme(
        {
            "keys": [
                {"id": "old", "rsa_public_key_path": write(tmp_path, "old.pem", public_pem(old))},
                {"id": "new", "path": write(tmp_path, "new.pem", public_pem(new))},
                {"id": "hmac", "algorithm": "HS256", "secret": SECRET},
            ]
        }
    )
    accepted(s, token(old, "RS256", kid="old"))
    accepted(s, token(new, "RS256", kid="new"))
    accepted(s, token(SECRET, "HS256", kid="hmac"))
    accepted(s, token(new, "RS256"))  # no kid: every key is tried
    assert isinstance(refused(s, token(old, "RS256", kid="new")), InvalidCredentials)
    for kid in ("unknown", "../../etc/passwd", "1' OR '1'='1"):
        error = refused(s, token(new, "RS256", kid=kid))
        assert isinstance(error, InvalidCredentials) and error.message == "unknown key id"


def test_keys_entry_needs_exactly_one_source() -> None:
    with pytest.raises(ConfigError) as info:
        scheme({"keys": [{"id": "a"}]})
    assert info.value.path == "jwt.keys[0]"


# --- claims ----------------------------------------------------------------------------------


# --- token sources ---------------------------------------------------------------------------


# --- verified-token cache --------------------------------------------------------------------


# --- JWKS ------------------------------------------------------------------------------------


# --- client addresses and IP filters ---------------------------------------------------------


# --- wiring ---------------------------------------------------------------------------------


# --- through the Site -------------------------------------------------------------------------
