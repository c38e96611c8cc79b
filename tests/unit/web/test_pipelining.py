"""
The channel's request handling around llhttp: pipelined requests wait for the answer in
progress, bodies and heads split anywhere, errors behind a request in progress, the idle
timeout, and the back-pressure on a client that pipelines without reading.
"""

from __future__ import annotations

import json
import re

from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from tests.unit.fakes import FakeResponse, Parsed, bucket_entry, parse_response
from tests.unit.web.bucket_harness import harness

GET = b"GET /pub/%s HTTP/1.1\r\nHost: p\r\n\r\n"


def responses(raw: bytes) -> list[Parsed]:
    """Split the bytes of consecutive responses (each with a Content-Length)."""
    found: list[Parsed] = []
    for _ in range(100):  # bounded
        if not raw:
            break
        head, _, rest = raw.partition(b"\r\n\r\n")
        length = re.search(rb"(?im)^content-length: *(\d+)", head)
        size = int(length.group(1)) if length else len(rest)
        found.append(parse_response(head + b"\r\n\r\n" + rest[:size]))
        raw = rest[size:]
    return found


def test_a_pipelined_request_waits_for_the_response_in_progress() -> None:
    h = harness()
    _, transport = h.send(GET % b"a" + GET % b"b")
    agent = h.agents["pub"]
    assert len(agent.sent) == 1  # b is parsed but not started while a is answered
    agent.answer(FakeResponse(200, {"Content-Length": "1"}, body=b"A"))
    assert len(agent.sent) == 2
    agent.answer(FakeResponse(200, {"Content-Length": "1"}, body=b"B"))
    assert [(r.status, r.body) for r in responses(transport.value())] == [(200, b"A"), (200, b"B")]
    assert not transport.disconnecting


def test_heads_and_bodies_split_anywhere_are_served() -> None:
    h = harness()
    raw = (
        b"GET /pub/a HTTP/1.1\r\nHost: p\r\nContent-Length: 5\r\n\r\nhello"
        + b"GET /pub/b HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n"
        + b"3\r\nabc\r\n0\r\n\r\n"
        + GET % b"c"
    )
    channel, transport = h.connect()
    for i in range(len(raw)):  # one byte per read
        channel.dataReceived(raw[i : i + 1])
    agent = h.agents["pub"]
    for name in (b"A", b"B", b"C"):
        agent.answer(FakeResponse(200, {"Content-Length": "1"}, body=name))
    got = [(r.status, r.body) for r in responses(transport.value())]
    assert got == [(200, b"A"), (200, b"B"), (200, b"C")]
    assert [s.uri.rsplit(b"/", 1)[1] for s in agent.sent] == [b"a", b"b", b"c"]


def test_a_request_after_a_chunked_body_in_the_same_read_is_served() -> None:
    h = harness()
    raw = b"GET /pub/a HTTP/1.1\r\nHost: p\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    _, transport = h.send(raw + GET % b"b")
    agent = h.agents["pub"]
    agent.answer(FakeResponse(200, {"Content-Length": "1"}, body=b"A"))
    agent.answer(FakeResponse(200, {"Content-Length": "1"}, body=b"B"))
    assert [r.body for r in responses(transport.value())] == [b"A", b"B"]


def test_an_upgrade_request_is_served_as_a_plain_one_and_the_connection_goes_on() -> None:
    h = harness()
    upgrade = (
        b"GET /health HTTP/1.1\r\nHost: p\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
    )
    _, transport = h.send(upgrade + b"GET /health HTTP/1.1\r\nHost: p\r\n\r\n")
    assert [r.status for r in responses(transport.value())] == [200, 200]
    assert not transport.disconnecting


def test_a_malformed_request_behind_one_in_progress_is_answered_after_it() -> None:
    h = harness()
    _, transport = h.send(GET % b"a" + b"GET /pub/b HTTP/1.1\r\nBad Header\r\n\r\n")
    assert transport.value() == b""  # nothing is written into the response in progress
    h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "1"}, body=b"A"))
    first, second = responses(transport.value())
    assert (first.status, first.body) == (200, b"A")
    assert second.status == 400
    assert json.loads(second.body)["status"] == 400
    assert transport.disconnecting
    assert len(h.agents["pub"].sent) == 1


def test_a_head_too_large_behind_one_in_progress_is_answered_after_it() -> None:
    h = harness(server={"security_limits": {"max_header_size": 100}})
    big = b"GET /pub/b HTTP/1.1\r\nX-Big: " + b"b" * 200  # incomplete and already too large
    _, transport = h.send(GET % b"a" + big)
    assert transport.value() == b""
    h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "1"}, body=b"A"))
    assert [r.status for r in responses(transport.value())] == [200, 431]


def test_nothing_after_a_connection_close_request_is_served() -> None:
    h = harness()
    close = b"GET /pub/a HTTP/1.1\r\nHost: p\r\nConnection: close\r\n\r\n"
    _, transport = h.send(close + GET % b"b")
    h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "1"}, body=b"A"))
    [only] = responses(transport.value())
    assert (only.body, only.header("connection")) == (b"A", "close")
    assert transport.disconnecting
    assert len(h.agents["pub"].sent) == 1


def test_a_client_pipelining_without_reading_is_paused_until_the_answer() -> None:
    h = harness()
    channel, transport = h.send(GET % b"a")
    for i in range(600):  # ~20 KiB of pipelined requests, more than the 16 KiB read ahead
        channel.dataReceived(GET % b"b%d" % i)
    assert transport.producerState == "paused"
    h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "1"}, body=b"A"))
    assert transport.producerState == "producing"
    assert len(h.agents["pub"].sent) == 2  # the next one started; the others wait their turn
    channel.connectionLost(Failure(ConnectionDone()))


def test_reading_is_resumed_only_where_it_was_paused() -> None:
    # twisted.web resumes the transport after every request: five calls for nothing when
    # reading was never paused
    h = harness()
    channel, transport = h.connect()
    resumed: list[str] = []
    resume = transport.resumeProducing

    def counted() -> None:
        resumed.append(transport.producerState)
        resume()

    transport.resumeProducing = counted  # type: ignore[method-assign]
    for name in (b"a", b"b", b"c"):
        channel.dataReceived(GET % name)
        h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "1"}, body=b"x"))
    assert [r.status for r in responses(transport.value())] == [200, 200, 200]
    assert resumed == []
    for i in range(600):  # pipelined past the read-ahead: paused, then resumed once
        channel.dataReceived(GET % b"p%d" % i)
    h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "1"}, body=b"x"))
    assert resumed == ["paused"] and transport.producerState == "producing"
    channel.connectionLost(Failure(ConnectionDone()))


def test_the_idle_timeout_waits_for_the_response_then_counts_from_its_end() -> None:
    h = harness(bucket_entry(s3={"timeout": 600}))  # the client's idle timeout: 60 s
    channel, transport = h.send(GET % b"a")
    for _ in range(3):  # a slow answer (150 s): no idle timeout while it is made
        h.clock.advance(50)
    assert not transport.disconnecting
    h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "1"}, body=b"A"))
    h.clock.advance(59)
    assert not transport.disconnecting
    h.clock.advance(2)
    assert transport.disconnecting
    channel.connectionLost(Failure(ConnectionDone()))


def test_100_continue_is_sent_before_the_response() -> None:
    h = harness()
    head = b"GET /pub/a HTTP/1.1\r\nHost: p\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    channel, transport = h.send(head)
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    channel.dataReceived(b"ok")
    h.agents["pub"].answer(FakeResponse(200, {"Content-Length": "1"}, body=b"A"))
    final = parse_response(transport.value()[len(b"HTTP/1.1 100 Continue\r\n\r\n") :])
    assert (final.status, final.body) == (200, b"A")


def test_cookies_are_parsed_for_plugins() -> None:
    h = harness()
    channel, _ = h.send(b"GET /pub/a HTTP/1.1\r\nHost: p\r\nCookie: a=1; b=2\r\n\r\n")
    assert channel.requests[0].received_cookies == {b"a": b"1", b"b": b"2"}
