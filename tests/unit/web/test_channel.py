"""The HTTP channel (yatagarasu.web.channel): parser errors, size limits, closing while draining."""

from __future__ import annotations

import json

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.web.http_headers import Headers

from tests.unit.fakes import Harness, bucket_entry, parse_response
from tests.unit.web.bucket_harness import harness
from yatagarasu.web.channel import LimitedHTTPChannel, ResponseHeaders, encode_head


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


def test_twisted_parser_errors_are_json_400() -> None:
    h = harness()
    _, transport = h.send(b"GET /pub/k HTTP/1.1\r\nHost: p\r\nContent-Length: nope\r\n\r\n")
    response = parse_response(transport.value())
    assert response.status == 400
    assert json.loads(response.body)["status"] == 400
    assert response.header("x-request-id")
    assert h.agents["pub"].sent == []


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


def test_encode_head_writes_the_prefix_then_the_headers_then_the_extra_lines() -> None:
    headers = ResponseHeaders()
    headers.prefix = b"X-Request-Id: r1\r\n"
    headers.setRawHeaders(b"x-cache", [b"HIT"])
    head = encode_head(b"HTTP/1.1", b"200", b"OK", headers, b"Content-Length: 3\r\n")
    assert head == (
        b"HTTP/1.1 200 OK\r\nX-Request-Id: r1\r\nX-Cache: HIT\r\nContent-Length: 3\r\n\r\n"
    )
    assert encode_head(b"HTTP/1.0", b"404", b"Not Found", Headers()) == (
        b"HTTP/1.0 404 Not Found\r\n\r\n"
    )


def test_the_channel_writes_a_head_in_one_piece() -> None:
    channel = Harness({"buckets": [bucket_entry()]}).site.buildProtocol(None)
    assert isinstance(channel, LimitedHTTPChannel)
    transport = StringTransport()
    channel.makeConnection(transport)
    writes: list[bytes] = []
    transport.write = writes.append  # type: ignore[method-assign]
    headers = Headers({b"content-type": [b"text/plain"]})
    channel.writeHeaders(b"HTTP/1.1", b"200", b"OK", headers)
    assert writes == [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"]
    channel.connectionLost(None)  # type: ignore[arg-type]
