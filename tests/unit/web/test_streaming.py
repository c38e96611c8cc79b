"""
Streaming S3 bodies to clients (yatagarasu.web.streaming): backpressure, disconnects, timeouts,
buffers.
"""

from __future__ import annotations

import gc
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionAborted, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed

from tests.unit.fakes import FakeResponse, bucket_entry, parse_response
from tests.unit.web.bucket_harness import OBJECT_HEADERS, harness
from yatagarasu.web.streaming import FAST_AFTER_BYTES


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


def test_socket_send_buffer_and_stream_buffer_knobs() -> None:
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


def _socket_channel(h: Any, sock: socket.socket) -> tuple[Any, StringTransport]:
    """A channel on a transport with a real socket handle and a write-buffer size."""
    channel = h.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    transport.getHandle = lambda: sock  # type: ignore[method-assign]
    transport.bufferSize = 65536  # type: ignore[attr-defined]
    channel.makeConnection(transport)
    return channel, transport


def test_default_send_buffer_is_one_mebibyte_and_zero_leaves_the_kernels() -> None:
    for server, expected in (({}, 2 * 1048576), ({"socket_send_buffer_bytes": 0}, None)):
        left, right = socket.socketpair()
        try:
            kernel_default = left.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
            _socket_channel(harness(server=server), left)
            # Linux doubles the value it is given (bookkeeping overhead) and reports that.
            assert left.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) == (
                expected or kernel_default
            )
        finally:
            left.close()
            right.close()


def test_a_client_gets_the_large_buffer_once_it_kept_up_and_loses_it_when_slow() -> None:
    h = harness()
    left, right = socket.socketpair()
    try:
        channel, transport = _socket_channel(h, left)
        channel.dataReceived(b"GET /pub/k HTTP/1.1\r\nHost: p\r\n\r\n")
        upstream = FakeResponse(200, OBJECT_HEADERS, length=10**9)
        h.agents["pub"].answer(upstream)
        assert transport.bufferSize == 16384  # type: ignore[attr-defined]
        chunk = b"x" * 65536
        for _ in range(FAST_AFTER_BYTES // len(chunk) - 1):
            upstream.push(chunk)
            channel.pauseProducing()
            h.clock.advance(0.001)  # short pauses: the client keeps up
            channel.resumeProducing()
        assert transport.bufferSize == 16384  # type: ignore[attr-defined]
        upstream.push(chunk)
        assert transport.bufferSize == 65536  # type: ignore[attr-defined]
        channel.pauseProducing()
        h.clock.advance(0.5)  # now it reads slowly
        channel.resumeProducing()
        assert transport.bufferSize == 16384  # type: ignore[attr-defined]
        assert not upstream.transport.paused
    finally:
        left.close()
        right.close()


def aborted_streams_garbage(streams: int = 5) -> list[str]:
    """
    Types of what ``streams`` aborted streams left in reference cycles (``gc.garbage`` with
    ``DEBUG_SAVEALL``), after one stream first (lazily built things).
    """
    h = harness()

    def aborted_stream() -> None:
        channel, transport = h.get("/pub/k")
        upstream = FakeResponse(200, OBJECT_HEADERS, length=1000)
        h.agents["pub"].answer(upstream)
        upstream.push(b"x" * 10)
        channel.connectionLost(Failure(ConnectionLost()))
        # what a TCP transport does once its protocol was told (tcp.Connection.connectionLost)
        transport.producer = None
        transport.protocol = None  # type: ignore[assignment]
        assert upstream.transport.stopped
        # what twisted.web.client tells the body protocol of a stopped transport
        upstream.end(ResponseFailed([Failure(ConnectionAborted())]))

    aborted_stream()
    h.clock.advance(120)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        for _ in range(streams):
            aborted_stream()
        h.clock.advance(120)
        gc.collect()
        return sorted({f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


def test_an_aborted_stream_leaves_no_reference_cycle() -> None:
    """
    A client that goes away mid-body: the request, channel, relay and their Deferreds are
    freed by reference counting, not left for the cyclic garbage collector.

    Run in a fresh interpreter, as twistd runs the proxy: pytest-twisted's greenlet keeps
    tracebacks of its own, which would show up here as cycles the proxy does not have.
    """
    script = "from tests.unit.web.test_streaming import aborted_streams_garbage as g; print(g())"
    root = Path(__file__).resolve().parents[3]
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
