"""The S3 origin's endpoint, connection pool and agent (yatagarasu.s3.pool)."""

from __future__ import annotations

from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.client import ResponseNeverReceived
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IResponse
from zope.interface.verify import verifyObject

from tests.unit.s3.fake_endpoint import FakeEndpoint
from yatagarasu.s3.pool import ConnectionPool, PooledAgent, s3_endpoint


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


FIELDS = b"Host: s3.test\r\n"
EMPTY_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"


def answered(d: Deferred[IResponse]) -> IResponse:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and not isinstance(results[0], Failure), results
    return cast(IResponse, results[0])


def test_the_pool_keeps_at_most_max_idle_connections() -> None:
    endpoint = FakeEndpoint()
    pool = ConnectionPool(Clock(), endpoint, 2)
    pending = [pool.request(b"GET", b"/b/%d" % i, FIELDS) for i in range(3)]
    assert len(endpoint.wires) == 3  # no idle one: each request opens its own
    for wire in endpoint.wires:
        wire.answer(EMPTY_OK)
    for d in pending:
        assert answered(d).code == 200
    assert pool.idle == 2
    assert [w.connected for w in endpoint.wires] == [True, True, False]
    # the most recently used idle connection goes first
    pool.request(b"GET", b"/b/again", FIELDS)
    assert endpoint.wires[1].value().endswith(b"GET /b/again HTTP/1.1\r\n" + FIELDS + b"\r\n")
    assert pool.idle == 1


def test_an_idle_connection_is_closed_after_idle_seconds() -> None:
    clock = Clock()
    endpoint = FakeEndpoint()
    pool = ConnectionPool(clock, endpoint, 4, idle_seconds=30)
    d = pool.request(b"GET", b"/b/k", FIELDS)
    endpoint.wires[0].answer(EMPTY_OK)
    answered(d)
    clock.advance(29)
    assert pool.idle == 1
    d = pool.request(b"GET", b"/b/k", FIELDS)  # reuse stops its idle timer
    clock.advance(29)
    endpoint.wires[0].answer(EMPTY_OK)
    answered(d)
    clock.advance(29)
    assert pool.idle == 1 and endpoint.wires[0].connected
    clock.advance(1)
    assert pool.idle == 0 and not endpoint.wires[0].connected
    assert clock.getDelayedCalls() == []


def test_a_connection_s3_closed_while_idle_leaves_the_pool() -> None:
    clock = Clock()
    endpoint = FakeEndpoint()
    pool = ConnectionPool(clock, endpoint, 4)
    d = pool.request(b"GET", b"/b/k", FIELDS)
    endpoint.wires[0].answer(EMPTY_OK)
    answered(d)
    endpoint.wires[0].closed_by_peer()
    assert pool.idle == 0 and clock.getDelayedCalls() == []


@pytest.mark.parametrize("method", [b"GET", b"HEAD"])
def test_a_reused_connection_closed_before_answering_is_retried_once(method: bytes) -> None:
    endpoint = FakeEndpoint()
    pool = ConnectionPool(Clock(), endpoint, 4)
    first = pool.request(method, b"/b/k", FIELDS)
    endpoint.wires[0].answer(EMPTY_OK)
    answered(first)
    d = pool.request(method, b"/b/k", FIELDS)
    endpoint.wires[0].closed_by_peer()  # S3 had closed it as we sent
    assert len(endpoint.wires) == 2
    assert endpoint.wires[1].value().startswith(method + b" /b/k HTTP/1.1\r\n")
    endpoint.wires[1].answer(EMPTY_OK)
    assert answered(d).code == 200


def test_a_new_connection_closed_before_answering_fails() -> None:
    endpoint = FakeEndpoint()
    pool = ConnectionPool(Clock(), endpoint, 4)
    d = pool.request(b"GET", b"/b/k", FIELDS)
    endpoint.wires[0].closed_by_peer()
    failures: list[Failure] = []
    d.addErrback(failures.append)
    assert failures and failures[0].check(ResponseNeverReceived)
    assert len(endpoint.wires) == 1


def test_close_closes_idle_connections_and_later_released_ones() -> None:
    endpoint = FakeEndpoint()
    pool = ConnectionPool(Clock(), endpoint, 4)
    idle = pool.request(b"GET", b"/b/1", FIELDS)
    busy = pool.request(b"GET", b"/b/2", FIELDS)
    endpoint.wires[0].answer(EMPTY_OK)
    answered(idle)
    closed = Deferred.fromCoroutine(pool.close())
    assert closed.called and not endpoint.wires[0].connected
    endpoint.wires[1].answer(EMPTY_OK)
    answered(busy)
    assert not endpoint.wires[1].connected and pool.idle == 0


def test_the_agent_sends_the_fields_as_given_to_its_origin() -> None:
    endpoint = FakeEndpoint()
    agent = PooledAgent(b"http://s3.test:9000", ConnectionPool(Clock(), endpoint, 4))
    assert verifyObject(IAgent, agent)
    headers = Headers({b"host": [b"s3.test:9000"], b"range": [b"bytes=0-1"]})
    agent.request(b"GET", b"http://s3.test:9000/b/k?x=1", headers)
    assert endpoint.wires[0].value() == (
        b"GET /b/k?x=1 HTTP/1.1\r\nHost: s3.test:9000\r\nRange: bytes=0-1\r\n\r\n"
    )
    with pytest.raises(ValueError):
        agent.request(b"GET", b"http://elsewhere/b/k", headers)
