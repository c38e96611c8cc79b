"""
The process service (yatagarasu.service.ProxyService) on a MemoryReactorClock: its listeners,
start-up errors naming the listener, and the drain on stop.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from tests.unit.fakes import bucket_entry, lose, parse_response
from tests.unit.web.metrics_harness import get, harness
from yatagarasu.assembly import assemble
from yatagarasu.config import parse_config
from yatagarasu.service import ProxyService
from yatagarasu.turn_writes import TurnWrites


def service_for(metrics: dict[str, Any], reactor: MemoryReactorClock) -> ProxyService:
    h = harness(metrics)
    return ProxyService(reactor, h.assembly)


def test_the_service_listens_on_both_ports_ipv4_and_ipv6() -> None:
    reactor = MemoryReactorClock()
    service = service_for({"address": "::1", "port": 9090}, reactor)
    service.privilegedStartService()
    listened = [(port, interface) for port, _, _, interface in reactor.tcpServers]
    assert listened == [(8080, "127.0.0.1"), (9090, "::1")]
    assert reactor.tcpServers[1][1] is service.assembly.metrics_site


class RefusingReactor(MemoryReactorClock):
    """Refuses to listen on one port, as the kernel does when it is in use."""

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy = busy

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if port == self.busy:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


def test_metrics_port_in_use_stops_the_start_up_naming_the_listener() -> None:
    service = service_for({"port": 9090}, RefusingReactor(busy=9090))
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        with pytest.raises(SystemExit) as info:
            service.privilegedStartService()
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert info.value.code == 1
    critical = [e for e in events if e.get("log_format", "").startswith("cannot listen")]
    assert [(e["address"], e["port"], e["listener"]) for e in critical] == [
        ("127.0.0.1", 9090, "metrics")
    ]


def test_drain_stops_the_metrics_listener_and_waits_for_its_connections() -> None:
    h = harness({"port": 9090})
    service = ProxyService(h.clock, h.assembly)
    service.privilegedStartService()
    service.startService()
    metrics_site = h.assembly.metrics_site
    assert metrics_site is not None
    scrape, transport = get(metrics_site, "/metrics")
    assert parse_response(transport.value()).status == 200
    stopped = service.stopService()
    assert transport.disconnecting  # the idle keep-alive scrape connection is closed at once
    assert [listener.service.running for listener in service.listeners] == [False, False]
    assert not stopped.called  # its last bytes are not flushed yet
    scrape.connectionLost(Failure(ConnectionDone()))
    assert stopped.called


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


def test_one_listener_on_the_configured_address_and_an_idle_stop_completes_at_once() -> None:
    config = parse_config({"buckets": [bucket_entry()], "server": {"port": 8085}}, {})
    reactor = MemoryReactorClock()
    service = ProxyService(reactor, assemble(config, reactor))
    assert [(listener.name, listener.host, listener.port) for listener in service.listeners] == [
        ("proxy", "127.0.0.1", 8085)
    ]
    service.privilegedStartService()
    service.startService()
    assert [(port, factory, interface) for port, factory, _, interface in reactor.tcpServers] == [
        (8085, service.site, "127.0.0.1")
    ]
    assert service.listeners[0].service.running
    stopped = service.stopService()
    assert stopped.called  # no connection to wait for
    assert not service.listeners[0].service.running
    assert not service.running


@pytest.mark.parametrize(("server", "backlog"), [({}, 4096), ({"listen_backlog": 200}, 200)])
def test_both_listeners_use_the_configured_listen_backlog(
    server: dict[str, Any], backlog: int
) -> None:
    document = {"buckets": [bucket_entry()], "server": server, "metrics": {"port": 9090}}
    config = parse_config(document, {})
    reactor = MemoryReactorClock()
    service = ProxyService(reactor, assemble(config, reactor))
    service.privilegedStartService()
    assert [(port, queue) for port, _, queue, _ in reactor.tcpServers] == [
        (8080, backlog),
        (9090, backlog),
    ]


class PortReactor(MemoryReactorClock):
    """Gives real (never started) ``tcp.Port``\\ s, as the real reactor's ``listenTCP`` does."""

    def __init__(self) -> None:
        super().__init__()
        self.ports: list[tcp.Port] = []

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        super().listenTCP(port, factory, backlog, interface)
        self.ports.append(tcp.Port(port, factory, backlog, interface, self))
        return self.ports[-1]


def test_both_listeners_accept_connections_whose_writes_leave_at_the_turns_end() -> None:
    document = {"buckets": [bucket_entry()], "metrics": {"port": 9090}}
    reactor = PortReactor()
    service = ProxyService(reactor, assemble(parse_config(document, {}), reactor))
    service.privilegedStartService()
    transports = [port.transport for port in reactor.ports]
    assert len(transports) == 2
    assert all(getattr(each, "__func__", None) is TurnWrites.transport for each in transports)
    assert transports[0].__self__ is transports[1].__self__  # type: ignore[attr-defined]
