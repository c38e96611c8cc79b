"""``POST /admin/sign`` (yatagarasu.web.admin_sign) in memory, and the links it makes."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest

from tests.unit.cache_harness import SECRET, START, fetch, obj
from tests.unit.fakes import Harness, bucket_entry, parse_response

KEYS = {"keys": [{"kid": "k2", "secret": "n" * 32}, {"kid": "k1", "secret": "o" * 32}]}


def harness(**signed_url: Any) -> Harness:
    h = Harness(
        {
            "cache": {"enabled": True, "memory": {"max_cache_size_mb": 4, "max_item_size_mb": 1}},
            "jwt": {
                "secret": SECRET,
                "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
            },
            "buckets": [
                bucket_entry(
                    auth={
                        "enabled": True,
                        "schemes": ["jwt", "signed_url"],
                        "signed_url": {**KEYS, **signed_url},
                    }
                ),
                bucket_entry("nested", "/pub/deep"),
                bucket_entry("open", "/open"),
            ],
        }
    )
    h.clock.advance(START)
    return h


def admin_token(role: str = "admin") -> str:
    claims = {"sub": "ops", "role": role, "exp": int(START) + 3600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def sign(h: Harness, body: Any, role: str = "admin") -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = (
        b"POST /admin/sign HTTP/1.1\r\nHost: proxy\r\n"
        + f"Authorization: Bearer {admin_token(role)}\r\n".encode()
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(raw)
        + raw
    )
    _, transport = h.send(request)
    response = parse_response(transport.value())
    return response.status, json.loads(response.body)


def test_the_link_is_signed_with_the_first_key_and_served() -> None:
    h = harness()
    status, document = sign(h, {"path": "/pub/cat 1.png", "expires_in": 120})
    assert status == 200 and document["status"] == "success"
    data = document["data"]
    assert data["bucket"] == "pub" and data["kid"] == "k2"
    assert data["expires"] == int(START) + 120
    assert data["url"].startswith("/pub/cat%201.png?kid=k2&expires=")
    response = fetch(h, data["url"], answer=obj(b"meow"))
    assert (response.status, response.body, response.header("x-cache")) == (200, b"meow", "MISS")
    (sent,) = h.agents["pub"].sent
    assert b"?" not in sent.uri and b"signature" not in sent.uri and b"expires" not in sent.uri
    # another link to the same object is a hit: the link's parameters are not in the cache key
    _, other = sign(h, {"path": "/pub/cat%201.png", "expires_in": 60})
    hit = fetch(h, other["data"]["url"])
    assert (hit.status, hit.body, hit.header("x-cache")) == (200, b"meow", "HIT")
    h.clock.advance(60)
    assert fetch(h, other["data"]["url"]).status == 401  # expired, even though it is cached
    assert fetch(h, data["url"]).status == 200


def test_client_ip_binding_and_default_lifetime() -> None:
    h = harness()
    _, bound = sign(h, {"path": "/pub/k", "client_ip": "192.0.2.1"})
    assert bound["data"]["expires"] == int(START) + 3600
    assert fetch(h, bound["data"]["url"]).status == 401  # the harness client is 127.0.0.1
    _, mine = sign(h, {"path": "/pub/k", "client_ip": "127.0.0.1", "method": "HEAD"})
    assert fetch(h, mine["data"]["url"], method="HEAD", answer=obj()).status == 200


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "the body is not JSON"),
        ([], 400, "the body must be a JSON object"),
        ({}, 400, "path must be a URL path starting with /"),
        ({"path": "pub/k"}, 400, "path must be a URL path starting with /"),
        ({"path": "/pub/k", "expires_in": "1h"}, 400, "expires_in must be a whole number"),
        ({"path": "/pub/k", "expires_in": 10**9}, 400, "the lifetime must be 1 to 604800"),
        ({"path": "/pub/k", "expires_in": 0}, 400, "the lifetime must be 1 to 604800"),
        ({"path": "/pub/k", "method": "DELETE"}, 400, "method must be one of GET, HEAD"),
        ({"path": "/pub/k", "client_ip": 7}, 400, "client_ip must be an address or null"),
        ({"path": "/pub/k", "client_ip": "banana"}, 400, "not an IP address: 'banana'"),
        ({"path": "/pub/k", "lifetime": 7}, 400, "unknown field 'lifetime'"),
        ({"path": "/nowhere/k"}, 404, "no bucket serves this path"),
        ({"path": "/pub/"}, 404, "no bucket serves this path"),
        ({"path": "/open/k"}, 400, "bucket 'open' does not accept signed links"),
        ({"path": "/pub/deep/k"}, 400, "bucket 'nested' does not accept signed links"),
    ],
)
def test_bad_requests(body: Any, status: int, message: str) -> None:
    answer, document = sign(harness(), body)
    assert answer == status
    assert message in document["message"]


def test_admin_claims_are_required() -> None:
    assert sign(harness(), {"path": "/pub/k"}, role="reader")[0] == 403


def test_no_route_without_a_signed_url_bucket() -> None:
    h = Harness(
        {
            "jwt": {
                "secret": SECRET,
                "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
            },
            "buckets": [bucket_entry()],
        }
    )
    h.clock.advance(START)
    status, document = sign(h, {"path": "/pub/k"})
    assert (status, document["message"]) == (404, "no such admin route")
