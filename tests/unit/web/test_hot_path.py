"""
The pieces that make a memory hit cheap (docs/PERFORMANCE.md "Cache hits"): each one keeps
the behaviour of the general path it shortcuts.
"""

from __future__ import annotations

import os
import uuid
from typing import Any

import jwt as pyjwt
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.web.http_headers import Headers
from yatagarasu_dictlayer import DictLayer
from zope.interface.verify import verifyObject

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from yatagarasu.cache.memory import MemoryCacheLayer, MemoryCacheSettings
from yatagarasu.cache.tiered import Lookup, TieredCache
from yatagarasu.http.conditionals import is_conditional
from yatagarasu.interfaces import IImmediateCacheLayer
from yatagarasu.metrics import Metrics
from yatagarasu.per_second import PerSecond
from yatagarasu.testing import FAR_FUTURE
from yatagarasu.testing import sample_entry as entry
from yatagarasu.values import CacheEntry, CacheKey
from yatagarasu.web import request_id
from yatagarasu.web.channel import LimitedHTTPChannel, ResponseHeaders, encode_head

KEY = CacheKey("pub", "k")


def memory(clock: Clock) -> MemoryCacheLayer:
    return MemoryCacheLayer(MemoryCacheSettings(), clock)


# -- request ids ------------------------------------------------------------------------------


def test_new_request_ids_are_distinct_version_4_uuids() -> None:
    ids = [request_id.new_request_id() for _ in range(600)]  # more than one 4 KiB pool
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text


def test_a_forked_child_does_not_reuse_the_parents_random_digits() -> None:
    pool = request_id._RandomHex()
    first = pool.take32()
    pool.discard()  # what os.register_at_fork runs in the child
    assert pool._offset == 0 and pool._pool == ""
    assert pool.take32() != first
    read, write = os.pipe()
    request_id._random.take32()  # the parent's pool is filled
    pid = os.fork()
    if pid == 0:  # pragma: no cover (child)
        os.write(write, request_id._random._pool.encode() or b"-")
        os._exit(0)
    os.waitpid(pid, 0)
    child_pool = os.read(read, 16384)
    os.close(read)
    os.close(write)
    assert child_pool == b"-"


# -- heads ------------------------------------------------------------------------------------


def test_encode_head_writes_the_prefix_then_the_headers_then_the_extra_lines() -> None:
    headers = ResponseHeaders()
    headers.prefix = b"X-Request-Id: r1\r\n"
    headers.setRawHeaders(b"x-cache", [b"HIT"])
    head = encode_head(b"HTTP/1.1", b"200", b"OK", headers, b"Content-Length: 3\r\n")
    assert head == (
        b"HTTP/1.1 200 OK\r\nX-Request-Id: r1\r\nX-Cache: HIT\r\nContent-Length: 3\r\n\r\n"
    )
    assert encode_head(b"HTTP/1.0", b"404", b"Not Found", Headers()) == (
        b"HTTP/1.0 404 Not Found\r\n\r\n"
    )


def test_the_channel_writes_a_head_in_one_piece() -> None:
    channel = Harness({"buckets": [bucket_entry()]}).site.buildProtocol(None)
    assert isinstance(channel, LimitedHTTPChannel)
    transport = StringTransport()
    channel.makeConnection(transport)
    writes: list[bytes] = []
    transport.write = writes.append  # type: ignore[method-assign]
    headers = Headers({b"content-type": [b"text/plain"]})
    channel.writeHeaders(b"HTTP/1.1", b"200", b"OK", headers)
    assert writes == [b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"]
    channel.connectionLost(None)  # type: ignore[arg-type]


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


def test_the_date_follows_the_injected_clock_second_by_second() -> None:
    h = Harness({"buckets": [bucket_entry()]})
    h.clock.advance(1_800_000_000)
    _, first = h.get("/health")
    h.clock.advance(0.5)
    _, same_second = h.get("/health")
    h.clock.advance(1)
    _, next_second = h.get("/health")
    dates = [parse_response(t.value()).header("date") for t in (first, same_second, next_second)]
    assert dates == [
        "Fri, 15 Jan 2027 08:00:00 GMT",
        "Fri, 15 Jan 2027 08:00:00 GMT",
        "Fri, 15 Jan 2027 08:00:01 GMT",
    ]


def test_per_second_values_are_made_once_a_second() -> None:
    made: list[int] = []
    value = PerSecond(lambda second: made.append(second) or f"t{second}")
    assert [value(10.0), value(10.9), value(11.2), value(11.0)] == ["t10", "t10", "t11", "t11"]
    assert made == [10, 11]


def test_raw_backslash_and_nul_are_refused_without_decoding() -> None:
    h = Harness({"buckets": [bucket_entry()]})
    for target in (b"/pub/a\\b", b"/pub/a\x00b", b"/pub/a/../b"):
        _, transport = h.send(b"GET " + target + b" HTTP/1.1\r\nHost: proxy\r\n\r\n")
        assert parse_response(transport.value()).status == 400, target
    assert h.agents["pub"].sent == []


# -- conditionals -----------------------------------------------------------------------------


def test_is_conditional_sees_preconditions_and_ranges_only() -> None:
    for name in ("If-None-Match", "if-modified-since", "If-Match", "If-Unmodified-Since", "Range"):
        assert is_conditional(Headers({name: ["x"]})), name
    assert not is_conditional(Headers({"Host": ["p"], "Accept": ["*/*"]}))
    assert not is_conditional(Headers({"If-Range": ['"v1"']}))  # meaningless without Range


# -- tiered lookups ---------------------------------------------------------------------------


def test_the_memory_layer_answers_at_once() -> None:
    assert verifyObject(IImmediateCacheLayer, memory(Clock()))


def test_a_memory_hit_and_an_all_memory_miss_come_back_as_values() -> None:
    clock = Clock()
    layer = memory(clock)
    cache = TieredCache([layer], clock)
    assert cache.lookup(KEY) is None
    layer.store(KEY, entry(b"v", retain_until=FAR_FUTURE))
    found = cache.lookup(KEY)
    assert isinstance(found, Lookup) and found.entry.body == b"v" and found.layer == "memory"
    assert (cache.hits, cache.misses) == ({("pub", "memory"): 1}, {"pub": 1})
    got: list[Any] = []
    cache.get(KEY).addCallback(got.append)  # get() stays a Deferred
    assert got[0].entry.body == b"v"


def test_after_a_memory_miss_the_next_layer_is_asked_once_and_its_hit_promoted() -> None:
    clock = Clock()
    fast, slow = memory(clock), DictLayer(10, 1 << 16, clock)
    slow._entries[KEY] = entry(b"from-dict", retain_until=FAR_FUTURE)
    cache = TieredCache([fast, slow], clock)
    found = cache.lookup(KEY)
    assert isinstance(found, Deferred)
    got: list[Any] = []
    found.addCallback(got.append)
    assert got[0].layer == "dict"
    assert (fast.stats(None).misses, slow.stats(None).hits) == (1, 1)
    again = cache.lookup(KEY)  # promoted into memory meanwhile
    assert isinstance(again, Lookup) and again.layer == "memory"
    assert cache.hits == {("pub", "dict"): 1, ("pub", "memory"): 1}


def test_a_layer_that_is_not_immediate_is_asked_through_its_deferred() -> None:
    clock = Clock()
    slow = DictLayer(10, 1 << 16, clock)
    cache = TieredCache([slow], clock)
    found = cache.lookup(KEY)
    assert isinstance(found, Deferred)
    got: list[Any] = []
    found.addCallback(got.append)
    assert got == [None] and cache.misses == {"pub": 1}


class Broken(MemoryCacheLayer):
    def lookup(self, key: CacheKey) -> CacheEntry | None:
        raise OSError("broken")


class Pending(DictLayer):
    def __init__(self, clock: Any) -> None:
        super().__init__(10, 1 << 16, clock)
        self.waiting: list[Deferred[CacheEntry | None]] = []

    def get(self, key: CacheKey) -> Deferred[CacheEntry | None]:
        d: Deferred[CacheEntry | None] = Deferred()
        self.waiting.append(d)
        return d


def test_a_failing_immediate_layer_is_a_counted_miss() -> None:
    clock = Clock()
    metrics = Metrics()
    broken = Broken(MemoryCacheSettings(), clock)
    cache = TieredCache([broken], clock, metrics)
    metrics.watch_cache(cache)
    assert cache.lookup(KEY) is None
    assert "yatagarasu_cache_errors_total" in metrics.render().decode()
    assert metrics._cache_errors == {"memory": 1}


def test_a_failed_or_pending_slower_layer_is_handled_like_before() -> None:
    clock = Clock()
    pending = Pending(clock)
    cache = TieredCache([memory(clock), pending], clock)
    found = cache.lookup(KEY)
    assert isinstance(found, Deferred) and not found.called
    pending.waiting[0].errback(OSError("down"))
    got: list[Any] = []
    found.addCallback(got.append)
    assert got == [None] and cache.misses == {"pub": 1}
    cancelled = cache.lookup(KEY)
    assert isinstance(cancelled, Deferred)
    errors: list[Any] = []
    cancelled.addErrback(errors.append)
    cancelled.cancel()
    assert len(errors) == 1 and cache.misses == {"pub": 1}  # a cancel is not a miss


def test_failures_of_slower_layers_go_on_to_the_next_layer() -> None:
    clock = Clock()
    tail = DictLayer(10, 1 << 16, clock)
    tail._entries[KEY] = entry(b"tail", retain_until=FAR_FUTURE)

    class Failing(DictLayer):
        def get(self, key: CacheKey) -> Deferred[CacheEntry | None]:
            return fail(OSError("nope"))

    cache = TieredCache([Failing(10, 1 << 16, clock), tail], clock)
    got: list[Any] = []
    cache.get(KEY).addCallback(got.append)
    assert got[0].entry.body == b"tail"


# -- the whole hit through the Site -----------------------------------------------------------


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


def test_metrics_are_counted_and_rendered_from_plain_numbers() -> None:
    h = Harness({"cache": {"enabled": True}, "buckets": [bucket_entry()]})
    h.get("/pub/k")
    h.agents["pub"].answer(FakeResponse(200, {}, body=b"body"))
    h.get("/pub/k")
    h.get("/pub/k", method="PATCH")
    _, transport = h.get("/metrics")
    families = {
        f.name: f
        for f in text_string_to_metric_families(parse_response(transport.value()).body.decode())
    }
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    assert samples[("yatagarasu_cache_hits_total", (("bucket", "pub"), ("layer", "memory")))] == 1
    assert samples[("yatagarasu_cache_misses_total", (("bucket", "pub"),))] == 1
    get200 = (("bucket", "pub"), ("method", "GET"), ("status", "200"))
    assert samples[("yatagarasu_requests_total", get200)] == 2
    patch = (("bucket", "pub"), ("method", "other"), ("status", "405"))
    assert samples[("yatagarasu_requests_total", patch)] == 1
    assert samples[("yatagarasu_response_body_bytes_total", (("bucket", "pub"),))] > 8
    buckets = [
        s
        for s in families["yatagarasu_request_duration_seconds"].samples
        if s.name.endswith("_bucket") and s.labels["bucket"] == "pub"
    ]
    counts = [s.value for s in buckets]
    assert counts == sorted(counts) and counts[-1] == 3 and buckets[-1].labels["le"] == "+Inf"
    lookups = families["yatagarasu_cache_get_duration_seconds"].samples
    assert any(s.name.endswith("_count") and s.value == 2 for s in lookups)
    assert not any(s.name.endswith("_created") for f in families.values() for s in f.samples)


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
