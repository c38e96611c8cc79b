"""
Freshness (yatagarasu.http.freshness): what is stored, for how long, revalidation and stale-if-
error.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet.error import ConnectionRefusedError

from tests.unit.cache_harness import cached, fetch, obj
from tests.unit.fakes import FakeResponse, bucket_entry, parse_response


@pytest.mark.parametrize("directive", ["no-store", "private", "private, max-age=60"])
def test_uncacheable_responses_bypass(directive: str) -> None:
    h = cached()
    first = fetch(h, "/pub/a.txt", answer=obj(**{"Cache-Control": directive}))
    assert first.header("x-cache") == "BYPASS"
    assert first.body == b"hello world"
    fetch(h, "/pub/a.txt", answer=obj())


def test_expiry_revalidates_with_conditional_request() -> None:
    h = cached()
    fetch(h, "/pub/a.txt", answer=obj(**{"Cache-Control": "max-age=10"}))
    h.clock.advance(11)
    _, transport = h.get("/pub/a.txt")
    conditional = h.agents["pub"].sent[-1].headers
    assert conditional.getRawHeaders(b"if-none-match") == [b'"v1"']
    assert conditional.getRawHeaders(b"if-modified-since") is not None
    h.agents["pub"].answer(
        FakeResponse(304, {"ETag": '"v1"', "Cache-Control": "max-age=10"}, body=b"")
    )
    response = parse_response(transport.value())
    assert (response.status, response.body, response.header("x-cache")) == (
        200,
        b"hello world",
        "REVALIDATED",
    )
    assert fetch(h, "/pub/a.txt").header("x-cache") == "HIT"  # fresh again
    h.clock.advance(11)
    replaced = fetch(h, "/pub/a.txt", answer=obj(b"new version", ETag='"v2"'))
    assert (replaced.body, replaced.header("x-cache")) == (b"new version", "MISS")
    assert fetch(h, "/pub/a.txt").body == b"new version"


def test_no_cache_is_stored_but_always_revalidated() -> None:
    h = cached()
    fetch(h, "/pub/a.txt", answer=obj(**{"Cache-Control": "no-cache"}))
    _, transport = h.get("/pub/a.txt")
    assert h.agents["pub"].sent[-1].headers.getRawHeaders(b"if-none-match") == [b'"v1"']
    h.agents["pub"].answer(FakeResponse(304, {"ETag": '"v1"'}, body=b""))
    assert parse_response(transport.value()).header("x-cache") == "REVALIDATED"


def test_ttl_precedence() -> None:
    h = cached(bucket_entry(cache={"ttl_seconds": 100}))
    fetch(h, "/pub/a", answer=obj())  # no max-age: the bucket's ttl
    fetch(h, "/pub/b", answer=obj(**{"Cache-Control": "max-age=10, s-maxage=1000"}))
    h.clock.advance(150)  # past a's ttl (100), within its retention (2 x ttl)
    assert fetch(h, "/pub/b").header("x-cache") == "HIT"
    h.get("/pub/a")
    assert h.agents["pub"].sent[-1].headers.getRawHeaders(b"if-none-match") == [b'"v1"']


def test_stale_if_error() -> None:
    h = cached(stale_if_error_seconds=60)
    fetch(h, "/pub/a.txt", answer=obj(**{"Cache-Control": "max-age=10"}))
    h.clock.advance(30)
    _, transport = h.get("/pub/a.txt")
    h.agents["pub"].fail(ConnectionRefusedError())
    response = parse_response(transport.value())
    assert (response.status, response.header("x-cache"), response.body) == (
        200,
        "STALE",
        b"hello world",
    )
    h.clock.advance(100)  # past expiry + 60
    _, transport = h.get("/pub/a.txt")
    h.agents["pub"].fail(ConnectionRefusedError())
    assert parse_response(transport.value()).status == 502


def test_deleted_object_is_dropped_on_revalidation() -> None:
    h = cached()
    fetch(h, "/pub/a.txt", answer=obj(**{"Cache-Control": "max-age=1"}))
    h.clock.advance(2)
    gone = fetch(
        h, "/pub/a.txt", answer=FakeResponse(404, {}, body=b"<Error><Code>NoSuchKey</Code></Error>")
    )
    assert gone.status == 404
    assert json.loads(gone.body)["s3_code"] == "NoSuchKey"
    fetch(h, "/pub/a.txt", answer=obj())
