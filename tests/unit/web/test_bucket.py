"""The request path end to end in memory: raw HTTP in, fake S3 behind, fake clock."""

from __future__ import annotations

import json
import re

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectTimeoutError
from twisted.internet.testing import StringTransport
from twisted.web.client import ResponseFailed

OBJECT_HEADERS = {
    "Content-Type": "text/plain",
    "ETag": '"abc123"',
    "Last-Modified": "Wed, 21 Oct 2026 07:28:00 GMT",
    "Cache-Control": "max-age=60",
    "Accept-Ranges": "bytes",
    "x-amz-request-id": "SECRET-ID",
    "x-amz-meta-owner": "someone",
    "Server": "AmazonS3",
}


def harness(*buckets: dict[str, object], **top: object) -> Harness:
    return Harness({"buckets": list(buckets) or [bucket_entry()], **top})


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


def test_invalid_incoming_request_id_is_replaced() -> None:
    h = harness()
    _, transport = h.get("/nowhere", "X-Request-ID: bad id with spaces")
    response = parse_response(transport.value())
    rid = response.header("x-request-id")
    assert rid is not None and re.fullmatch(r"[0-9a-f-]{36}", rid)


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


def test_longest_prefix_at_segment_boundary() -> None:
    h = harness(bucket_entry("short", "/products"), bucket_entry("long", "/products/images"))
    h.get("/products/images/cat.png")
    h.get("/products/docs/a.pdf")
    _, transport = h.get("/products-old/x")
    assert [s.uri for s in h.agents["long"].sent] == [b"http://127.0.0.1:9000/long-bucket/cat.png"]
    assert [s.uri for s in h.agents["short"].sent] == [
        b"http://127.0.0.1:9000/short-bucket/docs/a.pdf"
    ]
    response = parse_response(transport.value())
    assert response.status == 404
    assert json.loads(response.body)["message"] == "no bucket is configured for this path"


def test_keys_are_decoded_once() -> None:
    h = harness()
    h.get("/pub/a%2Fb")
    h.get("/pub/plus+sign%20space")
    h.get("/pub/%C3%B1/%E6%97%A5.txt")
    h.get("/pub/percent%2520literal")
    uris = [s.uri for s in h.agents["pub"].sent]
    base = b"http://127.0.0.1:9000/pub-bucket/"
    assert uris == [
        base + b"a/b",
        base + b"plus%2Bsign%20space",
        base + b"%C3%B1/%E6%97%A5.txt",
        base + b"percent%2520literal",
    ]


def test_prefix_without_key_is_404_without_upstream_call() -> None:
    h = harness()
    _, transport = h.get("/pub/")
    assert parse_response(transport.value()).status == 404
    assert h.agents["pub"].sent == []


def test_method_gate() -> None:
    h = harness()
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        _, transport = h.get("/pub/k", "Content-Length: 0", method=method)
        response = parse_response(transport.value())
        assert response.status == 405, method
        assert response.header("allow") == "GET, HEAD, OPTIONS"
        assert json.loads(response.body)["status"] == 405
    assert h.agents["pub"].sent == []


def test_traversal_is_rejected_before_routing() -> None:
    h = harness()
    for target in (
        "/pub/../etc/passwd",
        "/pub/%2e%2e/x",
        "/pub/..%2fx",
        "/pub/%252e%252e/x",
        "/pub/a%5c..%5cb",
        "/pub/a%00b",
    ):
        _, transport = h.get(target)
        response = parse_response(transport.value())
        assert response.status == 400, target
        assert json.loads(response.body)["request_id"] == response.header("x-request-id")
    assert h.agents["pub"].sent == []


def test_uri_too_long_header_too_large_body_too_large() -> None:
    h = harness(
        server={
            "security_limits": {"max_uri_length": 100, "max_header_size": 200, "max_body_size": 10}
        }
    )
    _, transport = h.get("/pub/" + "a" * 200)
    assert parse_response(transport.value()).status == 414
    assert transport.disconnecting
    _, transport = h.get("/pub/k", "X-Big: " + "b" * 300)
    response = parse_response(transport.value())
    assert response.status == 431
    assert json.loads(response.body)["status"] == 431
    _, transport = h.get("/pub/k", "Content-Length: 11", method="GET")
    assert parse_response(transport.value()).status == 413
    assert h.agents["pub"].sent == []


def test_chunked_body_over_limit_is_413() -> None:
    h = harness(server={"security_limits": {"max_body_size": 10}})
    channel, transport = h.send(
        b"GET /pub/k HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"10\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n"
    )
    assert parse_response(transport.value()).status == 413
    assert transport.disconnecting
    channel.connectionLost(ConnectionRefusedError())  # what the reactor does next


def test_client_going_away_cancels_upstream_request() -> None:
    h = harness()
    channel, _ = h.get("/pub/k")
    sent = h.agents["pub"].sent[0]
    channel.connectionLost(ConnectionRefusedError())
    assert sent.cancelled


def test_client_going_away_mid_body_stops_upstream() -> None:
    h = harness()
    channel, _ = h.get("/pub/k")
    upstream = FakeResponse(200, OBJECT_HEADERS, length=1000)
    h.agents["pub"].answer(upstream)
    upstream.push(b"x" * 10)
    channel.connectionLost(ConnectionRefusedError())
    assert upstream.transport.stopped


def test_backpressure_pauses_upstream() -> None:
    h = harness()
    channel, _ = h.get("/pub/k")
    upstream = FakeResponse(200, OBJECT_HEADERS, length=100)
    h.agents["pub"].answer(upstream)
    upstream.push(b"x" * 10)
    channel.pauseProducing()  # what the client transport does when its buffer is full
    assert upstream.transport.paused
    channel.resumeProducing()
    assert not upstream.transport.paused


def test_failure_after_body_started_aborts_connection() -> None:
    h = harness()
    _, transport = h.get("/pub/k")
    upstream = FakeResponse(200, OBJECT_HEADERS, length=100)
    h.agents["pub"].answer(upstream)
    upstream.push(b"x" * 10)
    upstream.end(ResponseFailed([ConnectionRefusedError()]))
    assert transport.disconnecting or getattr(transport, "aborted", False) or transport.disconnected
    raw = transport.value()
    assert parse_response(raw).header("content-length") == "100"
    assert raw.endswith(b"x" * 10)


def test_body_idle_timeout_aborts_but_not_while_client_is_slow() -> None:
    h = harness(bucket_entry(s3={"idle_timeout": 5}), server={"send_timeout_seconds": 120})
    channel, transport = h.get("/pub/k")
    upstream = FakeResponse(200, OBJECT_HEADERS, length=100)
    h.agents["pub"].answer(upstream)
    upstream.push(b"x" * 10)
    channel.pauseProducing()
    h.clock.advance(60)  # the client is slow: not S3's fault
    assert not upstream.transport.stopped
    channel.resumeProducing()
    h.clock.advance(4)
    assert not upstream.transport.stopped
    upstream.push(b"y")
    h.clock.advance(4)
    assert not upstream.transport.stopped
    h.clock.advance(2)
    assert upstream.transport.stopped
    upstream.end(ResponseFailed([ConnectionRefusedError()]))
    assert transport.disconnecting or transport.disconnected


def test_retries_5xx_then_serves() -> None:
    h = harness(bucket_entry(s3={"retry": {"max_attempts": 3, "initial_backoff_ms": 100}}))
    _, transport = h.get("/pub/k")
    agent = h.agents["pub"]
    agent.answer(FakeResponse(500, {}, body=b"<Error><Code>InternalError</Code></Error>"))
    assert len(agent.sent) == 1
    h.clock.advance(0.2)
    assert len(agent.sent) == 2
    agent.answer(FakeResponse(200, OBJECT_HEADERS, body=b"ok"))
    response = parse_response(transport.value())
    assert (response.status, response.body) == (200, b"ok")


def test_5xx_after_all_attempts_is_502() -> None:
    h = harness(bucket_entry(s3={"retry": {"max_attempts": 2, "initial_backoff_ms": 10}}))
    _, transport = h.get("/pub/k")
    agent = h.agents["pub"]
    agent.answer(FakeResponse(500, {}, body=b"<Error><Code>InternalError</Code></Error>"))
    h.clock.advance(1)
    agent.answer(FakeResponse(500, {}, body=b"<Error><Code>InternalError</Code></Error>"))
    response = parse_response(transport.value())
    assert response.status == 502
    assert json.loads(response.body)["s3_code"] == "InternalError"
    assert len(agent.sent) == 2


def test_slowdown_is_503_with_retry_after() -> None:
    h = harness()
    _, transport = h.get("/pub/k")
    h.agents["pub"].answer(FakeResponse(503, {}, body=b"<Error><Code>SlowDown</Code></Error>"))
    response = parse_response(transport.value())
    assert response.status == 503
    assert response.header("retry-after") == "1"


def test_connection_refused_is_502_and_connect_timeout_504() -> None:
    h = harness()
    _, transport = h.get("/pub/a")
    h.agents["pub"].fail(ConnectionRefusedError())
    assert parse_response(transport.value()).status == 502
    _, transport = h.get("/pub/b")
    h.agents["pub"].fail(ConnectTimeoutError())
    assert parse_response(transport.value()).status == 504


def test_first_byte_timeout_is_504() -> None:
    h = harness(bucket_entry(s3={"first_byte_timeout": 3}))
    _, transport = h.get("/pub/k")
    h.clock.advance(2.9)
    assert transport.value() == b""
    h.clock.advance(0.2)
    assert h.agents["pub"].sent[0].cancelled
    response = parse_response(transport.value())
    assert response.status == 504
    assert "3s" in json.loads(response.body)["message"]


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


def test_health_and_ready() -> None:
    h = harness()
    _, transport = h.get("/health")
    response = parse_response(transport.value())
    document = json.loads(response.body)
    assert (response.status, document["status"]) == (200, "healthy")
    assert document["uptime_seconds"] == 0
    _, transport = h.get("/ready")
    response = parse_response(transport.value())
    assert response.status == 200
    assert json.loads(response.body)["backends"]["pub"]["status"] == "healthy"
    h.draining = True
    _, transport = h.get("/ready")
    response = parse_response(transport.value())
    assert (response.status, json.loads(response.body)["status"]) == (503, "shutting_down")


def test_ready_is_503_when_every_upstream_keeps_failing() -> None:
    h = harness()
    for i in range(5):
        h.get(f"/pub/k{i}")
        h.agents["pub"].fail(ConnectionRefusedError())
    _, transport = h.get("/ready")
    response = parse_response(transport.value())
    document = json.loads(response.body)
    assert (response.status, document["status"]) == (503, "unavailable")
    replicas = document["backends"]["pub"]["replicas"]
    assert replicas["http://127.0.0.1:9000"]["consecutive_failures"] == 5
    h.get("/pub/ok")
    h.agents["pub"].answer(FakeResponse(200, OBJECT_HEADERS, body=b"."))
    _, transport = h.get("/ready")
    assert parse_response(transport.value()).status == 200


def test_health_subpath_is_not_health() -> None:
    h = harness()
    _, transport = h.get("/health/extra")
    assert parse_response(transport.value()).status == 404


def test_aws_virtual_hosted_and_dotted_bucket_addressing() -> None:
    h = Harness(
        {
            "buckets": [
                {
                    "name": "aws",
                    "path_prefix": "/aws",
                    "s3": {
                        "bucket": "my-assets",
                        "region": "eu-west-1",
                        "access_key": "AKID",
                        "secret_key": "s",
                    },
                },
                {
                    "name": "dots",
                    "path_prefix": "/dots",
                    "s3": {"bucket": "assets.example.com", "region": "us-west-2"},
                },
            ]
        }
    )
    h.get("/aws/img/a%20b.png")
    sent = h.agents["aws"].sent[0]
    assert sent.uri == b"https://my-assets.s3.eu-west-1.amazonaws.com/img/a%20b.png"
    assert sent.headers.getRawHeaders(b"host") == [b"my-assets.s3.eu-west-1.amazonaws.com"]
    assert b"/eu-west-1/s3/aws4_request" in sent.headers.getRawHeaders(b"authorization")[0]
    h.get("/dots/k")
    anonymous = h.agents["dots"].sent[0]
    assert anonymous.uri == b"https://s3.us-west-2.amazonaws.com/assets.example.com/k"
    assert anonymous.headers.getRawHeaders(b"authorization") is None


def test_client_that_stops_reading_is_cut_after_send_timeout() -> None:
    h = harness(bucket_entry(s3={"idle_timeout": 5}), server={"send_timeout_seconds": 30})
    channel, transport = h.get("/pub/k")
    upstream = FakeResponse(200, OBJECT_HEADERS, length=100)
    h.agents["pub"].answer(upstream)
    upstream.push(b"x" * 10)
    channel.pauseProducing()
    h.clock.advance(29)
    assert not upstream.transport.stopped
    assert not (transport.disconnecting or transport.disconnected)
    h.clock.advance(2)
    assert upstream.transport.stopped
    upstream.end(ResponseFailed([ConnectionRefusedError()]))
    assert transport.disconnecting or transport.disconnected


def test_health_and_metrics_answer_other_methods_with_json_405() -> None:
    h = harness()
    for path in ("/health", "/ready", "/metrics"):
        _, transport = h.get(path, "Content-Length: 0", method="POST")
        response = parse_response(transport.value())
        assert response.status == 405, path
        assert response.header("allow") == "GET, HEAD"
        assert json.loads(response.body)["request_id"] == response.header("x-request-id")


def test_twisted_parser_errors_are_json_400() -> None:
    h = harness()
    _, transport = h.send(b"GET /pub/k HTTP/1.1\r\nHost: p\r\nContent-Length: nope\r\n\r\n")
    response = parse_response(transport.value())
    assert response.status == 400
    assert json.loads(response.body)["status"] == 400
    assert response.header("x-request-id")
    assert h.agents["pub"].sent == []


def test_cancel_while_waiting_for_s3_is_not_an_upstream_failure() -> None:
    h = harness(bucket_entry(s3={"retry": {"max_attempts": 3}}))
    for _ in range(6):
        channel, _ = h.get("/pub/k")
        channel.connectionLost(ConnectionRefusedError())
    assert all(sent.cancelled for sent in h.agents["pub"].sent)
    assert len(h.agents["pub"].sent) == 6  # no retries for clients that are gone
    _, transport = h.get("/ready")
    assert parse_response(transport.value()).status == 200


def test_socket_send_buffer_and_stream_buffer_knobs() -> None:
    import socket

    from twisted.internet.address import IPv4Address

    h = harness(server={"socket_send_buffer_bytes": 65536, "stream_buffer_bytes": 16384})
    left, right = socket.socketpair()
    try:
        channel = h.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        transport.getHandle = lambda: left  # type: ignore[method-assign]
        transport.bufferSize = 65536  # type: ignore[attr-defined]
        channel.makeConnection(transport)
        # Linux doubles the value it is given (bookkeeping overhead) and reports that.
        assert left.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == 2 * 65536
        channel.dataReceived(b"GET /pub/k HTTP/1.1\r\nHost: p\r\n\r\n")
        h.agents["pub"].answer(FakeResponse(200, OBJECT_HEADERS, length=100))
        assert transport.bufferSize == 16384  # type: ignore[attr-defined]
    finally:
        left.close()
        right.close()


def test_connections_close_after_the_response_while_draining() -> None:
    h = harness()
    _, transport = h.get("/health")
    assert parse_response(transport.value()).header("connection") is None
    assert not transport.disconnecting
    h.draining = True
    _, transport = h.get("/health")
    response = parse_response(transport.value())
    assert response.status == 200
    assert response.header("connection") == "close"
    assert transport.disconnecting


def test_asterisk_target_is_for_options_only() -> None:
    h = harness()
    _, transport = h.send(b"GET * HTTP/1.1\r\nHost: proxy\r\n\r\n")
    response = parse_response(transport.value())
    assert response.status == 405
    assert response.header("allow") == "OPTIONS"
    assert json.loads(response.body)["status"] == 405
    _, transport = h.send(b"OPTIONS * HTTP/1.1\r\nHost: proxy\r\n\r\n")
    assert parse_response(transport.value()).status == 200
    assert h.agents["pub"].sent == []
