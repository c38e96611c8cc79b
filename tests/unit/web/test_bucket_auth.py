"""
Auth in front of a bucket and the admin routes, in memory: 401/403, the IP filter first, tokens
never sent upstream.
"""

from __future__ import annotations

import json

from tests.unit.auth.jwt_kit import NOW, SECRET, token
from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response


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
