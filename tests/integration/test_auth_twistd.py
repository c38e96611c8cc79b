"""Authentication and access control through the real twistd process, against moto."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.utils import base64url_encode

from devharness.moto_s3 import MotoS3Server
from devharness.proxy_config import bucket_config
from devharness.twistd import ProxyProcess

SECRET = "integration-secret-" + "x" * 48


def pem(private: Any) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def token(key: Any, alg: str, claims: dict[str, Any] | None = None, **headers: Any) -> str:
    payload = {"sub": "alice", "exp": int(time.time()) + 3600, **(claims or {})}
    return jwt.encode(payload, key, algorithm=alg, headers=headers or None)


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, dict[str, Any]]]:
    """A local JWKS endpoint; the test mutates the returned document to rotate keys."""
    document: dict[str, Any] = {"keys": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps(document).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", document
    server.shutdown()
    thread.join(10)
    server.server_close()


class Keys:
    def __init__(self, tmp_path: Path) -> None:
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.rsa_new = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.jwks_first = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.jwks_second = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.paths = {}
        for name in ("rsa", "rsa_new", "ec"):
            path = tmp_path / f"{name}.pem"
            path.write_bytes(pem(getattr(self, name)))
            self.paths[name] = str(path)


def jwk(private: Any, kid: str) -> dict[str, Any]:
    document = json.loads(jwt.get_algorithm_by_name("RS256").to_jwk(private.public_key()))
    return {**document, "kid": kid, "alg": "RS256", "use": "sig"}


@pytest.fixture
def setup(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    jwks_server: tuple[str, dict[str, Any]],
) -> tuple[ProxyProcess, Keys, dict[str, Any]]:
    moto_s3.put_object(s3_bucket, "doc.txt", b"protected bytes\n")
    keys = Keys(tmp_path)
    url, document = jwks_server
    document["keys"] = [jwk(keys.jwks_first, "first")]

    def b(name: str, **extra: Any) -> dict[str, Any]:
        return bucket_config(moto_s3, name, s3_bucket, **extra)

    config = {
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "logging": {"format": "json"},
        "jwt": {
            "secret": "${JWT_SECRET}",
            "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
        },
        "buckets": [
            b("public"),
            b("hs", auth={"enabled": True}),
            b(
                "rs",
                jwt={
                    "enabled": True,
                    "algorithm": "RS256",
                    "rsa_public_key_path": keys.paths["rsa"],
                    "token_sources": [
                        {"type": "bearer_header"},
                        {"type": "query", "name": "token"},
                    ],
                },
            ),
            b(
                "es",
                jwt={
                    "enabled": True,
                    "algorithm": "ES256",
                    "ecdsa_public_key_path": keys.paths["ec"],
                },
            ),
            b(
                "multi",
                jwt={
                    "enabled": True,
                    "keys": [
                        {
                            "id": "old",
                            "algorithm": "RS256",
                            "rsa_public_key_path": keys.paths["rsa"],
                        },
                        {
                            "id": "new",
                            "algorithm": "RS256",
                            "rsa_public_key_path": keys.paths["rsa_new"],
                        },
                    ],
                },
            ),
            b(
                "jwks",
                jwt={"enabled": True, "jwks_url": url, "jwks_refresh_interval_seconds": 3600},
            ),
            b(
                "claims",
                auth={"enabled": True},
                jwt={"claims": [{"claim": "groups", "operator": "contains", "value": "readers"}]},
            ),
            b("allow", ip_filter={"allowlist": ["203.0.113.0/24"]}),
            b("block", ip_filter={"blocklist": ["127.0.0.1"]}),
            b(
                "apikey",
                auth={
                    "enabled": True,
                    "scheme": "apikey",
                    "settings": {"keys": {"k-123": "robot"}},
                },
            ),
        ],
    }
    running = proxy(config, env={"JWT_SECRET": SECRET})
    return running, keys, document


def forge_hs256(secret: bytes) -> str:
    """An HS256 token signed with a public key PEM as the HMAC secret (algorithm confusion)."""
    header = base64url_encode(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = base64url_encode(json.dumps({"sub": "mallory", "exp": int(time.time()) + 3600}).encode())
    signature = base64url_encode(hmac.new(secret, header + b"." + body, hashlib.sha256).digest())
    return (header + b"." + body + b"." + signature).decode()


def bearer(tok: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {tok}"}


def test_public_bucket_needs_no_token(setup: tuple[ProxyProcess, Keys, dict[str, Any]]) -> None:
    running, _, _ = setup
    response = running.get("/public/doc.txt")
    assert (response.status, response.body) == (200, b"protected bytes\n")


def test_missing_and_invalid_tokens(setup: tuple[ProxyProcess, Keys, dict[str, Any]]) -> None:
    running, keys, _ = setup
    missing = running.get("/hs/doc.txt")
    assert missing.status == 401
    assert missing.header("WWW-Authenticate") == 'Bearer realm="yatagarasu"'
    assert missing.json()["request_id"] == missing.header("X-Request-ID")
    wrong = running.get("/hs/doc.txt", headers=bearer(token("w" * 64, "HS256")))
    assert wrong.status == 401
    assert 'error="invalid_token"' in (wrong.header("WWW-Authenticate") or "")
    expired = running.get(
        "/hs/doc.txt", headers=bearer(token(SECRET, "HS256", {"exp": int(time.time()) - 60}))
    )
    assert (expired.status, expired.json()["message"]) == (401, "token expired")
    confused = running.get("/rs/doc.txt", headers=bearer(forge_hs256(pem(keys.rsa))))
    assert confused.status == 401


def test_hs_rs_es_buckets(setup: tuple[ProxyProcess, Keys, dict[str, Any]]) -> None:
    running, keys, _ = setup
    assert running.get("/hs/doc.txt", headers=bearer(token(SECRET, "HS256"))).status == 200
    assert running.get("/rs/doc.txt", headers=bearer(token(keys.rsa, "RS256"))).status == 200
    assert running.get("/es/doc.txt", headers=bearer(token(keys.ec, "ES256"))).status == 200
    assert running.get("/es/doc.txt", headers=bearer(token(keys.rsa, "RS256"))).status == 401


def test_key_rotation_both_keys_accepted(setup: tuple[ProxyProcess, Keys, dict[str, Any]]) -> None:
    running, keys, _ = setup
    assert (
        running.get("/multi/doc.txt", headers=bearer(token(keys.rsa, "RS256", kid="old"))).status
        == 200
    )
    assert (
        running.get(
            "/multi/doc.txt", headers=bearer(token(keys.rsa_new, "RS256", kid="new"))
        ).status
        == 200
    )
    assert (
        running.get(
            "/multi/doc.txt", headers=bearer(token(keys.rsa_new, "RS256", kid="gone"))
        ).status
        == 401
    )


def test_jwks_and_rotation_via_unknown_kid(
    setup: tuple[ProxyProcess, Keys, dict[str, Any]],
) -> None:
    running, keys, document = setup
    ok = running.get("/jwks/doc.txt", headers=bearer(token(keys.jwks_first, "RS256", kid="first")))
    assert ok.status == 200
    document["keys"] = [jwk(keys.jwks_first, "first"), jwk(keys.jwks_second, "second")]
    rotated = running.get(
        "/jwks/doc.txt", headers=bearer(token(keys.jwks_second, "RS256", kid="second"))
    )
    assert rotated.status == 200


def test_claims_rules_403(setup: tuple[ProxyProcess, Keys, dict[str, Any]]) -> None:
    running, _, _ = setup
    denied = running.get("/claims/doc.txt", headers=bearer(token(SECRET, "HS256")))
    assert denied.status == 403
    allowed = running.get(
        "/claims/doc.txt", headers=bearer(token(SECRET, "HS256", {"groups": ["readers"]}))
    )
    assert allowed.status == 200


def test_token_in_query_is_used_but_never_forwarded_or_logged(
    setup: tuple[ProxyProcess, Keys, dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    running, keys, _ = setup
    moto_s3.clear_requests()
    tok = token(keys.rsa, "RS256")
    response = running.get(f"/rs/doc.txt?token={tok}", headers={"X-Request-ID": "query-token"})
    assert response.status == 200
    (upstream,) = moto_s3.requests("GET", s3_bucket, "doc.txt")
    assert tok not in upstream.raw_url and tok not in json.dumps(upstream.headers)
    running.wait_for_log("query-token")
    assert tok not in running.log_text()


def test_ip_filters_and_trusted_proxy(setup: tuple[ProxyProcess, Keys, dict[str, Any]]) -> None:
    running, _, _ = setup
    assert running.get("/block/doc.txt").status == 403
    assert running.get("/allow/doc.txt").status == 403
    forwarded = running.get("/allow/doc.txt", headers={"X-Forwarded-For": "203.0.113.7"})
    assert forwarded.status == 200
    spoofed = running.get(
        "/allow/doc.txt", headers={"X-Forwarded-For": "203.0.113.7, 198.51.100.4"}
    )
    assert spoofed.status == 403


def test_third_party_scheme_plugin(setup: tuple[ProxyProcess, Keys, dict[str, Any]]) -> None:
    running, _, _ = setup
    assert running.get("/apikey/doc.txt").status == 401
    assert running.get("/apikey/doc.txt", headers={"X-API-Key": "nope"}).status == 401
    ok = running.get("/apikey/doc.txt", headers={"X-API-Key": "k-123"})
    assert (ok.status, ok.body) == (200, b"protected bytes\n")


def test_admin_guard(setup: tuple[ProxyProcess, Keys, dict[str, Any]]) -> None:
    running, _, _ = setup
    assert running.request("POST", "/admin/cache/purge").status == 401
    user = running.request("POST", "/admin/cache/purge", headers=bearer(token(SECRET, "HS256")))
    assert user.status == 403
    admin = running.request(
        "GET", "/admin/nothing-here", headers=bearer(token(SECRET, "HS256", {"role": "admin"}))
    )
    assert admin.status == 404


def test_unknown_scheme_is_a_startup_error(
    twistd_check: Callable[..., Any],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
) -> None:
    config = make_proxy_config({"pub": s3_bucket})
    config["buckets"][0]["auth"] = {"enabled": True, "scheme": "kerberos"}
    result = twistd_check(config)
    assert result.returncode == 1
    assert "buckets[0].auth.scheme: unknown IAuthSchemeFactory 'kerberos'" in result.output
    assert "apikey, jwt" in result.output
    config["buckets"][0]["auth"] = {"enabled": True, "scheme": "apikey", "settings": {}}
    result = twistd_check(config)
    assert result.returncode == 1
    assert "buckets[0].auth.settings.keys" in result.output


def test_auth_enabled_without_keys_fails_closed(
    twistd_check: Callable[..., Any],
    make_proxy_config: Callable[..., dict[str, Any]],
    s3_bucket: str,
) -> None:
    config = make_proxy_config({"pub": s3_bucket})
    config["buckets"][0]["auth"] = {"enabled": True}
    result = twistd_check(config)
    assert result.returncode == 1
    assert "buckets[0].auth.enabled" in result.output
