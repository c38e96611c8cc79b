"""CORS (yatagarasu.web.cors): preflight answers and the headers on errors."""

from __future__ import annotations

from tests.unit.fakes import FakeResponse, bucket_entry, parse_response
from tests.unit.web.bucket_harness import harness


def test_cors_preflight_and_headers_on_errors() -> None:
    cors = {
        "allowed_origins": ["https://app.example.com"],
        "allowed_headers": ["Range"],
        "max_age": 120,
    }
    h = harness(bucket_entry(cors=cors))
    _, transport = h.get(
        "/pub/k",
        "Origin: https://app.example.com",
        "Access-Control-Request-Method: GET",
        "Access-Control-Request-Headers: range",
        method="OPTIONS",
    )
    response = parse_response(transport.value())
    assert response.status == 204
    assert response.header("access-control-allow-origin") == "https://app.example.com"
    assert response.header("access-control-max-age") == "120"
    assert h.agents["pub"].sent == []
    _, transport = h.get(
        "/pub/k",
        "Origin: https://evil.example.com",
        "Access-Control-Request-Method: GET",
        method="OPTIONS",
    )
    response = parse_response(transport.value())
    assert response.status == 403
    assert response.header("access-control-allow-origin") is None
    _, transport = h.get(
        "/pub/k",
        "Origin: https://app.example.com:8443",
        "Access-Control-Request-Method: GET",
        method="OPTIONS",
    )
    assert parse_response(transport.value()).status == 403
    _, transport = h.get("/pub/k", "Origin: https://app.example.com")
    h.agents["pub"].answer(FakeResponse(404, {}, body=b"<Error><Code>NoSuchKey</Code></Error>"))
    response = parse_response(transport.value())
    assert response.status == 404
    assert response.header("access-control-allow-origin") == "https://app.example.com"
    assert "X-Request-ID" in (response.header("access-control-expose-headers") or "")
    assert response.header("vary") == "Origin"
