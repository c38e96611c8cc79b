"""
Signed links (the ``signed_url`` auth scheme, ``auth.schemes``, ``POST /admin/sign`` and
``yatagarasu-sign-url``) through the real twistd process, against moto with SigV4 checking.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest

from devharness.moto_s3 import MotoS3Server
from devharness.proxy_config import bucket_config
from devharness.twistd import ProxyProcess
from devharness.waiting import wait_until
from tests.integration.test_reload_twistd import rewrite, sighup_and_wait
from yatagarasu.auth.link_signature import sign_link

JWT_SECRET = "signed-url-jwt-secret-" + "j" * 40
NEW_KEY = "signed-url-new-key-" + "n" * 24
OLD_KEY = "signed-url-old-key-" + "o" * 24
NEWER_KEY = "signed-url-newer-key-" + "w" * 24
ENV = {"JWT_SECRET": JWT_SECRET, "SIGN_NEW": NEW_KEY, "SIGN_OLD": OLD_KEY, "SIGN_NEWER": NEWER_KEY}
CONSOLE_SCRIPT = Path(sys.executable).with_name("yatagarasu-sign-url")
BODY = b"private bytes\n"
LINK_PARAMETERS = ("signature", "expires", "kid", "bind")


def bearer(role: str | None = None) -> dict[str, str]:
    claims: dict[str, Any] = {"sub": "alice", "exp": int(time.time()) + 3600}
    if role is not None:
        claims["role"] = role
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, 'HS256')}"}


@pytest.fixture
def running(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> ProxyProcess:
    moto_s3.put_object(s3_bucket, "doc.txt", BODY, content_type="text/plain")
    moto_s3.put_object(s3_bucket, "cat 1.txt", b"meow\n", content_type="text/plain")
    keys = [{"kid": "k2", "secret": "${SIGN_NEW}"}, {"kid": "k1", "secret": "${SIGN_OLD}"}]
    config = {
        "server": {"trusted_proxies": ["127.0.0.1/32"]},
        "logging": {"format": "json"},
        "jwt": {
            "secret": "${JWT_SECRET}",
            "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
        },
        "cache": {"enabled": True, "memory": {"max_cache_size_mb": 8, "max_item_size_mb": 1}},
        "audit_log": {
            "enabled": True,
            "outputs": ["file"],
            "file": {"path": str(tmp_path / "audit.log"), "flush_interval_seconds": 0.1},
        },
        "buckets": [
            bucket_config(
                moto_s3,
                "private",
                s3_bucket,
                auth={
                    "enabled": True,
                    "schemes": ["jwt", "signed_url"],
                    "signed_url": {"keys": keys},
                },
            ),
            bucket_config(
                moto_s3,
                "links",
                s3_bucket,
                cache={"enabled": False},
                auth={"enabled": True, "scheme": "signed_url", "signed_url": {"keys": keys[1:]}},
            ),
        ],
    }
    return proxy(config, env=ENV)


def admin_sign(running: ProxyProcess, body: dict[str, Any], role: str = "admin") -> Any:
    response = running.request(
        "POST",
        "/admin/sign",
        headers={**bearer(role), "Content-Type": "application/json"},
        body=json.dumps(body).encode(),
    )
    return response.status, json.loads(response.body)


def signed(running: ProxyProcess, path: str, **body: Any) -> str:
    status, document = admin_sign(running, {"path": path, **body})
    assert status == 200, document
    url: str = document["data"]["url"]
    return url


def records(tmp_path: Path, request_id: str) -> list[dict[str, Any]]:
    path = tmp_path / "audit.log"
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["correlation_id"] == request_id]


def test_a_signed_link_is_served_and_its_parameters_never_leave_the_proxy(
    running: ProxyProcess, moto_s3: MotoS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    url = signed(running, "/private/doc.txt", expires_in=300)
    assert url.startswith("/private/doc.txt?kid=k2&expires=")
    moto_s3.clear_requests()
    referer = f"https://app.test{url}"
    response = running.get(url, headers={"X-Request-ID": "signed-link-1", "Referer": referer})
    assert (response.status, response.body) == (200, BODY)
    assert response.header("x-cache") == "MISS"
    # moto checks SigV4: it accepted the request, so what it got is what the proxy signed
    (upstream,) = moto_s3.requests("GET", s3_bucket, "doc.txt")
    assert upstream.signed and upstream.query == ""
    assert not any(name in upstream.raw_url for name in LINK_PARAMETERS)
    signature = parse_qs(urlsplit(url).query)["signature"][0]
    assert signature not in json.dumps(upstream.headers)
    # another link to the same object is a cache hit (the parameters are not in the key)
    other = signed(running, "/private/doc.txt", expires_in=60)
    assert other != url
    hit = running.get(other)
    assert (hit.status, hit.body, hit.header("x-cache")) == (200, BODY, "HIT")
    assert moto_s3.count_requests("GET", s3_bucket, "doc.txt") == 1
    running.wait_for_log("signed-link-1")
    assert signature not in running.log_text()
    wait_until(lambda: records(tmp_path, "signed-link-1"), timeout=10, what="the audit record")
    (record,) = records(tmp_path, "signed-link-1")
    assert record["request_path"] == "/private/doc.txt"
    assert (record["response_status"], record["user"]) == (200, None)
    assert signature not in json.dumps(record)
    assert "signature=[REDACTED]" in record["referer"]


def test_tampered_and_expired_links_are_401(
    running: ProxyProcess, moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    url = signed(running, "/private/doc.txt", expires_in=300)
    query = parse_qs(urlsplit(url).query)
    expires, signature = query["expires"][0], query["signature"][0]
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    past = sign_link(NEW_KEY.encode(), "/private/doc.txt", int(time.time()) - 5, kid="k2")
    moto_s3.clear_requests()
    cases = {
        url.replace("/private/doc.txt", "/private/cat%201.txt"): "invalid link signature",
        url.replace(f"expires={expires}", f"expires={int(expires) + 3600}"): (
            "invalid link signature"
        ),
        url.replace(signature, flipped): "invalid link signature",
        url.replace("kid=k2", "kid=k9"): "unknown key id",
        past.url: "link expired",
    }
    for target, message in cases.items():
        response = running.get(target)
        assert response.status == 401, target
        assert response.json()["message"] == message
        assert 'error="invalid_token"' in (response.header("www-authenticate") or "")
    assert moto_s3.count_requests("GET", s3_bucket) == 0


def test_kid_rotation_ip_binding_and_head(running: ProxyProcess) -> None:
    old = sign_link(OLD_KEY.encode(), "/private/cat 1.txt", int(time.time()) + 60, kid="k1")
    response = running.get(old.url)
    assert (response.status, response.body) == (200, b"meow\n")
    # the links bucket only has k1: a k2 link is refused there
    new_there = sign_link(NEW_KEY.encode(), "/links/doc.txt", int(time.time()) + 60, kid="k2")
    assert running.get(new_there.url).status == 401
    bound = signed(running, "/private/doc.txt", client_ip="203.0.113.7")
    assert running.get(bound).status == 401  # the peer is 127.0.0.1
    forwarded = running.get(bound, headers={"X-Forwarded-For": "203.0.113.7"})
    assert (forwarded.status, forwarded.body) == (200, BODY)
    head = running.request("HEAD", signed(running, "/private/doc.txt"))
    assert (head.status, head.body, head.header("content-length")) == (200, b"", str(len(BODY)))


def test_jwt_or_signed_link_first_that_applies(running: ProxyProcess) -> None:
    link = signed(running, "/private/doc.txt")
    assert running.get("/private/doc.txt", headers=bearer()).status == 200
    nothing = running.get("/private/doc.txt")
    assert nothing.status == 401
    assert nothing.header("www-authenticate") == 'Bearer realm="yatagarasu"'
    assert nothing.json()["message"] == "credentials are required (jwt or signed_url)"
    # a bad token is refused even with a good link: no fall-through to the next scheme
    bad_token = running.get(link, headers={"Authorization": "Bearer not-a-token"})
    assert bad_token.status == 401 and bad_token.json()["message"] == "malformed token"
    assert running.get(link).status == 200


def test_admin_sign_needs_admin_claims_and_a_signed_url_bucket(running: ProxyProcess) -> None:
    assert admin_sign(running, {"path": "/private/doc.txt"}, role="reader")[0] == 403
    no_token = running.request("POST", "/admin/sign", body=b'{"path": "/private/doc.txt"}')
    assert no_token.status == 401
    status, document = admin_sign(running, {"path": "/elsewhere/doc.txt"})
    assert status == 404 and "no bucket serves this path" in document["message"]
    status, document = admin_sign(running, {"path": "/private/doc.txt", "expires_in": 10**8})
    assert status == 400 and "lifetime" in document["message"]


def test_the_console_script_makes_links_the_proxy_accepts(running: ProxyProcess) -> None:
    def sign_url(*argv: str) -> str:
        result = subprocess.run(
            [str(CONSOLE_SCRIPT), *argv],
            capture_output=True,
            text=True,
            timeout=60,
            env={"SIGN_OLD": OLD_KEY, "PATH": "/usr/bin:/bin"},
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()

    by_env = sign_url("--key-env", "SIGN_OLD", "--kid", "k1", "/links/doc.txt")
    response = running.get(by_env)
    assert (response.status, response.body) == (200, BODY)
    absolute = sign_url(
        "--key", OLD_KEY, "--kid", "k1", "--expires-in", "60", "--base-url", running.base_url,
        "/private/cat 1.txt",
    )  # fmt: skip
    assert absolute.startswith(f"{running.base_url}/private/cat%201.txt?kid=k1&expires=")
    response = running.get(absolute.removeprefix(running.base_url))
    assert (response.status, response.body) == (200, b"meow\n")
    wrong_key = sign_url("--key", NEW_KEY, "--kid", "k1", "/links/doc.txt")
    assert running.get(wrong_key).status == 401


def test_rotating_keys_with_a_reload(running: ProxyProcess) -> None:
    old = sign_link(OLD_KEY.encode(), "/private/doc.txt", int(time.time()) + 600, kid="k1")
    current = signed(running, "/private/doc.txt")
    assert running.get(old.url).status == 200

    def rotate(document: dict[str, Any]) -> None:
        auth = document["buckets"][0]["auth"]
        auth["signed_url"]["keys"] = [
            {"kid": "k3", "secret": "${SIGN_NEWER}"},
            {"kid": "k2", "secret": "${SIGN_NEW}"},
        ]

    rewrite(running, rotate)
    sighup_and_wait(running)
    refused = running.get(old.url)
    assert (refused.status, refused.json()["message"]) == (401, "unknown key id")
    assert running.get(current).status == 200  # signed with k2, still listed
    newest = signed(running, "/private/doc.txt")
    assert "kid=k3&" in newest
    assert running.get(newest).status == 200
