"""``metrics: {enabled, address, port}``: where ``/metrics`` is served, in memory."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from tests.unit.cache_harness import SECRET, START
from tests.unit.fakes import FakeResponse, Harness, Parsed, bucket_entry, parse_response
from tests.unit.web.metrics_harness import get, harness
from tests.unit.web.test_admin_cache import admin_header
from yatagarasu.web.site import ProxySite

OBJECT_HEADERS = {"Content-Type": "text/plain", "Content-Length": "4"}


def answer(site: ProxySite, target: str) -> Parsed:
    return parse_response(get(site, target)[1].value())


def requests_counted(body: bytes, status: str) -> float:
    labels = f'bucket="pub",method="GET",status="{status}",status_class="{status[0]}xx"'
    prefix = f"yatagarasu_requests_total{{{labels}}} "
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


def with_admin(metrics: dict[str, Any]) -> Harness:
    h = Harness(
        {
            "cache": {"enabled": True},
            "jwt": {
                "secret": SECRET,
                "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
            },
            "buckets": [bucket_entry()],
            "server": {"port": 8080},
            "metrics": metrics,
        }
    )
    h.clock.advance(START)
    return h


def test_serve_admin_moves_the_admin_api_to_the_metrics_site() -> None:
    h = with_admin({"port": 9090, "serve_admin": True})
    metrics_site = h.assembly.metrics_site
    assert metrics_site is not None
    on_main = parse_response(h.get("/admin/cache/stats", admin_header())[1].value())
    assert on_main.status == 404
    assert json.loads(on_main.body)["request_id"] == on_main.header("x-request-id")
    channel = metrics_site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40002))
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40002))
    channel.makeConnection(transport)
    channel.dataReceived(
        f"GET /admin/cache/stats HTTP/1.1\r\nHost: m\r\n{admin_header()}\r\n\r\n".encode()
    )
    stats = parse_response(transport.value())
    assert stats.status == 200
    assert json.loads(stats.body)["status"] == "success"
    assert answer(metrics_site, "/admin/cache/stats").status == 401  # still needs a token
    assert answer(metrics_site, "/metrics").status == 200
    assert answer(metrics_site, "/pub/k").status == 404
    assert h.agents["pub"].sent == []


def test_without_serve_admin_the_admin_api_stays_on_the_main_site() -> None:
    h = with_admin({"port": 9090})
    assert h.assembly.metrics_site is not None
    assert answer(h.assembly.metrics_site, "/admin/cache/stats").status == 404
    on_main = parse_response(h.get("/admin/cache/stats", admin_header())[1].value())
    assert on_main.status == 200


def test_a_reload_moves_the_admin_api_between_the_listeners() -> None:
    h = with_admin({"port": 9090})
    metrics_site = h.assembly.metrics_site
    assert metrics_site is not None
    document = copy.deepcopy(h.document)
    document["metrics"]["serve_admin"] = True
    assert h.reload(document).status == 200
    # the listening sites stay; what they serve was swapped
    assert parse_response(h.get("/admin/cache/stats", admin_header())[1].value()).status == 404
    assert answer(metrics_site, "/admin/cache/stats").status == 401  # there now, token needed
