"""
A harness whose config has a metrics section, and a GET straight to a site: for the metrics and
service unit tests.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from tests.unit.fakes import Harness, bucket_entry
from yatagarasu.web.site import ProxySite


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
