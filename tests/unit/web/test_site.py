"""The site (yatagarasu.web.site) tracks connections, closes idle ones, aborts what is left."""

from __future__ import annotations

from typing import Any

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, lose, parse_response

OBJECT_HEADERS = {"Content-Type": "application/octet-stream", "Content-Length": "4"}


def harness(**server: Any) -> Harness:
    return Harness({"buckets": [bucket_entry()], "server": server})


def test_connections_are_tracked_until_connection_lost() -> None:
    h = harness()
    first, _ = h.connect()
    second, _ = h.connect()
    assert h.site.connection_count == 2
    closed = h.site.wait_closed()
    lose(first)
    assert (h.site.connection_count, closed.called) == (1, False)
    lose(second)
    assert (h.site.connection_count, closed.called) == (0, True)
    assert h.site.wait_closed().called


def test_idle_connections_close_at_once_busy_ones_after_their_response() -> None:
    h = harness()
    idle, idle_transport = h.get("/health")
    assert parse_response(idle_transport.value()).status == 200
    assert not idle_transport.disconnecting  # kept alive
    busy, busy_transport = h.get("/pub/k")  # the upstream has not answered yet
    unused, unused_transport = h.connect()  # accepted, no request sent
    assert h.site.close_connections() == 2
    assert idle_transport.disconnecting and unused_transport.disconnecting
    assert not busy_transport.disconnecting
    assert h.site.close_connections() == 2  # again (after the listener stopped): harmless
    h.agents["pub"].answer(FakeResponse(200, OBJECT_HEADERS, body=b"data"))
    assert parse_response(busy_transport.value()).body == b"data"
    assert busy_transport.disconnecting  # closes after the last byte, not kept alive
    closed = h.site.wait_closed()
    for channel in (idle, busy):
        lose(channel)
    assert not closed.called  # the last connection still holds bytes: not done yet
    lose(unused)
    assert closed.called


def test_abort_connections_drops_what_is_left() -> None:
    h = harness()
    busy, transport = h.get("/pub/slow")
    h.connect()
    assert h.site.active_count == 1
    assert h.site.abort_connections() == 2
    assert transport.disconnected
    lose(busy)
    assert (h.site.active_count, h.site.connection_count) == (0, 1)
