"""Graceful shutdown: the site tracks connections, closes idle ones, waits for the rest."""

from __future__ import annotations

from typing import Any

from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from yatagarasu.assembly import assemble
from yatagarasu.config import parse_config
from yatagarasu.service import ProxyService

OBJECT_HEADERS = {"Content-Type": "application/octet-stream", "Content-Length": "4"}


def harness(**server: Any) -> Harness:
    return Harness({"buckets": [bucket_entry()], "server": server})


def lose(channel: Any) -> None:
    """What the reactor does once a transport has flushed and closed."""
    channel.connectionLost(Failure(ConnectionDone()))


def test_connections_are_tracked_until_connection_lost() -> None:
    h = harness()
    first, _ = h.connect()
    second, _ = h.connect()
    assert h.site.connection_count == 2
    closed = h.site.wait_closed()
    lose(first)
    assert (h.site.connection_count, closed.called) == (1, False)
    lose(second)
    assert (h.site.connection_count, closed.called) == (0, True)
    assert h.site.wait_closed().called


def test_idle_connections_close_at_once_busy_ones_after_their_response() -> None:
    h = harness()
    idle, idle_transport = h.get("/health")
    assert parse_response(idle_transport.value()).status == 200
    assert not idle_transport.disconnecting  # kept alive
    busy, busy_transport = h.get("/pub/k")  # the upstream has not answered yet
    unused, unused_transport = h.connect()  # accepted, no request sent
    assert h.site.close_connections() == 2
    assert idle_transport.disconnecting and unused_transport.disconnecting
    assert not busy_transport.disconnecting
    assert h.site.close_connections() == 2  # again (after the listener stopped): harmless
    h.agents["pub"].answer(FakeResponse(200, OBJECT_HEADERS, body=b"data"))
    assert parse_response(busy_transport.value()).body == b"data"
    assert busy_transport.disconnecting  # closes after the last byte, not kept alive
    closed = h.site.wait_closed()
    for channel in (idle, busy):
        lose(channel)
    assert not closed.called  # the last connection still holds bytes: not done yet
    lose(unused)
    assert closed.called


def test_abort_connections_drops_what_is_left() -> None:
    h = harness()
    busy, transport = h.get("/pub/slow")
    h.connect()
    assert h.site.active_count == 1
    assert h.site.abort_connections() == 2
    assert transport.disconnected
    lose(busy)
    assert (h.site.active_count, h.site.connection_count) == (0, 1)


def drain_service(**server: Any) -> tuple[ProxyService, MemoryReactorClock, list[LogEvent]]:
    config = parse_config({"buckets": [bucket_entry()], "server": server}, {})
    reactor = MemoryReactorClock()
    service = ProxyService(reactor, assemble(config, reactor))
    service.privilegedStartService()
    service.startService()
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    return service, reactor, events


def messages(events: list[LogEvent]) -> list[str]:
    service = [e for e in events if e.get("log_namespace") == "yatagarasu.service"]
    return [e.get("log_format", "") for e in service]


def test_drain_waits_for_every_connection_to_close() -> None:
    service, reactor, events = drain_service(shutdown_grace_seconds=20)
    try:
        channel = service.site.buildProtocol(None)
        channel.makeConnection(StringTransport())
        stopped = service.stopService()
        assert channel.transport.disconnecting  # idle: closed at once
        reactor.advance(19)
        assert not stopped.called  # its bytes are not flushed yet
        assert "shutdown complete" not in messages(events)
        lose(channel)
        assert stopped.called
        assert "shutdown complete" in messages(events)
        assert not any("aborted" in m for m in messages(events))
    finally:
        globalLogPublisher.removeObserver(events.append)


def test_drain_aborts_connections_left_after_the_grace() -> None:
    service, reactor, events = drain_service(shutdown_grace_seconds=5)
    try:
        channel = service.site.buildProtocol(None)
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET /pub/k HTTP/1.1\r\nHost: p\r\n\r\n")
        stopped = service.stopService()
        reactor.advance(4)
        assert not transport.disconnecting and not stopped.called
        reactor.advance(1)
        assert transport.disconnected  # aborted
        aborted = [e for e in events if "aborted" in e.get("log_format", "")]
        assert [(e["aborted"], e["requests"]) for e in aborted] == [(1, 1)]
        lose(channel)  # the reactor reports the abort on its next turn
        assert stopped.called
        assert "shutdown complete" in messages(events)
    finally:
        globalLogPublisher.removeObserver(events.append)
