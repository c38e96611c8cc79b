"""HTTP caching semantics through the Site, with the memory layer, a fake S3 and a fake clock."""

from __future__ import annotations

import json

from twisted.internet.error import ConnectionRefusedError

from tests.unit.cache_harness import OBJECT, cached, fetch, obj
from tests.unit.fakes import FakeResponse, bucket_entry, parse_response


def test_miss_then_hit_without_upstream() -> None:
    h = cached()
    first = fetch(h, "/pub/a.txt", answer=obj(**{"Cache-Control": "max-age=60"}))
    assert (first.status, first.body, first.header("x-cache")) == (200, b"hello world", "MISS")
    h.clock.advance(5)
    second = fetch(h, "/pub/a.txt")
    assert (second.status, second.body, second.header("x-cache")) == (200, b"hello world", "HIT")
    assert second.header("age") == "5"
    assert second.header("etag") == '"v1"'
    assert second.header("content-length") == "11"
    assert second.header("x-amz-request-id") is None
    assert len(h.agents["pub"].sent) == 1
    assert h.agents["pub"].sent[0].headers.getRawHeaders(b"range") is None


def test_head_from_cache_and_head_miss_stores_nothing() -> None:
    h = cached()
    head = fetch(
        h,
        "/pub/a.txt",
        method="HEAD",
        answer=FakeResponse(200, {**OBJECT, "Content-Length": "11"}, body=b""),
    )
    assert head.header("x-cache") == "MISS"
    fetch(h, "/pub/a.txt", answer=obj())  # the HEAD stored nothing
    cached_head = fetch(h, "/pub/a.txt", method="HEAD")
    assert (cached_head.status, cached_head.body) == (200, b"")
    assert cached_head.header("content-length") == "11"
    assert cached_head.header("x-cache") == "HIT"


def test_large_objects_bypass_with_bucket_override() -> None:
    h = cached(bucket_entry(cache={"max_item_size_mb": 0.0001, "slice_size_mb": 0}))
    big = b"x" * 200
    first = fetch(h, "/pub/big", answer=obj(big))
    assert (first.header("x-cache"), first.body) == ("BYPASS", big)
    fetch(h, "/pub/big", answer=obj(big))


def test_coalescing_concurrent_misses() -> None:
    h = cached()
    transports = [h.get("/pub/hot.txt")[1] for _ in range(20)]
    assert len(h.agents["pub"].sent) == 1
    h.agents["pub"].answer(obj(b"hot bytes"))
    responses = [parse_response(t.value()) for t in transports]
    assert {(r.status, r.body) for r in responses} == {(200, b"hot bytes")}
    assert len(h.agents["pub"].sent) == 1


def test_coalescing_leader_failure_fails_followers_cleanly() -> None:
    h = cached()
    transports = [h.get("/pub/hot.txt")[1] for _ in range(5)]
    h.agents["pub"].fail(ConnectionRefusedError())
    responses = [parse_response(t.value()) for t in transports]
    assert {r.status for r in responses} == {502}
    assert all(json.loads(r.body)["status"] == 502 for r in responses)
    assert len(h.agents["pub"].sent) == 1


def test_coalescing_shares_s3_errors() -> None:
    h = cached()
    transports = [h.get("/pub/missing")[1] for _ in range(3)]
    h.agents["pub"].answer(FakeResponse(404, {}, body=b"<Error><Code>NoSuchKey</Code></Error>"))
    assert {parse_response(t.value()).status for t in transports} == {404}


def test_leader_client_leaving_lets_followers_fetch_themselves() -> None:
    h = cached()
    leader_channel, _ = h.get("/pub/hot.txt")
    _, follower = h.get("/pub/hot.txt")
    leader_channel.connectionLost(ConnectionRefusedError())
    assert len(h.agents["pub"].sent) == 2
    h.agents["pub"].answer(obj(b"fresh"), index=1)
    assert parse_response(follower.value()).body == b"fresh"


def test_bucket_can_opt_out() -> None:
    h = cached(bucket_entry("pub", "/pub"), bucket_entry("raw", "/raw", cache={"enabled": False}))
    response = fetch(h, "/raw/a.txt", answer=obj(), bucket="raw")
    assert response.header("x-cache") is None
    fetch(h, "/raw/a.txt", answer=obj(), bucket="raw")


def test_slow_leader_client_does_not_hold_followers_back() -> None:
    h = cached()
    leader, _ = h.get("/pub/hot.txt")
    _, follower = h.get("/pub/hot.txt")
    upstream = FakeResponse(200, OBJECT, length=11)
    h.agents["pub"].answer(upstream)
    leader.pauseProducing()  # the first client stops reading
    assert not upstream.transport.paused  # a cacheable body is read at S3's pace
    upstream.push(b"hello world")
    upstream.end()
    assert parse_response(follower.value()).body == b"hello world"


def test_uncacheable_object_releases_followers_at_once() -> None:
    h = cached()
    _, leader = h.get("/pub/big")
    _, follower = h.get("/pub/big")
    upstream = FakeResponse(200, {**OBJECT, "Cache-Control": "no-store"}, length=5)
    h.agents["pub"].answer(upstream, index=0)
    assert len(h.agents["pub"].sent) == 2  # the follower fetches on its own right away
    h.agents["pub"].answer(FakeResponse(200, OBJECT, body=b"other"), index=1)
    assert parse_response(follower.value()).body == b"other"
    upstream.push(b"12345")
    upstream.end()
    assert parse_response(leader.value()).body == b"12345"
