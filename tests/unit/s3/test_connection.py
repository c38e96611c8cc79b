"""One S3 connection's exchanges (yatagarasu.s3.connection), driven through its pool."""

from __future__ import annotations

import gc
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed, ResponseNeverReceived
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import UNKNOWN_LENGTH, IResponse
from zope.interface.verify import verifyObject

from tests.unit.s3.fake_endpoint import FakeEndpoint, Wire
from yatagarasu.s3.connection import S3Response
from yatagarasu.s3.pool import ConnectionPool

FIELDS = b"Host: s3.test\r\n"
OK_HEAD = b'HTTP/1.1 200 OK\r\nContent-Length: 5\r\nETag: "e"\r\nContent-Type: text/plain\r\n\r\n'


class Collect(Protocol):
    """A body consumer that keeps what it was given."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.reason: Failure | None = None

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.reason = reason


def pool_and_endpoint(max_idle: int = 4) -> tuple[ConnectionPool, FakeEndpoint, Clock]:
    clock = Clock()
    endpoint = FakeEndpoint()
    return ConnectionPool(clock, endpoint, max_idle), endpoint, clock


def head_of(d: Deferred[IResponse]) -> S3Response:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, "no answer yet"
    assert isinstance(results[0], S3Response), results[0]
    return results[0]


def failure_of(d: Deferred[IResponse]) -> Failure:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and isinstance(results[0], Failure), results
    return results[0]


def test_a_request_is_written_in_one_piece_and_the_answer_parsed() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k%20y", FIELDS)
    wire = endpoint.wires[0]
    assert wire.value() == b"GET /b/k%20y HTTP/1.1\r\nHost: s3.test\r\n\r\n"
    seen: list[IResponse] = []
    d.addCallback(lambda r: seen.append(r) or r)
    wire.answer(OK_HEAD[:20])
    assert seen == []
    wire.answer(OK_HEAD[20:] + b"ab")
    response = head_of(d)
    assert verifyObject(IResponse, response)
    assert verifyObject(IPushProducer, response)
    assert (response.code, response.length) == (200, 5)
    assert response.headers.getRawHeaders(b"etag") == [b'"e"']
    assert response.headers.getRawHeaders(b"content-type") == [b"text/plain"]
    # like twisted.web's client: the length is response.length, not a field
    assert response.headers.getRawHeaders(b"content-length") is None
    body = Collect()
    response.deliverBody(body)
    assert body.data == [b"ab"]  # what came with the head was kept for the consumer
    assert pool.idle == 0
    wire.answer(b"cde")
    assert b"".join(body.data) == b"abcde"
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert pool.idle == 1  # read to its end: back in the pool


def test_repeated_fields_keep_every_value_and_names_any_case() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"HEAD", b"/b/k", FIELDS)
    endpoint.wires[0].answer(
        b'HTTP/1.1 200 OK\r\netag: "e"\r\nX-Amz-Meta-A: 1\r\nx-amz-meta-a: 2\r\n'
        b"Content-Length: 3\r\n\r\n"
    )
    headers = head_of(d).headers
    assert headers.getRawHeaders(b"ETag") == [b'"e"']
    assert headers.getRawHeaders("x-amz-meta-a") == ["1", "2"]
    assert dict(headers.getAllRawHeaders())[b"Content-Length"] == [b"3"]


def test_a_chunked_answer_is_decoded_and_its_connection_reused() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k", FIELDS)
    wire = endpoint.wires[0]
    wire.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n")
    response = head_of(d)
    assert response.length is UNKNOWN_LENGTH
    assert response.headers.getRawHeaders(b"transfer-encoding") is None
    body = Collect()
    response.deliverBody(body)
    wire.answer(b"2\r\nde\r\n0\r\n\r\n")
    assert b"".join(body.data) == b"abcde"
    assert body.reason is not None and body.reason.check(ResponseDone)
    wire.clear()
    again = pool.request(b"GET", b"/b/other", FIELDS)
    assert len(endpoint.wires) == 1
    assert wire.value().startswith(b"GET /b/other HTTP/1.1\r\n")
    wire.answer(OK_HEAD + b"12345")
    assert head_of(again).code == 200


def test_connection_close_is_not_reused() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k", FIELDS)
    wire = endpoint.wires[0]
    wire.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    response = head_of(d)
    assert response.headers.getRawHeaders(b"connection") is None
    body = Collect()
    response.deliverBody(body)
    assert body.data == [b"ok"]
    assert body.reason is not None and body.reason.check(ResponseDone)
    assert not wire.connected and pool.idle == 0
    pool.request(b"GET", b"/b/k", FIELDS)
    assert len(endpoint.wires) == 2


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 304 Not Modified\r\nConnection: close\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_an_answer_that_ends_its_connection_is_not_pooled(head: bytes) -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k", FIELDS)
    endpoint.wires[0].answer(head)
    head_of(d)
    assert not endpoint.wires[0].connected and pool.idle == 0


def test_http_1_0_keep_alive_is_pooled() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k", FIELDS)
    endpoint.wires[0].answer(
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 0\r\n\r\n"
    )
    head_of(d)
    assert pool.idle == 1


def test_a_truncated_body_fails_and_the_connection_is_dropped() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k", FIELDS)
    wire = endpoint.wires[0]
    wire.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
    body = Collect()
    head_of(d).deliverBody(body)
    wire.closed_by_peer()
    assert b"".join(body.data) == b"12345"
    assert body.reason is not None and body.reason.check(ResponseFailed)
    assert pool.idle == 0


def test_a_truncated_chunked_body_fails() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k", FIELDS)
    wire = endpoint.wires[0]
    wire.answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
    body = Collect()
    head_of(d).deliverBody(body)
    wire.closed_by_peer()
    assert body.reason is not None and body.reason.check(ResponseFailed)


def test_a_body_without_length_ends_with_the_connection() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k", FIELDS)
    wire = endpoint.wires[0]
    wire.answer(b"HTTP/1.1 200 OK\r\n\r\nall of it")
    response = head_of(d)
    assert response.length is UNKNOWN_LENGTH
    body = Collect()
    response.deliverBody(body)
    wire.closed_by_peer()
    assert b"".join(body.data) == b"all of it"
    assert body.reason is not None and body.reason.check(PotentialDataLoss)
    assert pool.idle == 0


def test_head_keeps_its_length_field_and_reads_no_body() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"HEAD", b"/b/k", FIELDS)
    wire = endpoint.wires[0]
    wire.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n")
    response = head_of(d)
    assert response.length == 0
    assert response.headers.getRawHeaders(b"content-length") == [b"1048576"]
    assert pool.idle == 1  # no body to wait for: reusable at once
    body = Collect()
    response.deliverBody(body)
    assert body.data == [] and body.reason is not None and body.reason.check(ResponseDone)


@pytest.mark.parametrize("status", [b"304 Not Modified", b"204 No Content"])
def test_an_answer_without_body_frees_the_connection(status: bytes) -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k", FIELDS)
    endpoint.wires[0].answer(b"HTTP/1.1 " + status + b'\r\nETag: "e"\r\n\r\n')
    response = head_of(d)
    assert response.length == 0
    assert pool.idle == 1


def test_the_consumer_pauses_and_resumes_the_upstream_socket() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k", FIELDS)
    wire = endpoint.wires[0]
    wire.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
    response = head_of(d)
    body = Collect()
    response.deliverBody(body)
    assert body.transport is response
    response.pauseProducing()
    assert wire.producerState == "paused"
    response.resumeProducing()
    assert wire.producerState == "producing"
    response.pauseProducing()
    wire.answer(b"cd")
    # a paused socket is resumed before the connection waits in the pool
    assert wire.producerState == "producing" and pool.idle == 1
    response.pauseProducing()  # after the end: no effect on a pooled connection
    assert wire.producerState == "producing"


def test_stopping_the_body_aborts_the_connection() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k", FIELDS)
    wire = endpoint.wires[0]
    wire.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nab")
    response = head_of(d)
    body = Collect()
    response.deliverBody(body)
    response.stopProducing()
    assert wire.aborted
    assert body.reason is not None and body.reason.check(ResponseFailed)
    assert pool.idle == 0
    pool.request(b"GET", b"/b/k", FIELDS)
    assert len(endpoint.wires) == 2


def test_cancelling_before_the_head_aborts_the_connection() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k", FIELDS)
    d.cancel()
    assert failure_of(d).check(CancelledError)
    assert endpoint.wires[0].aborted and pool.idle == 0


def test_cancelling_while_connecting_cancels_the_attempt() -> None:
    clock = Clock()
    endpoint = FakeEndpoint(immediate=False)
    pool = ConnectionPool(clock, endpoint, 4)
    d = pool.request(b"GET", b"/b/k", FIELDS)
    d.cancel()
    assert endpoint.cancelled == 1
    assert failure_of(d).check(CancelledError)


def test_a_connection_lost_before_the_head_fails_the_request() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k", FIELDS)
    endpoint.wires[0].answer(b"HTTP/1.1 200 OK\r\nContent-")
    endpoint.wires[0].closed_by_peer()
    assert failure_of(d).check(ResponseNeverReceived)


def test_garbage_from_s3_fails_the_request_and_drops_the_connection() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"GET", b"/b/k", FIELDS)
    endpoint.wires[0].answer(b"SMTP ready\r\n\r\n")
    assert failure_of(d).check(ResponseFailed)
    assert endpoint.wires[0].aborted and pool.idle == 0


def test_bytes_on_an_idle_connection_drop_it() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    d = pool.request(b"HEAD", b"/b/k", FIELDS)
    endpoint.wires[0].answer(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    head_of(d)
    assert pool.idle == 1
    endpoint.wires[0].answer(b"HTTP/1.1 200 OK\r\n")
    assert endpoint.wires[0].aborted and pool.idle == 0


def test_a_body_is_written_after_its_length() -> None:
    from yatagarasu.http.outgoing import BytesBody

    pool, endpoint, _ = pool_and_endpoint()
    pool.request(b"PUT", b"/b/k", FIELDS, BytesBody(b"payload"))
    assert endpoint.wires[0].value() == (
        b"PUT /b/k HTTP/1.1\r\nHost: s3.test\r\nContent-Length: 7\r\n\r\npayload"
    )


def test_an_aborted_stream_leaves_no_reference_cycle() -> None:
    """Everything of an aborted exchange is freed by reference counting alone."""
    pool, endpoint, _ = pool_and_endpoint()
    warm = pool.request(b"GET", b"/b/k", FIELDS)  # the connection itself lives on in the pool
    endpoint.wires[0].answer(OK_HEAD + b"12345")
    head_of(warm).deliverBody(Collect())
    del warm
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            d = pool.request(b"GET", b"/b/k", FIELDS)
            wire = endpoint.wires[-1]
            wire.answer(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"x" * 1000)
            response = head_of(d)
            body = Collect()
            response.deliverBody(body)
            response.pauseProducing()
            response.stopProducing()
            assert body.reason is not None and body.reason.check(ResponseFailed)
            body.reason = None  # the failure is ours to drop
            del d, response, body, wire
        endpoint.wires.clear()
        assert pool.idle == 0
        gc.set_debug(gc.DEBUG_SAVEALL)
        found = gc.collect()
        garbage = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert found == 0, garbage


def test_a_cancelled_request_leaves_no_reference_cycle() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            d = pool.request(b"GET", b"/b/k", FIELDS)
            d.cancel()
            d.addErrback(lambda f: f.trap(CancelledError))
            del d
        endpoint.wires.clear()
        gc.set_debug(gc.DEBUG_SAVEALL)
        found = gc.collect()
        garbage = [type(o).__name__ for o in gc.garbage]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert found == 0, garbage


def test_wire_is_the_protocols_transport() -> None:
    pool, endpoint, _ = pool_and_endpoint()
    pool.request(b"GET", b"/b/k", FIELDS)
    assert isinstance(endpoint.wires[0], Wire)
    assert endpoint.wires[0].protocol.transport is endpoint.wires[0]
