"""
The S3 connection pool on the real reactor against a real twisted.web server: keep-alive over
real sockets, chunked bodies, and HTTPS verified like twisted.web's Agent (system trust and
service-identity).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.web import resource, server
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers

from devharness.certificates import write_self_signed
from devharness.ports import free_port
from yatagarasu.config.schema import TLSConfig
from yatagarasu.s3.errors import BoundedCollector
from yatagarasu.s3.pool import ConnectionPool, PooledAgent, s3_endpoint
from yatagarasu.tls import server_tls_options

pytestmark = [
    pytest.mark.integration,
    # the test server's certificate goes through pyOpenSSL (as the proxy's HTTPS listener's does)
    pytest.mark.filterwarnings("ignore:Passing pyOpenSSL:DeprecationWarning"),
]


class Object(resource.Resource):
    isLeaf = True

    def render_GET(self, request: server.Request) -> bytes:
        if request.path == b"/chunked":
            request.write(b"first,")  # no length set: twisted.web answers chunked
            request.write(b"second")
            request.finish()
            return server.NOT_DONE_YET  # type: ignore[no-any-return]
        return b"0123456789"


class CountingSite(server.Site):
    connections = 0

    def buildProtocol(self, addr: Any) -> Any:
        self.connections += 1
        return super().buildProtocol(addr)


@pytest.fixture
def site() -> CountingSite:
    return CountingSite(Object())


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    return write_self_signed(tmp_path)


@pytest.fixture
def listening(reactor: Any, site: CountingSite) -> Iterator[int]:
    port = free_port()
    listener = reactor.listenTCP(port, site, interface="127.0.0.1")
    yield port
    pytest_twisted.blockon(listener.stopListening())


@pytest.fixture
def listening_tls(
    reactor: Any, site: CountingSite, certificate: tuple[Path, Path]
) -> Iterator[int]:
    cert, key = certificate
    options = server_tls_options(TLSConfig(str(cert), str(key)))
    port = free_port()
    listener = reactor.listenSSL(port, site, options, interface="127.0.0.1")
    yield port
    pytest_twisted.blockon(listener.stopListening())


async def get(agent: PooledAgent, origin: str, path: str) -> tuple[int, bytes, Any]:
    response = await agent.request(b"GET", f"{origin}{path}".encode(), _host(origin))
    collector = BoundedCollector()
    response.deliverBody(collector)
    return response.code, await collector.done, response


def _host(origin: str) -> Headers:
    return Headers({b"host": [origin.split("//", 1)[1].encode()]})


def agent_for(reactor: Any, scheme: str, netloc: str) -> tuple[PooledAgent, ConnectionPool]:
    pool = ConnectionPool(reactor, s3_endpoint(reactor, scheme, netloc, 5), 4)
    return PooledAgent(f"{scheme}://{netloc}".encode(), pool), pool


@pytest_twisted.ensureDeferred
async def test_keep_alive_and_chunked_over_real_sockets(
    reactor: Any, listening: int, site: CountingSite
) -> None:
    origin = f"http://127.0.0.1:{listening}"
    agent, pool = agent_for(reactor, "http", f"127.0.0.1:{listening}")
    try:
        for _ in range(3):
            code, body, response = await get(agent, origin, "/k")
            assert (code, body, response.length) == (200, b"0123456789", 10)
        code, body, _ = await get(agent, origin, "/chunked")
        assert (code, body) == (200, b"first,second")
        assert site.connections == 1  # every request after the first reused the connection
        assert pool.idle == 1
    finally:
        await pool.close()


@pytest_twisted.ensureDeferred
async def test_https_to_a_trusted_name(
    reactor: Any,
    listening_tls: int,
    site: CountingSite,
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))  # the system trust, for this test
    netloc = f"localhost:{listening_tls}"
    agent, pool = agent_for(reactor, "https", netloc)
    try:
        for _ in range(2):
            code, body, _ = await get(agent, f"https://{netloc}", "/k")
            assert (code, body) == (200, b"0123456789")
        assert site.connections == 1
    finally:
        await pool.close()


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
@pytest_twisted.ensureDeferred
async def test_https_is_refused_for_an_untrusted_or_mismatched_certificate(
    reactor: Any,
    listening_tls: int,
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
    host: str,
) -> None:
    if host == "127.0.0.1":
        # trusted, but issued to localhost: service-identity refuses the address
        monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    netloc = f"{host}:{listening_tls}"
    agent, pool = agent_for(reactor, "https", netloc)
    try:
        sent: Deferred[Any] = agent.request(
            b"GET", f"https://{netloc}/k".encode(), _host(f"https://{netloc}")
        )
        with pytest.raises(ResponseNeverReceived) as refused:
            await sent
        reasons = " ".join(str(r.value) for r in refused.value.reasons)
        assert "certificate" in reasons.lower() or "verif" in reasons.lower(), reasons
        assert pool.idle == 0
    finally:
        await pool.close()
