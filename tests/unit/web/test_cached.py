"""HTTP caching semantics through the Site, with the memory layer, a fake S3 and a fake clock."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock

from tests.unit.fakes import FakeResponse, Harness, bucket_entry, parse_response
from yatagarasu import plugins
from yatagarasu.cache.from_config import build_cache
from yatagarasu.config import ConfigError, parse_config

START = 1_800_000_000.0
SECRET = "a" * 64
OBJECT = {
    "Content-Type": "text/plain",
    "ETag": '"v1"',
    "Last-Modified": "Wed, 21 Oct 2026 07:28:00 GMT",
    "x-amz-request-id": "drop-me",
}


def cached(*buckets: dict[str, Any], **cache: Any) -> Harness:
    settings = {"enabled": True, "memory": {"max_cache_size_mb": 4, "max_item_size_mb": 1}}
    settings.update(cache)
    h = Harness(
        {
            "cache": settings,
            "jwt": {
                "secret": SECRET,
                "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
            },
            "buckets": list(buckets) or [bucket_entry()],
        }
    )
    h.clock.advance(START)
    return h


def admin_header() -> str:
    tok = jwt.encode(
        {"sub": "ops", "role": "admin", "exp": int(START) + 10**9}, SECRET, algorithm="HS256"
    )
    return f"Authorization: Bearer {tok}"


def fetch(
    h: Harness,
    path: str,
    *headers: str,
    method: str = "GET",
    answer: FakeResponse | None = None,
    bucket: str = "pub",
) -> Any:
    before = len(h.agents[bucket].sent)
    _, transport = h.get(path, *headers, method=method)
    if answer is not None:
        assert len(h.agents[bucket].sent) == before + 1, "expected an upstream request"
        h.agents[bucket].answer(answer)
    return parse_response(transport.value())


def obj(body: bytes = b"hello world", code: int = 200, **extra: str) -> FakeResponse:
    return FakeResponse(code, {**OBJECT, **extra}, body=body)


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


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        (('If-None-Match: "v1"',), 304),
        (('If-None-Match: W/"v1"',), 304),
        (('If-None-Match: "x", "v1"',), 304),
        (("If-None-Match: *",), 304),
        (('If-None-Match: "other"',), 200),
        (("If-Modified-Since: Wed, 21 Oct 2026 07:28:00 GMT",), 304),
        (("If-Modified-Since: Tue, 20 Oct 2026 07:28:00 GMT",), 200),
        (('If-None-Match: "other"', "If-Modified-Since: Thu, 22 Oct 2026 07:28:00 GMT"), 200),
        (('If-Match: "nope"',), 412),
        (('If-Match: "v1"',), 200),
        (("If-Unmodified-Since: Tue, 20 Oct 2026 07:28:00 GMT",), 412),
    ],
)
def test_conditionals_from_cache(headers: tuple[str, ...], status: int) -> None:
    h = cached()
    fetch(h, "/pub/a.txt", answer=obj())
    response = fetch(h, "/pub/a.txt", *headers)
    assert response.status == status
    assert response.header("x-cache") == ("HIT" if status != 412 else None) or status == 412
    if status == 304:
        assert response.body == b""
        assert response.header("etag") == '"v1"'
    assert len(h.agents["pub"].sent) == 1


def test_ranges_from_cache() -> None:
    h = cached()
    fetch(h, "/pub/a.txt", answer=obj())
    partial = fetch(h, "/pub/a.txt", "Range: bytes=6-")
    assert (partial.status, partial.body) == (206, b"world")
    assert partial.header("content-range") == "bytes 6-10/11"
    suffix = fetch(h, "/pub/a.txt", "Range: bytes=-3")
    assert suffix.body == b"rld"
    unsatisfiable = fetch(h, "/pub/a.txt", "Range: bytes=50-60")
    assert unsatisfiable.status == 416
    assert unsatisfiable.header("content-range") == "bytes */11"
    stale_validator = fetch(h, "/pub/a.txt", "Range: bytes=0-4", 'If-Range: "old"')
    assert (stale_validator.status, stale_validator.body) == (200, b"hello world")
    matching = fetch(h, "/pub/a.txt", "Range: bytes=0-4", 'If-Range: "v1"')
    assert (matching.status, matching.body) == (206, b"hello")
    assert len(h.agents["pub"].sent) == 1


def test_range_on_miss_goes_to_s3_and_stores_nothing() -> None:
    h = cached()
    response = fetch(
        h,
        "/pub/a.txt",
        "Range: bytes=0-4",
        answer=FakeResponse(206, {**OBJECT, "Content-Range": "bytes 0-4/11"}, body=b"hello"),
    )
    assert (response.status, response.header("x-cache")) == (206, "BYPASS")
    assert h.agents["pub"].sent[0].headers.getRawHeaders(b"range") == [b"bytes=0-4"]
    fetch(h, "/pub/a.txt", answer=obj())  # still a miss


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


@pytest.mark.parametrize("directive", ["no-store", "private", "private, max-age=60"])
def test_uncacheable_responses_bypass(directive: str) -> None:
    h = cached()
    first = fetch(h, "/pub/a.txt", answer=obj(**{"Cache-Control": directive}))
    assert first.header("x-cache") == "BYPASS"
    assert first.body == b"hello world"
    fetch(h, "/pub/a.txt", answer=obj())


def test_large_objects_bypass_with_bucket_override() -> None:
    h = cached(bucket_entry(cache={"max_item_size_mb": 0.0001}))
    big = b"x" * 200
    first = fetch(h, "/pub/big", answer=obj(big))
    assert (first.header("x-cache"), first.body) == ("BYPASS", big)
    fetch(h, "/pub/big", answer=obj(big))


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


def test_client_conditional_on_miss_answered_from_response() -> None:
    h = cached()
    response = fetch(h, "/pub/a.txt", 'If-None-Match: "v1"', answer=obj())
    assert (response.status, response.body) == (304, b"")
    assert fetch(h, "/pub/a.txt").header("x-cache") == "HIT"  # the body was still cached


def test_bucket_can_opt_out() -> None:
    h = cached(bucket_entry("pub", "/pub"), bucket_entry("raw", "/raw", cache={"enabled": False}))
    response = fetch(h, "/raw/a.txt", answer=obj(), bucket="raw")
    assert response.header("x-cache") is None
    fetch(h, "/raw/a.txt", answer=obj(), bucket="raw")


def test_admin_purge_and_stats() -> None:
    h = cached(bucket_entry("pub", "/pub"), bucket_entry("two", "/two"))
    for path in ("/pub/img/1", "/pub/img/2", "/pub/doc/1"):
        fetch(h, path, answer=obj())
    fetch(h, "/two/x", answer=obj(), bucket="two")
    fetch(h, "/pub/img/1")

    def admin(method: str, path: str) -> Any:
        _, transport = h.get(path, admin_header(), method=method)
        response = parse_response(transport.value())
        return response.status, json.loads(response.body)

    status, stats = admin("GET", "/admin/cache/stats")
    assert status == 200 and stats["status"] == "success"
    data = stats["data"]
    assert (data["hits"], data["misses"], data["current_item_count"]) == (1, 4, 4)
    assert data["hit_rate"] == pytest.approx(0.2)
    assert data["layers"]["memory"]["current_item_count"] == 4
    assert data["buckets"]["two"]["current_item_count"] == 1
    status, one = admin("GET", "/admin/cache/stats/pub")
    assert (status, one["data"]["current_item_count"], one["data"]["hits"]) == (200, 3, 1)
    assert admin("GET", "/admin/cache/stats/nope")[0] == 404
    assert admin("POST", "/admin/cache/purge/pub/doc/1") == (
        200,
        {"status": "success", "bucket": "pub", "key": "doc/1", "deleted": True},
    )
    assert admin("POST", "/admin/cache/purge/pub/doc/1")[0] == 404
    status, purged = admin("POST", "/admin/cache/purge/pub?prefix=img/")
    assert (status, purged["purged"]) == (200, 2)
    status, purged = admin("POST", "/admin/cache/purge")
    assert (status, purged["purged"]) == (200, 1)
    fetch(h, "/two/x", answer=obj(), bucket="two")  # a miss after the purge
    _, transport = h.get("/admin/cache/stats")
    assert parse_response(transport.value()).status == 401


def test_metrics_endpoint() -> None:
    h = cached()
    fetch(h, "/pub/a.txt?secret=1", answer=obj())
    fetch(h, "/pub/a.txt")
    _, transport = h.get("/metrics")
    response = parse_response(transport.value())
    text = response.body.decode()
    assert response.status == 200
    assert 'yatagarasu_cache_hits_total{bucket="pub",layer="memory"} 1.0' in text
    assert 'yatagarasu_cache_misses_total{bucket="pub"} 1.0' in text
    assert 'yatagarasu_cache_items{layer="memory"} 1.0' in text
    assert 'yatagarasu_requests_total{bucket="pub",method="GET",status="200"} 2.0' in text
    assert "a.txt" not in text and "127.0.0.1" not in text
    ours = [
        line.split("{")[0].split(" ")[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    ]
    assert all(name.startswith(("yatagarasu_", "process_", "python_")) for name in ours)


@pytest.mark.parametrize(
    ("cache", "path", "needle"),
    [
        (
            {"enabled": True, "cache_layers": ["memory", "nvme"]},
            "cache.cache_layers[1]",
            "disk, memory, redis",
        ),
        (
            {"enabled": True, "cache_layers": ["memory", "memory"]},
            "cache.cache_layers[1]",
            "listed twice",
        ),
        (
            {"enabled": True, "cache_layers": ["memory", "disk"], "disk": {"cache_dir": "/tmp/x"}},
            "cache.disk.enabled",
            "must be true",
        ),
        (
            {"enabled": True, "disk": {"enabled": True, "cache_dir": "/tmp/x"}},
            "cache.disk.enabled",
            "not listed",
        ),
        ({"enabled": True, "ttl_secnds": 5}, "cache.ttl_secnds", "did you mean 'ttl_seconds'"),
        (
            {"enabled": True, "memory": {"max_item_size_mb": 50, "max_cache_size_mb": 10}},
            "cache.memory",
            "",
        ),
        ({"enabled": True, "cache_layers": []}, "cache.cache_layers", "at least one"),
    ],
)
def test_cache_config_errors(cache: dict[str, Any], path: str, needle: str) -> None:
    config = parse_config({"cache": cache, "buckets": [bucket_entry()]}, {})
    with pytest.raises(ConfigError) as info:
        build_cache(config, Clock(), plugins)
    assert info.value.path.startswith(path)
    assert needle in str(info.value)


def test_seed_cache_example_loads() -> None:
    document = {
        "cache": {
            "enabled": True,
            "memory": {
                "max_item_size_mb": 10,
                "max_cache_size_mb": 1024,
                "default_ttl_seconds": 3600,
            },
            "disk": {
                "enabled": False,
                "cache_dir": "/var/cache/yatagarasu",
                "max_disk_cache_size_mb": 10240,
            },
            "redis": {
                "enabled": False,
                "redis_url": "${REDIS_URL}",
                "redis_password": "${REDIS_PASSWORD}",
                "redis_db": 0,
                "key_prefix": "yatagarasu:",
                "ttl_seconds": 3600,
            },
            "cache_layers": ["memory"],
        },
        "buckets": [
            {
                "name": "products",
                "path_prefix": "/products",
                "s3": {"bucket": "p"},
                "cache": {"ttl_seconds": 7200, "max_item_size_mb": 5},
            }
        ],
    }
    config = parse_config(document, {"REDIS_URL": "", "REDIS_PASSWORD": ""})
    setup = build_cache(config, Clock(), plugins)
    assert setup.cache is not None
    assert [layer.name for layer in setup.cache.layers] == ["memory"]
    policy = setup.policies["products"]
    assert (policy.ttl, policy.max_item_size) == (7200, 5 * 1024 * 1024)


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


def test_leaders_own_precondition_failure_is_not_shared() -> None:
    h = cached()
    _, leader = h.get("/pub/a.txt", 'If-Match: "other"')
    _, follower = h.get("/pub/a.txt")
    h.agents["pub"].answer(obj())
    assert parse_response(leader.value()).status == 412
    follower_response = parse_response(follower.value())
    assert (follower_response.status, follower_response.body) == (200, b"hello world")
    assert fetch(h, "/pub/a.txt").header("x-cache") == "HIT"
    assert len(h.agents["pub"].sent) == 1
