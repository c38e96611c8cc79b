"""The S3 origin's connection endpoint (yatagarasu.s3.pool.s3_endpoint)."""

from __future__ import annotations

import pytest
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.testing import MemoryReactorClock

from yatagarasu.s3.pool import s3_endpoint


@pytest.mark.parametrize(
    ("netloc", "kind", "address"),
    [
        ("127.0.0.1:9000", TCP4ClientEndpoint, ("127.0.0.1", 9000)),
        ("[::1]:9001", TCP6ClientEndpoint, ("::1", 9001)),
        ("localhost:9002", HostnameEndpoint, None),
    ],
)
def test_an_address_is_connected_to_directly_a_name_resolved(
    netloc: str, kind: type, address: tuple[str, int] | None
) -> None:
    reactor = MemoryReactorClock()
    endpoint = s3_endpoint(reactor, "http", netloc, 3)
    assert isinstance(endpoint, kind)
    if address is not None:
        endpoint.connect(None)  # type: ignore[arg-type]
        host, port, _, timeout, _ = reactor.tcpClients[0]
        assert (host, port, timeout) == (*address, 3)
