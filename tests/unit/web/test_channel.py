"""The HTTP channel (yatagarasu.web.channel): parser errors, size limits, closing while draining."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IWriteDescriptor
from twisted.internet.testing import StringTransport
from twisted.web.http_headers import Headers
from zope.interface import classImplements

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


class SocketLikeTransport(StringTransport):
    """A StringTransport that, like a TCP transport, only sends when ``doWrite`` is called."""

    def __init__(self) -> None:
        super().__init__()
        self.buffered: list[bytes] = []
        self.flushes = 0
        self.producerPaused = False  # as a FileDescriptor: its producer (the channel) runs

    def write(self, data: bytes) -> None:
        self.buffered.append(data)

    def writeSequence(self, data: Any) -> None:
        self.buffered.extend(data)

    def doWrite(self) -> None:
        self.flushes += 1
        super().writeSequence(self.buffered)
        self.buffered = []


classImplements(SocketLikeTransport, IWriteDescriptor)


def channel_on(transport: StringTransport) -> LimitedHTTPChannel:
    channel = Harness({"buckets": [bucket_entry()]}).site.buildProtocol(None)
    assert isinstance(channel, LimitedHTTPChannel)
    channel.makeConnection(transport)
    return channel


def test_a_response_made_while_reading_is_sent_before_the_reactor_turn_ends() -> None:
    transport = SocketLikeTransport()
    channel = channel_on(transport)
    channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: p\r\n\r\n")
    assert transport.flushes == 1
    assert transport.buffered == []
    assert parse_response(transport.value()).status == 200
    channel.connectionLost(None)  # type: ignore[arg-type]


def test_a_closing_or_producing_transport_is_left_to_the_reactor() -> None:
    closing = SocketLikeTransport()
    channel = channel_on(closing)
    channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n")
    assert closing.disconnecting
    assert closing.flushes == 0  # its doWrite in the reactor flushes and then closes
    assert closing.buffered
    channel.connectionLost(None)  # type: ignore[arg-type]
    paused = SocketLikeTransport()
    channel = channel_on(paused)
    paused.producerPaused = True  # its send buffer is full: the reactor resumes the channel
    channel.dataReceived(b"GET /health HTTP/1.1\r\nHost: p\r\n\r\n")
    assert paused.flushes == 0
    channel.connectionLost(None)  # type: ignore[arg-type]
