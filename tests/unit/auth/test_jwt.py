"""JWT scheme, claims rules, token sources, client addresses and IP filters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from twisted.web.test.requesthelper import DummyRequest
from zope.interface.verify import verifyObject

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from yatagarasu import plugins
from yatagarasu.auth.claims import ClaimRule
from yatagarasu.auth.from_config import build_access_control
from yatagarasu.auth.jwks import JwksKeySet, parse_jwks
from yatagarasu.auth.jwt import JwtScheme, JwtSchemeFactory
from yatagarasu.auth.network import ClientAddressResolver, IpFilter
from yatagarasu.config import ConfigError, parse_config
from yatagarasu.config.networks import parse_networks
from yatagarasu.config.typed import from_raw
from yatagarasu.discovery import find
from yatagarasu.errors import AuthenticationRequired, Forbidden, InvalidCredentials
from yatagarasu.interfaces import IAuthScheme, IAuthSchemeFactory, IImmediateAuthScheme
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


CLAIMS = {
    "role": "admin",
    "groups": ["eng", "ops"],
    "level": 5,
    "email": "a@example.com",
    "realm_access": {"roles": ["reader"]},
}


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"claim": "role", "operator": "equals", "value": "admin"}, True),
        ({"claim": "role", "operator": "equals", "value": "user"}, False),
        ({"claim": "role", "operator": "not_equals", "value": "user"}, True),
        ({"claim": "role", "operator": "in", "value": ["admin", "root"]}, True),
        ({"claim": "groups", "operator": "in", "value": ["ops"]}, True),
        ({"claim": "role", "operator": "not_in", "value": ["admin"]}, False),
        ({"claim": "groups", "operator": "contains", "value": "eng"}, True),
        ({"claim": "email", "operator": "contains", "value": "@example.com"}, True),
        ({"claim": "level", "operator": "gt", "value": 4}, True),
        ({"claim": "level", "operator": "gte", "value": 5}, True),
        ({"claim": "level", "operator": "lt", "value": 5}, False),
        ({"claim": "level", "operator": "lte", "value": 5}, True),
        ({"claim": "role", "operator": "gt", "value": 1}, False),
        ({"claim": "missing", "operator": "exists"}, False),
        ({"claim": "missing", "operator": "exists", "value": False}, True),
        ({"claim": "email", "operator": "regex", "value": r"@example\.com$"}, True),
        ({"claim": "realm_access.roles", "operator": "contains", "value": "reader"}, True),
        ({"claim": "sub", "operator": "equals", "value": "alice"}, True),
        ({"claim": "missing", "operator": "equals", "value": "x"}, False),
    ],
)
def test_claim_operators(rule: dict[str, Any], expected: bool) -> None:
    parsed = from_raw(ClaimRule, rule, "claims[0]")
    assert parsed.matches({"sub": "alice", **CLAIMS}) is expected


@pytest.mark.parametrize(
    ("rule", "path"),
    [
        ({"claim": "role", "operator": "like", "value": "x"}, "claims[0].operator"),
        ({"claim": "role", "operator": "in", "value": "admin"}, "claims[0].value"),
        ({"claim": "level", "operator": "gt", "value": "5"}, "claims[0].value"),
        ({"claim": "email", "operator": "regex", "value": "("}, "claims[0].value"),
        ({"claim": "", "operator": "exists"}, "claims[0].claim"),
        ({"claim": "role", "operator": "equals"}, "claims[0].value"),
    ],
)
def test_malformed_rules_are_config_errors(rule: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_raw(ClaimRule, rule, "claims[0]")
    assert info.value.path == path


def test_claims_rules_give_403() -> None:
    s = scheme(
        {"secret": SECRET, "claims": [{"claim": "role", "operator": "equals", "value": "admin"}]}
    )
    accepted(s, token(SECRET, "HS256", {"role": "admin"}))
    error = refused(s, token(SECRET, "HS256", {"role": "user"}))
    assert isinstance(error, Forbidden) and error.status == 403


def test_rust_style_claims_verification_alias() -> None:
    s = scheme(
        {
            "secret": SECRET,
            "claims_verification": [{"claim": "tenant", "operator": "equals", "value": "internal"}],
        }
    )
    assert isinstance(refused(s, token(SECRET, "HS256", {"tenant": "x"})), Forbidden)


# --- token sources ---------------------------------------------------------------------------


def test_token_sources_in_order() -> None:
    s = scheme(
        {
            "secret": SECRET,
            "token_sources": [
                {"type": "header", "name": "X-Auth-Token", "prefix": "Token "},
                {"type": "query", "name": "access_token"},
                {"type": "bearer_header"},
            ],
        }
    )
    tok = token(SECRET, "HS256")
    assert isinstance(
        outcome(s.authenticate(request_with(f"Token {tok}", "X-Auth-Token"))), Identity
    )
    assert isinstance(outcome(s.authenticate(request_with(f"bEaReR {tok}"))), Identity)
    by_query = request_with(args={b"access_token": [tok.encode()]})
    assert isinstance(outcome(s.authenticate(by_query)), Identity)
    wrong_prefix = outcome(s.authenticate(request_with(f"Bearer {tok}", "X-Auth-Token")))
    assert isinstance(wrong_prefix, AuthenticationRequired)


def test_token_source_needs_name() -> None:
    with pytest.raises(ConfigError) as info:
        scheme({"secret": SECRET, "token_sources": [{"type": "query"}]})
    assert info.value.path == "jwt.token_sources[0].name"


# --- verified-token cache --------------------------------------------------------------------


def test_reused_token_is_verified_once_until_exp(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = clock_at()
    s = scheme({"secret": SECRET}, clock)
    calls: list[str] = []
    real_decode = jwt.decode

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        calls.append("decode")
        return real_decode(*args, **kwargs)

    monkeypatch.setattr("yatagarasu.auth.jwt.jwt.decode", counting_decode)
    tok = token(SECRET, "HS256", {"exp": int(NOW) + 100})
    for _ in range(5):
        accepted(s, tok)
    assert calls == ["decode"]
    clock.advance(100)  # at the exp: no longer cached, verified again, and expired
    error = refused(s, tok)
    assert isinstance(error, InvalidCredentials) and error.message == "token expired"
    assert calls == ["decode", "decode"]


def test_authenticate_now_answers_only_for_a_known_valid_allowed_token() -> None:
    clock = clock_at()
    s = scheme({"secret": SECRET}, clock)
    assert verifyObject(IImmediateAuthScheme, s)
    tok = token(SECRET, "HS256", {"exp": int(NOW) + 100, "role": "user"})
    assert s.authenticate_now(request_with(f"Bearer {tok}")) is None  # not verified yet
    assert s.authenticate_now(request_with()) is None  # no token
    accepted(s, tok)
    identity = s.authenticate_now(request_with(f"Bearer {tok}"))
    assert identity is not None and identity.subject == "alice"
    strict = s.with_rules(
        [from_raw(ClaimRule, {"claim": "role", "operator": "equals", "value": "admin"}, "r")]
    )
    assert strict.authenticate_now(request_with(f"Bearer {tok}")) is None  # refused: ask later
    assert isinstance(refused(strict, tok), Forbidden)
    clock.advance(101)
    assert s.authenticate_now(request_with(f"Bearer {tok}")) is None  # expired


def test_cached_token_still_checked_against_rules() -> None:
    s = scheme({"secret": SECRET})
    tok = token(SECRET, "HS256", {"role": "user"})
    accepted(s, tok)
    strict = s.with_rules(
        [from_raw(ClaimRule, {"claim": "role", "operator": "equals", "value": "admin"}, "r")]
    )
    assert isinstance(refused(strict, tok), Forbidden)


# --- JWKS ------------------------------------------------------------------------------------


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


# --- client addresses and IP filters ---------------------------------------------------------


def test_forwarded_for_only_from_trusted_proxies() -> None:
    resolver = ClientAddressResolver(parse_networks(["10.0.0.0/8", "::1"], "t"))

    def xff(*values: bytes) -> Any:
        return lambda: list(values) or None

    chain = xff(b"203.0.113.9, 198.51.100.7", b"10.1.1.1")
    assert resolver.client_ip("10.0.0.2", chain) == "198.51.100.7"
    assert resolver.client_ip("192.0.2.1", chain) == "192.0.2.1"
    assert resolver.client_ip("::1", xff(b"2001:db8::5")) == "2001:db8::5"
    assert resolver.client_ip("10.0.0.2", xff()) == "10.0.0.2"
    assert resolver.client_ip("10.0.0.2", xff(b"garbage, 10.2.2.2")) == "10.2.2.2"
    assert ClientAddressResolver(()).client_ip("::ffff:192.0.2.1", chain) == "192.0.2.1"


def test_ip_filter_allow_wins_and_block() -> None:
    both = IpFilter(parse_networks(["192.0.2.0/24"], "a"), parse_networks(["192.0.2.7"], "b"))
    assert both.allows("192.0.2.7")
    assert not both.allows("198.51.100.1")
    block_only = IpFilter((), parse_networks(["2001:db8::/32", "198.51.100.1"], "b"))
    assert not block_only.allows("2001:db8::1")
    assert not block_only.allows("198.51.100.1")
    assert block_only.allows("198.51.100.2")
    with pytest.raises(ConfigError) as info:
        parse_networks(["10.0.0.0/8", "nope"], "buckets[0].ip_filter.allowlist")
    assert info.value.path == "buckets[0].ip_filter.allowlist[1]"


# --- wiring ---------------------------------------------------------------------------------


def test_auth_enabled_without_verifier_fails_closed() -> None:
    config = parse_config({"buckets": [bucket_entry(auth={"enabled": True})]}, {})
    with pytest.raises(ConfigError) as info:
        build_access_control(config, clock_at(), plugins)
    assert info.value.path == "buckets[0].auth.enabled"


def test_unknown_scheme_lists_available() -> None:
    config = parse_config(
        {"buckets": [bucket_entry(auth={"enabled": True, "scheme": "magic"})]}, {}
    )
    with pytest.raises(ConfigError) as info:
        build_access_control(config, clock_at(), plugins)
    assert info.value.path == "buckets[0].auth.scheme"
    assert "jwt" in info.value.message


def test_per_bucket_jwt_overrides_global_and_admin(tmp_path: Path) -> None:
    other = "o" * 64
    config = parse_config(
        {
            "jwt": {
                "secret": SECRET,
                "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
            },
            "buckets": [
                bucket_entry("global", "/g", auth={"enabled": True}),
                bucket_entry("own", "/o", jwt={"enabled": True, "secret": other}),
                bucket_entry("public", "/p"),
                bucket_entry("off", "/off", jwt={"enabled": False, "secret": other}),
            ],
        },
        {},
    )
    access = build_access_control(config, clock_at(), plugins)
    assert set(access.schemes) == {"global", "own"}
    accepted(access.schemes["global"], token(SECRET, "HS256"))  # type: ignore[arg-type]
    refused(access.schemes["own"], token(SECRET, "HS256"))  # type: ignore[arg-type]
    accepted(access.schemes["own"], token(other, "HS256"))  # type: ignore[arg-type]
    assert access.admin is not None
    admin = access.admin
    assert isinstance(
        outcome(admin.authenticate(request_with(f"Bearer {token(SECRET, 'HS256')}"))), Forbidden
    )
    admin_token = token(SECRET, "HS256", {"role": "admin"})
    assert isinstance(outcome(admin.authenticate(request_with(f"Bearer {admin_token}"))), Identity)


@pytest.mark.parametrize("own", ["jwt", "auth.jwt"])
def test_bucket_jwt_enabled_false_contradicting_auth_enabled_is_refused(own: str) -> None:
    jwt_section = {"enabled": False, "secret": SECRET}
    auth: dict[str, Any] = {"enabled": True}
    extra: dict[str, Any] = {"auth": auth}
    if own == "jwt":
        extra["jwt"] = jwt_section
    else:
        auth["jwt"] = jwt_section
    config = parse_config({"buckets": [bucket_entry("b", "/b", **extra)]}, {})
    with pytest.raises(ConfigError) as info:
        build_access_control(config, clock_at(), plugins)
    assert info.value.path == f"buckets[0].{own}.enabled"
    assert "contradicts auth.enabled" in info.value.message


def test_bucket_auth_jwt_enabled_true_turns_auth_on() -> None:
    config = parse_config(
        {"buckets": [bucket_entry("b", "/b", auth={"jwt": {"enabled": True, "secret": SECRET}})]},
        {},
    )
    access = build_access_control(config, clock_at(), plugins)
    accepted(access.schemes["b"], token(SECRET, "HS256"))  # type: ignore[arg-type]


def test_seed_phase31_examples_load(tmp_path: Path) -> None:
    rsa_path = write(tmp_path, "rsa.pem", public_pem(rsa_key()))
    ec_path = write(tmp_path, "ec.pem", public_pem(ec.generate_private_key(ec.SECP256R1())))
    key2 = write(tmp_path, "rsa2.pem", public_pem(rsa_key()))
    examples = [
        {
            "name": "products",
            "path_prefix": "/products",
            "jwt": {
                "enabled": True,
                "algorithm": "RS256",
                "rsa_public_key_path": rsa_path,
                "token_sources": [{"type": "bearer_header"}],
            },
        },
        {
            "name": "api",
            "path_prefix": "/api",
            "jwt": {"enabled": True, "algorithm": "ES256", "ecdsa_public_key_path": ec_path},
        },
        {
            "name": "secure",
            "path_prefix": "/secure",
            "jwt": {
                "enabled": True,
                "jwks_url": "https://auth.example.com/.well-known/jwks.json",
                "jwks_refresh_interval_seconds": 3600,
            },
        },
        {
            "name": "multi",
            "path_prefix": "/multi",
            "jwt": {
                "enabled": True,
                "keys": [
                    {"id": "key1", "algorithm": "HS256", "secret": "${JWT_SECRET_1}"},
                    {"id": "key2", "algorithm": "RS256", "rsa_public_key_path": key2},
                ],
            },
        },
    ]
    for example in examples:
        example["s3"] = {"bucket": "b"}
    config = parse_config({"buckets": examples}, {"JWT_SECRET_1": SECRET})
    access = build_access_control(config, clock_at(), plugins)
    assert set(access.schemes) == {"products", "api", "secure", "multi"}
    assert len(access.services) == 1  # the JWKS refresh timer


# --- through the Site -------------------------------------------------------------------------


def test_bucket_auth_401_403_and_tokens_stay_here() -> None:
    h = Harness(
        {
            "buckets": [
                bucket_entry(
                    jwt={
                        "enabled": True,
                        "secret": SECRET,
                        "claims": [{"claim": "role", "operator": "in", "value": ["reader"]}],
                    },
                    cors={"allowed_origins": ["https://app.test"]},
                    ip_filter={"blocklist": ["127.0.0.2"]},
                )
            ]
        }
    )
    h.clock.advance(NOW)  # the tokens are built from NOW
    _, transport = h.get("/pub/k", "Origin: https://app.test")
    response = parse_response(transport.value())
    assert response.status == 401
    assert response.header("www-authenticate") == 'Bearer realm="yatagarasu"'
    assert response.header("access-control-allow-origin") == "https://app.test"
    _, transport = h.get("/pub/k", "Authorization: Bearer garbage")
    response = parse_response(transport.value())
    assert response.status == 401
    assert 'error="invalid_token"' in (response.header("www-authenticate") or "")
    _, transport = h.get("/pub/k", f"Authorization: Bearer {token(SECRET, 'HS256')}")
    assert parse_response(transport.value()).status == 403
    assert h.agents["pub"].sent == []
    good = token(SECRET, "HS256", {"role": "reader"})
    _, transport = h.get(f"/pub/k?token={good}", f"Authorization: Bearer {good}")
    sent = h.agents["pub"].sent
    assert len(sent) == 1
    assert good.encode() not in sent[0].uri
    assert sent[0].headers.getRawHeaders(b"authorization")[0].startswith(b"AWS4-HMAC-SHA256")
    h.agents["pub"].answer(FakeResponse(200, {}, body=b"ok"))
    assert parse_response(transport.value()).status == 200
    _, transport = h.get(
        "/pub/k", "Origin: https://app.test", "Access-Control-Request-Method: GET", method="OPTIONS"
    )
    assert parse_response(transport.value()).status == 204  # no token needed


def test_ip_filter_is_checked_before_auth() -> None:
    h = Harness(
        {
            "buckets": [
                bucket_entry(
                    jwt={"enabled": True, "secret": SECRET}, ip_filter={"allowlist": ["10.0.0.0/8"]}
                )
            ]
        }
    )
    _, transport = h.get("/pub/k")
    response = parse_response(transport.value())
    assert response.status == 403
    assert "address" in json.loads(response.body)["message"]


def test_admin_routes() -> None:
    disabled = Harness({"buckets": [bucket_entry()]})
    _, transport = disabled.get("/admin/cache/stats")
    assert parse_response(transport.value()).status == 403
    h = Harness(
        {
            "jwt": {
                "secret": SECRET,
                "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
            },
            "buckets": [bucket_entry()],
        }
    )
    h.clock.advance(NOW)  # the tokens are built from NOW
    _, transport = h.get("/admin/anything")
    assert parse_response(transport.value()).status == 401
    _, transport = h.get("/admin/anything", f"Authorization: Bearer {token(SECRET, 'HS256')}")
    assert parse_response(transport.value()).status == 403
    admin = token(SECRET, "HS256", {"role": "admin"})
    _, transport = h.get("/admin/anything", f"Authorization: Bearer {admin}")
    assert parse_response(transport.value()).status == 404
