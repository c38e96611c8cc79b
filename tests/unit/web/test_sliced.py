"""Sliced caching (yatagarasu.web.sliced) through the Site, a fake S3 and a fake clock."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from tests.unit.cache_harness import OBJECT, cached, fetch
from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from tests.unit.web.test_admin_cache import admin_header
from yatagarasu.cache.slicing import manifest_of
from yatagarasu.values import CacheKey, MappedBody
from yatagarasu.web.sliced import PacedWriter
from yatagarasu.web.streaming import ClientStalled

#: 1 KiB slices, objects above 1 KiB sliced
SLICE = 1024
SLICING = {"slice_size_mb": SLICE / 1024 / 1024, "slice_threshold_mb": SLICE / 1024 / 1024}
BODY = bytes(random.Random(13).randrange(256) for _ in range(3000))
NEW_BODY = bytes(random.Random(14).randrange(256) for _ in range(3000))


def sliced() -> Harness:
    return cached(bucket_entry(cache=SLICING))


def part(body: bytes, first: int, last: int, etag: str = '"v1"') -> FakeResponse:
    """S3's 206 for bytes first..last (clamped like S3) of ``body``."""
    last = min(last, len(body) - 1)
    headers = {**OBJECT, "ETag": etag, "Content-Range": f"bytes {first}-{last}/{len(body)}"}
    return FakeResponse(206, headers, body=body[first : last + 1])


def ranges_sent(h: Harness) -> list[list[bytes] | None]:
    return [s.headers.getRawHeaders(b"range") for s in h.agents["pub"].sent]


def slice_keys(h: Harness) -> list[CacheKey]:
    cache = h.assembly.caching.cache
    assert cache is not None
    memory: Any = cache.layers[0]
    return [CacheKey(*n.ikey) for n in memory._nodes.values() if n.ikey[2]]


def test_full_get_is_cut_into_slices_then_ranges_and_full_gets_hit() -> None:
    h = sliced()
    first = fetch(h, "/pub/big.bin", answer=FakeResponse(200, OBJECT, body=BODY))
    assert (first.status, first.header("x-cache"), first.body) == (200, "MISS", BODY)
    assert ranges_sent(h) == [None]
    assert len(slice_keys(h)) == 3
    ranged = fetch(h, "/pub/big.bin", "Range: bytes=1000-2100")
    assert (ranged.status, ranged.body) == (206, BODY[1000:2101])
    assert ranged.header("content-range") == "bytes 1000-2100/3000"
    assert ranged.header("content-length") == "1101"
    assert (ranged.header("etag"), ranged.header("x-cache")) == ('"v1"', "HIT")
    assert ranged.header("accept-ranges") == "bytes"
    assert ranged.header("x-yatagarasu-slices") is None
    whole = fetch(h, "/pub/big.bin")
    assert (whole.status, whole.body, whole.header("content-length")) == (200, BODY, "3000")
    assert whole.header("last-modified") == OBJECT["Last-Modified"]
    assert fetch(h, "/pub/big.bin", 'If-None-Match: "v1"').status == 304
    assert fetch(h, "/pub/big.bin", 'If-Match: "other"').status == 412
    assert fetch(h, "/pub/big.bin", "Range: bytes=5000-").status == 416
    head = fetch(h, "/pub/big.bin", method="HEAD")
    assert (head.status, head.body, head.header("content-length")) == (200, b"", "3000")
    assert len(h.agents["pub"].sent) == 1


def test_range_miss_fetches_the_slices_it_touches_once_each() -> None:
    h = sliced()
    first = fetch(h, "/pub/big.bin", "Range: bytes=1500-1600", answer=part(BODY, 1024, 2047))
    assert (first.status, first.body, first.header("x-cache")) == (206, BODY[1500:1601], "MISS")
    assert ranges_sent(h) == [[b"bytes=1024-2047"]]
    # 100-1100 needs slice 0 (fetched now) and slice 1 (cached)
    second = fetch(h, "/pub/big.bin", "Range: bytes=100-1100", answer=part(BODY, 0, 1023))
    assert (second.status, second.body) == (206, BODY[100:1101])
    assert ranges_sent(h)[1] == [b"bytes=0-1023"]
    # the last slice is short (3000 = 2 * 1024 + 952)
    third = fetch(h, "/pub/big.bin", "Range: bytes=-10", answer=part(BODY, 2048, 2999))
    assert (third.status, third.body) == (206, BODY[-10:])
    assert ranges_sent(h)[2] == [b"bytes=2048-2999"]
    assert fetch(h, "/pub/big.bin").body == BODY
    assert len(h.agents["pub"].sent) == 3


def test_concurrent_requests_for_a_missing_slice_share_one_fetch() -> None:
    h = sliced()
    fetch(h, "/pub/big.bin", "Range: bytes=0-10", answer=part(BODY, 0, 1023))
    transports = [h.get("/pub/big.bin", "Range: bytes=2000-2999")[1] for _ in range(5)]
    # slice 1 (1024-2047) first, then slice 2: each fetched once for the five requests
    assert ranges_sent(h)[1:] == [[b"bytes=1024-2047"]]
    h.agents["pub"].answer(part(BODY, 1024, 2047))
    assert ranges_sent(h)[2:] == [[b"bytes=2048-2999"]]
    h.agents["pub"].answer(part(BODY, 2048, 2999))
    responses = [parse_response(t.value()) for t in transports]
    assert {(r.status, r.body) for r in responses} == {(206, BODY[2000:3000])}
    assert len(h.agents["pub"].sent) == 3


def test_a_changed_object_before_the_first_byte_starts_over_on_the_new_version() -> None:
    h = sliced()
    fetch(h, "/pub/big.bin", "Range: bytes=1100-1200", answer=part(BODY, 1024, 2047))
    # S3 now has another version: the fetch of slice 0 says so
    changed = fetch(h, "/pub/big.bin", "Range: bytes=0-99", answer=part(NEW_BODY, 0, 1023, '"v2"'))
    assert (changed.status, changed.body, changed.header("etag")) == (206, NEW_BODY[:100], '"v2"')
    # the old version's slice 1 is gone: it is fetched again, from the new version
    again = fetch(
        h, "/pub/big.bin", "Range: bytes=1100-1200", answer=part(NEW_BODY, 1024, 2047, '"v2"')
    )
    assert again.body == NEW_BODY[1100:1201]
    cache = h.assembly.caching.cache
    assert cache is not None
    manifest = manifest_of(cache.layers[0].lookup(CacheKey("pub", "big.bin")))
    assert manifest is not None and manifest.etag == b'"v2"'
    assert all(k in set(manifest.keys(CacheKey("pub", "big.bin"))) for k in slice_keys(h))


def test_a_changed_object_after_bytes_were_sent_aborts_the_connection() -> None:
    h = sliced()
    fetch(h, "/pub/big.bin", "Range: bytes=0-10", answer=part(BODY, 0, 1023))
    _, transport = h.get("/pub/big.bin")  # slice 0 is sent from the cache at once
    assert transport.value().endswith(BODY[:1024])
    h.agents["pub"].answer(part(NEW_BODY, 1024, 2047, '"v2"'))
    assert transport.disconnected  # StringTransport's mark of abortConnection
    assert NEW_BODY[1024:2048] not in transport.value()


def test_a_gone_object_drops_its_slices_and_answers_404() -> None:
    h = sliced()
    fetch(h, "/pub/big.bin", "Range: bytes=0-10", answer=part(BODY, 0, 1023))
    gone = fetch(
        h,
        "/pub/big.bin",
        "Range: bytes=1100-1200",
        answer=FakeResponse(404, {"Content-Type": "application/xml"}, body=b"<Error/>"),
    )
    assert gone.status == 404
    assert slice_keys(h) == []


def test_purge_by_key_removes_every_slice_and_stats_count_them() -> None:
    h = sliced()
    fetch(h, "/pub/big.bin", answer=FakeResponse(200, OBJECT, body=BODY))
    fetch(h, "/pub/big.bin", "Range: bytes=0-2999")

    def admin(method: str, path: str) -> Any:
        _, transport = h.get(path, admin_header(), method=method)
        response = parse_response(transport.value())
        return response.status, json.loads(response.body)

    status, stats = admin("GET", "/admin/cache/stats/pub")
    assert status == 200
    assert stats["data"]["slices"] == {"hits": 3, "misses": 0}
    assert stats["data"]["current_item_count"] == 4  # the manifest and three slices
    assert admin("POST", "/admin/cache/purge/pub/big.bin")[1]["deleted"] is True
    assert slice_keys(h) == []
    assert admin("GET", "/admin/cache/stats")[1]["data"]["current_item_count"] == 0
    fetch(h, "/pub/big.bin", answer=FakeResponse(200, OBJECT, body=BODY))  # a miss again


def test_small_objects_are_not_sliced() -> None:
    h = sliced()
    small = fetch(h, "/pub/a.txt", answer=FakeResponse(200, OBJECT, body=b"x" * 1024))
    assert small.header("x-cache") == "MISS"
    assert slice_keys(h) == []
    assert fetch(h, "/pub/a.txt").header("x-cache") == "HIT"


CHUNK = PacedWriter.CHUNK


class _FakeRequest:
    """What PacedWriter needs of a request."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        self.channel = SimpleNamespace(transport=None)
        self._disconnected = False

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_paced_writer_waits_while_paused_and_gives_up_on_a_stalled_client() -> None:
    clock = Clock()
    request: Any = _FakeRequest()
    writer = PacedWriter(request, clock, 5.0)
    writer.pauseProducing()
    done = Deferred.fromCoroutine(writer.write(b"a" * (CHUNK * 3), 0, CHUNK * 3))
    assert len(request.written) == 1 and not done.called
    writer.resumeProducing()
    assert len(request.written) == 3 and done.called
    writer.pauseProducing()
    stalled = Deferred.fromCoroutine(writer.write(b"b" * (CHUNK * 2), 0, CHUNK * 2))
    clock.advance(4.9)
    assert not stalled.called
    clock.advance(0.2)
    failures: list[Any] = []
    stalled.addErrback(failures.append)
    assert failures and failures[0].check(ClientStalled)
    writer.stopProducing()
    gone = Deferred.fromCoroutine(writer.write(b"c", 0, 1))
    gone.addErrback(failures.append)
    assert failures[-1].check(CancelledError)
    writer.close()
    assert request.producer is None


def test_paced_writer_reads_a_memory_file_one_chunk_at_a_time() -> None:
    clock = Clock()
    request: Any = _FakeRequest()
    writer = PacedWriter(request, clock, 5.0)
    data = bytes(range(256)) * (CHUNK // 128)  # two chunks
    body = MappedBody(data + b"tail")
    writer.pauseProducing()
    end = len(data) + 3  # into the tail: the file is read past the chunks of ``data``
    done = Deferred.fromCoroutine(writer.write(body, 10, end))
    assert request.written == [data[10 : 10 + CHUNK]] and not done.called
    writer.resumeProducing()
    assert done.called
    assert [len(chunk) for chunk in request.written] == [CHUNK, end - 10 - CHUNK]
    assert b"".join(request.written) == (data + b"tail")[10:end]
    writer.close()


def test_paced_writer_cancelled_while_paused_closes_cleanly() -> None:
    clock = Clock()
    request: Any = _FakeRequest()
    writer = PacedWriter(request, clock, 5.0)
    writer.pauseProducing()
    waiting = Deferred.fromCoroutine(writer.write(b"a" * (CHUNK * 2), 0, CHUNK * 2))
    failures: list[Any] = []
    waiting.addErrback(failures.append)
    waiting.cancel()  # the client went away: the resource cancels its work
    assert failures and failures[0].check(CancelledError)
    writer.close()
    writer.resumeProducing()
    clock.advance(10)  # the send timer was cancelled: nothing is aborted later
    assert request.producer is None and clock.getDelayedCalls() == []


def test_paced_writer_of_a_gone_client_drops_its_request_link() -> None:
    clock = Clock()
    request: Any = _FakeRequest()
    writer = PacedWriter(request, clock, 5.0)
    request.channel = None  # what twisted.web does when the client's connection is lost
    writer.stopProducing()
    writer.close()
    assert request.producer is None  # no request <-> writer reference cycle left


class _FullSocket(StringTransport):
    """A client transport whose buffer is "full" once ``limit`` bytes were written."""

    def __init__(self, limit: int) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
        self.limit = limit
        self.channel: Any = None

    def write(self, data: bytes) -> None:
        super().write(data)
        if len(self.value()) >= self.limit and self.channel is not None:
            self.channel.pauseProducing()  # what a real transport does when it is full


def test_a_full_get_takes_the_next_slice_only_when_the_client_resumes() -> None:
    h = sliced()
    fetch(h, "/pub/big.bin", "Range: bytes=0-10", answer=part(BODY, 0, 1023))
    channel = h.site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
    transport = _FullSocket(limit=512)
    channel.makeConnection(transport)
    transport.channel = channel
    channel.dataReceived(b"GET /pub/big.bin HTTP/1.1\r\nHost: proxy\r\n\r\n")
    assert transport.value().endswith(BODY[:1024])
    assert len(h.agents["pub"].sent) == 1  # slice 1 is not fetched while the client is full
    transport.limit = 10**9
    channel.resumeProducing()  # the client read: its buffer drained
    assert ranges_sent(h)[1:] == [[b"bytes=1024-2047"]]
    h.agents["pub"].answer(part(BODY, 1024, 2047))
    h.agents["pub"].answer(part(BODY, 2048, 2999))
    assert parse_response(transport.value()).body == BODY


def test_a_slice_fetch_answered_with_the_whole_object_is_refused_unread() -> None:
    h = sliced()
    fetch(h, "/pub/big.bin", "Range: bytes=0-10", answer=part(BODY, 0, 1023))
    refused = fetch(
        h, "/pub/big.bin", "Range: bytes=1100-1200", answer=FakeResponse(200, OBJECT, body=BODY)
    )
    assert refused.status == 502
    assert json.loads(refused.body)["message"] == "S3 answered 200 to a slice's ranged GET"


def test_a_slice_fetch_answered_416_drops_the_manifest_and_serves_the_request_anew() -> None:
    h = sliced()
    fetch(h, "/pub/big.bin", "Range: bytes=0-10", answer=part(BODY, 0, 1023))
    # the object shrank to 1500 bytes: slice 2 (2048-2999) is past its end
    too_far = FakeResponse(416, {"Content-Type": "application/xml"}, body=b"<Error/>")
    _, transport = h.get("/pub/big.bin", "Range: bytes=2100-2200")
    h.agents["pub"].answer(too_far)
    assert slice_keys(h) == []  # the manifest and its slices were dropped
    assert ranges_sent(h)[1:] == [[b"bytes=2048-2999"], [b"bytes=2048-3071"]]  # then a probe
    h.agents["pub"].answer(too_far)
    response = parse_response(transport.value())
    assert response.status == 416
    assert (
        fetch(h, "/pub/big.bin", "Range: bytes=5-9", answer=part(BODY[:1500], 0, 1023)).body
        == (BODY[5:10])
    )


def test_a_no_store_object_is_never_sliced() -> None:
    h = sliced()
    private = part(BODY, 1024, 2047)
    private.headers.setRawHeaders(b"cache-control", [b"no-store"])
    first = fetch(h, "/pub/big.bin", "Range: bytes=1100-1200", answer=private)
    assert (first.status, first.body, first.header("x-cache")) == (206, BODY[1100:1201], "BYPASS")
    assert slice_keys(h) == [] and len(list(h.assembly.caching.cache.layers[0]._nodes)) == 0
