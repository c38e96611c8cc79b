"""``metrics: {enabled, address, port}``: where ``/metrics`` is served, in memory."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from tests.unit.fakes import FakeResponse, Harness, Parsed, bucket_entry, parse_response
from yatagarasu.service import ProxyService
from yatagarasu.web.site import ProxySite

OBJECT_HEADERS = {"Content-Type": "text/plain", "Content-Length": "4"}


def harness(metrics: dict[str, Any], *, root_bucket: bool = False) -> Harness:
    prefix = "/" if root_bucket else "/pub"
    return Harness(
        {"buckets": [bucket_entry(prefix=prefix)], "server": {"port": 8080}, "metrics": metrics}
    )


def get(site: ProxySite, target: str) -> tuple[Any, StringTransport]:
    channel = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40001))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40001))
    channel.makeConnection(transport)
    channel.dataReceived(f"GET {target} HTTP/1.1\r\nHost: metrics\r\n\r\n".encode())
    return channel, transport


def answer(site: ProxySite, target: str) -> Parsed:
    return parse_response(get(site, target)[1].value())


def requests_counted(body: bytes, status: str) -> float:
    prefix = f'yatagarasu_requests_total{{bucket="pub",method="GET",status="{status}"}} '
    values = [line[len(prefix) :] for line in body.decode().splitlines() if line.startswith(prefix)]
    return float(values[0]) if values else 0.0


def test_without_a_port_metrics_stay_on_the_main_listener() -> None:
    h = harness({})
    assert h.assembly.metrics_site is None
    response = parse_response(h.get("/metrics")[1].value())
    assert response.status == 200
    assert b"yatagarasu_requests_total" in response.body


def test_with_a_port_metrics_move_to_their_own_site() -> None:
    h = harness({"port": 9090})
    metrics_site = h.assembly.metrics_site
    assert metrics_site is not None
    h.get("/pub/k")
    h.agents["pub"].answer(FakeResponse(200, OBJECT_HEADERS, body=b"data"))
    on_main = parse_response(h.get("/metrics")[1].value())
    assert on_main.status == 404
    assert json.loads(on_main.body)["request_id"] == on_main.header("x-request-id")
    scraped = answer(metrics_site, "/metrics")
    assert scraped.status == 200
    assert (scraped.header("content-type") or "").startswith("text/plain")
    assert requests_counted(scraped.body, "200") == 1  # counted on the main site
    assert requests_counted(scraped.body, "404") == 0  # (/metrics on main has no bucket)


@pytest.mark.parametrize("target", ["/health", "/ready", "/admin/cache/stats", "/pub/k", "/"])
def test_the_metrics_site_serves_nothing_else(target: str) -> None:
    h = harness({"port": 9090})
    assert h.assembly.metrics_site is not None
    response = answer(h.assembly.metrics_site, target)
    assert response.status == 404
    assert response.header("x-request-id")
    assert json.loads(response.body)["request_id"] == response.header("x-request-id")
    assert h.agents["pub"].sent == []


def test_moved_metrics_are_not_proxied_to_a_bucket_at_the_root() -> None:
    h = harness({"port": 9090}, root_bucket=True)
    assert parse_response(h.get("/metrics")[1].value()).status == 404
    assert h.agents["pub"].sent == []
    h.get("/other")
    assert len(h.agents["pub"].sent) == 1  # the root bucket itself does serve


def test_disabled_metrics_are_served_nowhere() -> None:
    h = harness({"enabled": False, "port": 9090})
    assert h.assembly.metrics_site is None
    assert parse_response(h.get("/metrics")[1].value()).status == 404
    assert parse_response(h.get("/health")[1].value()).status == 200


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
