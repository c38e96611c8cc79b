"""The S3 client's connection endpoint (yatagarasu.s3.client)."""

from __future__ import annotations

import pytest
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.testing import MemoryReactorClock
from twisted.web.client import URI

from yatagarasu.s3.client import _OneEndpoint


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
    endpoint = _OneEndpoint(reactor, "http", netloc, 3).endpointForURI(
        URI.fromBytes(f"http://{netloc}/".encode())
    )
    assert isinstance(endpoint, kind)
    if address is not None:
        endpoint.connect(None)  # type: ignore[arg-type]
        host, port, _, timeout, _ = reactor.tcpClients[0]
        assert (host, port, timeout) == (*address, 3)
