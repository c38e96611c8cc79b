"""
The pieces that make a memory hit cheap (docs/PERFORMANCE.md "Cache hits"): each one keeps
the behaviour of the general path it shortcuts.
"""

from __future__ import annotations

import abc
import gc
import io
import os
import sys
import typing
from types import CodeType, FrameType
from typing import Any

import jwt as pyjwt
import pytest
from twisted.internet.task import Clock

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from yatagarasu.cache.memory import MAPPED_BODY_MIN, MemoryCacheLayer, MemoryCacheSettings
from yatagarasu.values import CacheEntry, CacheKey, MappedBody

# -- request ids ------------------------------------------------------------------------------


# -- heads ------------------------------------------------------------------------------------


def test_entry_head_lines_are_canonical_sanitised_and_made_once() -> None:
    stored = CacheEntry(
        headers=((b"content-type", b"text/plain"), (b"etag", b'"a\r\nInjected: 1"')),
        body=b"x",
        stored_at=0,
        expires_at=1,
        retain_until=2,
    )
    assert stored.head_lines == b'Content-Type: text/plain\r\nETag: "a Injected: 1"\r\n'
    assert stored.head_lines is stored.head_lines


def test_a_stored_entry_adds_two_objects_to_what_the_cycle_collector_walks() -> None:
    entry = CacheEntry(((b"etag", b'"a"'),), b"x", 0, 1, 2)
    assert not hasattr(entry, "__dict__")  # slots: no dict per entry
    assert gc.is_tracked(entry) and not gc.is_tracked(entry.headers)
    assert not gc.is_tracked(entry._index)  # bytes only
    assert entry.header(b"etag") == b'"a"'
    copy = entry.with_body(b"y")
    assert copy.head_lines is entry.head_lines and copy.body == b"y"
    layer = MemoryCacheLayer(MemoryCacheSettings(max_cache_size_mb=64), Clock())
    gc.collect()
    before = len(gc.get_objects())
    for i in range(2000):
        stored = CacheEntry(((b"etag", b'"%d"' % i),), b"x" * 100, 0, 1, 2)
        assert layer.store(CacheKey("pub", f"k{i}"), stored)
        stored.head_lines  # noqa: B018 (made on a hit, kept with the entry)
    gc.collect()
    # its node and the entry; a __dict__ per entry made full collections a third longer
    assert len(gc.get_objects()) - before <= 2.1 * 2000


def every_header(raw: bytes) -> list[str]:
    head = raw.partition(b"\r\n\r\n")[0].decode("latin-1").split("\r\n")[1:]
    return [line.partition(":")[0].lower() for line in head]


def test_every_kind_of_response_carries_ids_server_and_date_exactly_once() -> None:
    h = Harness({"buckets": [bucket_entry()]})
    _, unknown = h.get("/nowhere")
    _, traversal = h.get("/pub/%2e%2e/x")
    _, health = h.get("/health")
    _, star = h.send(b"OPTIONS * HTTP/1.1\r\nHost: proxy\r\n\r\n")
    _, ok = h.get("/pub/k")
    h.agents["pub"].answer(FakeResponse(200, {"Content-Type": "text/plain"}, body=b"hi"))
    for transport in (unknown, traversal, health, star, ok):
        names = every_header(transport.value())
        for name in ("x-request-id", "x-correlation-id", "server", "date"):
            assert names.count(name) == 1, (name, transport.value())
    assert parse_response(ok.value()).body == b"hi"


def test_raw_backslash_and_nul_are_refused_without_decoding() -> None:
    h = Harness({"buckets": [bucket_entry()]})
    for target in (b"/pub/a\\b", b"/pub/a\x00b", b"/pub/a/../b"):
        _, transport = h.send(b"GET " + target + b" HTTP/1.1\r\nHost: proxy\r\n\r\n")
        assert parse_response(transport.value()).status == 400, target
    assert h.agents["pub"].sent == []


# -- conditionals -----------------------------------------------------------------------------


# -- tiered lookups ---------------------------------------------------------------------------


# -- the whole hit through the Site -----------------------------------------------------------


def test_a_large_memory_hit_is_answered_from_its_memory_file() -> None:
    """Not a TCP transport here (a test's): the file's bytes are written as a copy."""
    h = Harness({"cache": {"enabled": True}, "buckets": [bucket_entry()]})
    body = os.urandom(MAPPED_BODY_MIN + 5)
    h.get("/pub/big")
    h.agents["pub"].answer(FakeResponse(200, {"ETag": '"v1"'}, body=body))
    assert h.assembly.caching.cache is not None
    (layer,) = h.assembly.caching.cache.layers
    assert isinstance(layer, MemoryCacheLayer)
    found = layer.lookup(CacheKey("pub", "big"))
    assert found is not None and isinstance(found.body, MappedBody)
    _, whole = h.get("/pub/big")
    _, ranged = h.get("/pub/big", "Range: bytes=5-9")
    _, head = h.get("/pub/big", method="HEAD")
    got, part, bare = (parse_response(t.value()) for t in (whole, ranged, head))
    assert (got.status, got.body, got.header("x-cache")) == (200, body, "HIT")
    assert got.header("content-length") == str(len(body))
    assert (part.status, part.body) == (206, body[5:10])
    assert (bare.status, bare.body, bare.header("content-length")) == (200, b"", str(len(body)))


def test_a_public_memory_hit_is_answered_within_the_call_that_received_it() -> None:
    h = Harness({"cache": {"enabled": True}, "buckets": [bucket_entry()]})
    h.get("/pub/k")
    h.agents["pub"].answer(FakeResponse(200, {"ETag": '"v1"'}, body=b"body"))
    sent = len(h.agents["pub"].sent)
    _, transport = h.get("/pub/k")  # no clock advance, no agent answer
    response = parse_response(transport.value())
    assert (response.status, response.body, response.header("x-cache")) == (200, b"body", "HIT")
    assert response.header("etag") == '"v1"' and response.header("content-length") == "4"
    assert response.header("accept-ranges") == "bytes" and response.header("age") == "0"
    assert len(h.agents["pub"].sent) == sent
    assert h.site.active_count == 0
    _, head = h.get("/pub/k", method="HEAD")
    parsed = parse_response(head.value())
    assert (parsed.status, parsed.body, parsed.header("content-length")) == (200, b"", "4")


def trace_a_memory_hit(event_wanted: str, **bucket: Any) -> list[tuple[CodeType, Any]]:
    """
    :param bucket: more of the bucket's settings.
    :returns: the code and argument of each ``event_wanted`` (``sys.settrace``) of a hit.
    """
    h = Harness({"cache": {"enabled": True}, "buckets": [bucket_entry(**bucket)]})
    h.get("/pub/k")
    h.agents["pub"].answer(FakeResponse(200, {}, body=b"body"))
    channel, transport = h.connect()
    seen: list[tuple[CodeType, Any]] = []

    def trace(frame: FrameType, event: str, arg: Any) -> Any:
        if event == event_wanted:
            seen.append((frame.f_code, arg))
        return trace

    collecting = gc.isenabled()
    gc.disable()  # no finalizer of an unrelated object runs (and is traced) meanwhile
    sys.settrace(trace)
    try:
        channel.dataReceived(b"GET /pub/k HTTP/1.1\r\nHost: proxy\r\n\r\n")
    finally:
        sys.settrace(None)
        if collecting:
            gc.enable()
    assert parse_response(transport.value()).header("x-cache") == "HIT"
    return seen


def test_a_memory_hit_raises_no_exception_on_its_way() -> None:
    # a raised and caught exception costs more than most steps of a hit (twisted.web's
    # Request.gotLength raised one per request until the site had its getContentFile)
    raised = trace_a_memory_hit("exception")
    assert [(code.co_filename, code.co_name, arg[0].__name__) for code, arg in raised] == []


@pytest.mark.parametrize(
    "bucket", [{}, {"rate_limit": {"requests_per_second": 1000, "burst": 1000}}]
)
def test_a_memory_hit_calls_no_typing_cast_and_no_abstract_class_check(
    bucket: dict[str, Any],
) -> None:
    # each is a Python function call that does nothing for the hit: typing.cast returns its
    # argument; isinstance(x, Deferred) runs ABCMeta.__instancecheck__ (Deferred is an
    # Awaitable); with a rate limit, the limiter's decision is tested as well
    called = {code for code, _ in trace_a_memory_hit("call", **bucket)}
    unwanted = {typing.cast.__code__, abc.ABCMeta.__instancecheck__.__code__}
    assert [code.co_name for code in called & unwanted] == []
    assert len(called) > 50  # the hit itself was traced


def test_a_request_body_goes_to_memory_under_100000_bytes_else_to_a_temporary_file() -> None:
    h = Harness({"buckets": [bucket_entry()]})
    small, unknown, large = (h.site.getContentFile(n) for n in (0, None, 100_000))
    try:
        assert isinstance(small, io.BytesIO)
        for spooled in (unknown, large):
            assert not isinstance(spooled, io.BytesIO) and spooled.fileno() >= 0
    finally:
        for body in (small, unknown, large):
            body.close()


def test_an_authenticated_hit_with_a_known_token_and_the_refusals_around_it() -> None:
    secret = "s" * 64
    rules = [{"claim": "role", "operator": "equals", "value": "reader"}]
    h = Harness(
        {
            "cache": {"enabled": True},
            "buckets": [
                bucket_entry(
                    "hs", "/hs", auth={"enabled": True}, jwt={"secret": secret, "claims": rules}
                )
            ],
        }
    )
    h.clock.advance(1_800_000_000)

    def bearer(role: str) -> str:
        claims = {"sub": "ann", "role": role, "exp": 1_800_000_000 + 3600}
        return f"Authorization: Bearer {pyjwt.encode(claims, secret, algorithm='HS256')}"

    reader, writer = bearer("reader"), bearer("writer")
    h.get("/hs/k", reader)
    h.agents["hs"].answer(FakeResponse(200, {}, body=b"secret-body"))
    for _ in range(2):  # the token is known from the first request on
        _, transport = h.get("/hs/k", reader)
        response = parse_response(transport.value())
        assert (response.status, response.header("x-cache")) == (200, "HIT")
        assert response.body == b"secret-body"
    for _ in range(2):  # valid but refused by the rules, also once it has been verified
        _, transport = h.get("/hs/k", writer)
        assert parse_response(transport.value()).status == 403
    _, transport = h.get("/hs/k")
    assert parse_response(transport.value()).status == 401
    assert len(h.agents["hs"].sent) == 1


def test_a_hit_through_a_signed_link_never_asks_for_a_deferred() -> None:
    signing = {"keys": [{"kid": "k1", "secret": "l" * 32}]}
    auth = {"enabled": True, "schemes": ["jwt", "signed_url"], "signed_url": signing}
    h = Harness(
        {
            "cache": {"enabled": True},
            "jwt": {"secret": "s" * 64},
            "buckets": [bucket_entry(auth=auth)],
        }
    )
    h.clock.advance(1_800_000_000)
    link = h.access.signers["pub"].sign("/pub/k", 60).url
    scheme = h.access.schemes["pub"]
    slow_calls: list[object] = []
    authenticate = scheme.authenticate

    def counting(request: object) -> object:
        slow_calls.append(request)
        return authenticate(request)

    scheme.authenticate = counting
    h.get(link)
    h.agents["pub"].answer(FakeResponse(200, {}, body=b"picture"))
    _, transport = h.get(link)
    response = parse_response(transport.value())
    assert (response.status, response.body, response.header("x-cache")) == (200, b"picture", "HIT")
    assert slow_calls == []  # both answered by authenticate_now
    _, refused = h.get("/pub/k?expires=1&signature=x")  # a bad link: refused the slow way
    assert parse_response(refused.value()).status == 401
    assert len(slow_calls) == 1
