"""The request path end to end in memory: raw HTTP in, fake S3 behind, fake clock."""

from __future__ import annotations

import json

from tests.unit.fakes import FakeResponse, parse_response
from tests.unit.web.bucket_harness import OBJECT_HEADERS, harness


def test_get_streams_object_with_s3_headers_and_signs_upstream() -> None:
    h = harness()
    _, transport = h.get("/pub/dir/hello%20world.txt?token=secret", "Authorization: Bearer abc")
    agent = h.agents["pub"]
    assert len(agent.sent) == 1
    sent = agent.sent[0]
    assert sent.method == b"GET"
    assert sent.uri == b"http://127.0.0.1:9000/pub-bucket/dir/hello%20world.txt"
    auth = sent.headers.getRawHeaders(b"authorization")
    assert auth is not None and len(auth) == 1
    assert auth[0].startswith(b"AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
    assert sent.headers.getRawHeaders(b"host") == [b"127.0.0.1:9000"]
    agent.answer(FakeResponse(200, OBJECT_HEADERS, body=b"hello world"))
    response = parse_response(transport.value())
    assert response.status == 200
    assert response.body == b"hello world"
    assert response.header("content-length") == "11"
    assert response.header("etag") == '"abc123"'
    assert response.header("cache-control") == "max-age=60"
    assert response.header("content-type") == "text/plain"
    assert not any(name.startswith("x-amz") for name in response.headers)
    assert response.header("x-request-id") == response.header("x-correlation-id")
    assert response.header("x-request-id")


def test_only_range_and_conditional_headers_go_upstream() -> None:
    h = harness()
    h.get(
        "/pub/k",
        "Range: bytes=0-9",
        'If-None-Match: "abc"',
        "If-Modified-Since: Wed, 21 Oct 2026 07:28:00 GMT",
        "X-Auth-Token: secret",
        "Cookie: a=b",
    )
    headers = h.agents["pub"].sent[0].headers
    assert headers.getRawHeaders(b"range") == [b"bytes=0-9"]
    assert headers.getRawHeaders(b"if-none-match") == [b'"abc"']
    assert headers.getRawHeaders(b"if-modified-since") is not None
    assert headers.getRawHeaders(b"x-auth-token") is None
    assert headers.getRawHeaders(b"cookie") is None


def test_head_keeps_length_and_sends_no_body() -> None:
    h = harness()
    _, transport = h.get("/pub/k", method="HEAD")
    sent = h.agents["pub"].sent[0]
    assert sent.method == b"HEAD"
    h.agents["pub"].answer(
        FakeResponse(200, {**OBJECT_HEADERS, "Content-Length": "5000"}, body=b"")
    )
    raw = transport.value()
    response = parse_response(raw)
    assert response.status == 200
    assert response.header("content-length") == "5000"
    assert raw.endswith(b"\r\n\r\n")


def test_s3_404_becomes_json_error_with_s3_code() -> None:
    h = harness()
    _, transport = h.get("/pub/missing", "X-Request-ID: my-id.1")
    body = (
        b"<Error><Code>NoSuchKey</Code><Message>The specified key does not exist.</Message></Error>"
    )
    h.agents["pub"].answer(FakeResponse(404, {"Content-Type": "application/xml"}, body=body))
    response = parse_response(transport.value())
    assert response.status == 404
    assert response.header("content-type") == "application/json"
    document = json.loads(response.body)
    assert document == {
        "error": "Not Found",
        "message": "The specified key does not exist.",
        "status": 404,
        "request_id": "my-id.1",
        "s3_code": "NoSuchKey",
    }
    assert response.header("content-length") == str(len(response.body))
    assert response.header("x-request-id") == "my-id.1"


def test_304_passes_through_without_body() -> None:
    h = harness()
    _, transport = h.get("/pub/k", 'If-None-Match: "abc123"')
    h.agents["pub"].answer(FakeResponse(304, {"ETag": '"abc123"'}, body=b""))
    response = parse_response(transport.value())
    assert response.status == 304
    assert response.body == b""
    assert response.header("etag") == '"abc123"'


def test_range_206_passes_content_range() -> None:
    h = harness()
    _, transport = h.get("/pub/k", "Range: bytes=0-3")
    h.agents["pub"].answer(
        FakeResponse(206, {**OBJECT_HEADERS, "Content-Range": "bytes 0-3/11"}, body=b"hell")
    )
    response = parse_response(transport.value())
    assert (response.status, response.body) == (206, b"hell")
    assert response.header("content-range") == "bytes 0-3/11"


def test_method_gate() -> None:
    h = harness()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        _, transport = h.get("/pub/k", "Content-Length: 0", method=method)
        response = parse_response(transport.value())
        assert response.status == 405, method
        assert response.header("allow") == "GET, HEAD, OPTIONS"
        assert json.loads(response.body)["status"] == 405
    assert h.agents["pub"].sent == []
