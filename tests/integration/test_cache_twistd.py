"""Tiered caching through the real twistd process: moto (SigV4 on), the tests' redis-server."""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jwt
import pytest

from devharness.moto_s3 import MotoS3Server
from devharness.processes import memory_files
from devharness.proxy_config import bucket_config
from devharness.redis_server import RedisServer
from devharness.twistd import ProxyProcess
from devharness.waiting import wait_until
from yatagarasu.cache.disk.layer import INLINE_BODY

SECRET = "cache-admin-secret-" + "y" * 48


def admin() -> dict[str, str]:
    tok = jwt.encode(
        {"sub": "ops", "role": "admin", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
    )
    return {"Authorization": f"Bearer {tok}"}


def config(moto: MotoS3Server, bucket: str, cache: dict[str, Any], **entry: Any) -> dict[str, Any]:
    return {
        "cache": cache,
        "jwt": {
            "secret": SECRET,
            "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
        },
        "buckets": [bucket_config(moto, "pub", bucket, **entry)],
    }


def stored_then_hit(
    proxy: Callable[..., ProxyProcess],
    moto: MotoS3Server,
    bucket: str,
    cache: dict[str, Any],
    key: str,
    body: bytes,
    where: str,
) -> tuple[ProxyProcess, str]:
    """
    Put ``key``, start a proxy with ``cache``, GET it once (a MISS) and wait for a HIT.

    :returns: the proxy and the object's ETag; the S3 request log starts empty after it.
    """
    etag = moto.put_object(bucket, key, body, CacheControl="max-age=600")
    running = proxy(config(moto, bucket, cache))
    assert running.get(f"/pub/{key}").header("X-Cache") == "MISS"
    wait_until(
        lambda: running.get(f"/pub/{key}").header("X-Cache") == "HIT",
        timeout=10,
        what=f"the {where} entry to be stored",
    )
    moto.clear_requests()
    return running, etag


MEMORY = {"enabled": True, "memory": {"max_cache_size_mb": 64, "max_item_size_mb": 10}}


def test_miss_hit_byte_exact_and_no_second_upstream_get(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    body = os.urandom(300_000)
    etag = moto_s3.put_object(s3_bucket, "bin/data.bin", body, CacheControl="max-age=300")
    running = proxy(config(moto_s3, s3_bucket, MEMORY))
    moto_s3.clear_requests()
    first = running.get("/pub/bin/data.bin")
    second = running.get("/pub/bin/data.bin")
    assert (first.header("X-Cache"), second.header("X-Cache")) == ("MISS", "HIT")
    assert first.body == second.body == body
    assert second.header("ETag") == etag
    assert moto_s3.count_requests("GET", s3_bucket, "bin/data.bin") == 1
    assert running.get("/pub/bin/data.bin", headers={"If-None-Match": etag}).status == 304
    ranged = running.get("/pub/bin/data.bin", headers={"Range": "bytes=10-19"})
    assert (ranged.status, ranged.body) == (206, body[10:20])
    assert moto_s3.count_requests("GET", s3_bucket, "bin/data.bin") == 1


def test_coalescing_twenty_concurrent_misses_one_upstream_get(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    body = os.urandom(2_000_000)
    moto_s3.put_object(s3_bucket, "hot.bin", body)
    running = proxy(config(moto_s3, s3_bucket, MEMORY))
    moto_s3.clear_requests()
    with ThreadPoolExecutor(max_workers=20) as pool:
        responses = list(pool.map(lambda _: running.get("/pub/hot.bin", timeout=60), range(20)))
    assert {r.status for r in responses} == {200}
    assert all(r.body == body for r in responses)
    assert moto_s3.count_requests("GET", s3_bucket, "hot.bin") == 1


def test_large_object_bypasses_with_bounded_memory(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    body = hashlib.sha256(b"big").digest() * (40 * 1024 * 1024 // 32)
    moto_s3.put_object(s3_bucket, "big.bin", body)
    running = proxy(config(moto_s3, s3_bucket, {**MEMORY, "slice_size_mb": 0}))  # no slices
    for _ in range(2):
        response = running.get("/pub/big.bin", timeout=60)
        assert response.header("X-Cache") == "BYPASS"
        assert hashlib.sha256(response.body).digest() == hashlib.sha256(body).digest()


def test_no_store_and_expiry_revalidation(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    moto_s3.put_object(s3_bucket, "nostore.txt", b"n", CacheControl="no-store")
    moto_s3.put_object(s3_bucket, "short.txt", b"s", CacheControl="max-age=1")
    running = proxy(config(moto_s3, s3_bucket, MEMORY))
    assert running.get("/pub/nostore.txt").header("X-Cache") == "BYPASS"
    assert running.get("/pub/nostore.txt").header("X-Cache") == "BYPASS"
    assert running.get("/pub/short.txt").header("X-Cache") == "MISS"
    wait_until(
        lambda: running.get("/pub/short.txt").header("X-Cache") == "REVALIDATED",
        timeout=15,
        interval=0.5,
        what="an expired entry to be revalidated",
    )


def test_disk_cache_survives_restart_and_ignores_corrupt_files(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    moto_s3.put_object(s3_bucket, "keep.txt", b"kept on disk", CacheControl="max-age=600")
    cache_dir = tmp_path / "disk-cache"
    settings = {
        "enabled": True,
        "cache_layers": ["memory", "disk"],
        "memory": {"max_cache_size_mb": 8, "max_item_size_mb": 1},
        "disk": {"enabled": True, "cache_dir": str(cache_dir), "max_disk_cache_size_mb": 64},
    }
    first = proxy(config(moto_s3, s3_bucket, settings))
    assert first.get("/pub/keep.txt").header("X-Cache") == "MISS"
    wait_until(
        lambda: any(p.is_file() and not p.name.startswith(".") for p in cache_dir.rglob("*")),
        timeout=10,
        what="the disk entry",
    )
    first.stop()
    fan_out = next(p for p in cache_dir.rglob("*") if p.is_file()).parent
    (fan_out / ("f" * 64)).write_bytes(b"garbage that is not an entry")
    (fan_out / ".tmp-leftover").write_bytes(b"half written")
    moto_s3.clear_requests()
    second = proxy(config(moto_s3, s3_bucket, settings))
    response = second.get("/pub/keep.txt")
    assert (response.body, response.header("X-Cache")) == (b"kept on disk", "HIT")
    assert moto_s3.count_requests("GET", s3_bucket, "keep.txt") == 0
    wait_until(lambda: not (fan_out / ("f" * 64)).exists(), timeout=10, what="corrupt file removal")
    assert not (fan_out / ".tmp-leftover").exists()


@pytest.mark.parametrize(
    ("size", "path"),
    [(INLINE_BODY, "read with the entry"), (INLINE_BODY + 1, "streamed by a producer")],
)
def test_disk_hits_small_and_large(
    size: int,
    path: str,
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    """A disk-only cache: bodies up to INLINE_BODY are read at once, larger ones streamed."""
    body = os.urandom(size)
    settings = {
        "enabled": True,
        "cache_layers": ["disk"],
        "disk": {"enabled": True, "cache_dir": str(tmp_path / "disk-cache")},
    }
    running, etag = stored_then_hit(proxy, moto_s3, s3_bucket, settings, "d.bin", body, "disk")
    for _ in range(2):  # the second hit uses the metadata the first one kept
        hit = running.get("/pub/d.bin")
        assert (hit.status, hit.header("X-Cache"), hit.header("ETag")) == (200, "HIT", etag)
        assert hit.body == body
    ranged = running.get("/pub/d.bin", headers={"Range": f"bytes={size - 10}-"})
    assert (ranged.status, ranged.body) == (206, body[-10:])
    head = running.request("HEAD", "/pub/d.bin")
    assert (head.status, head.header("Content-Length"), head.body) == (200, str(size), b"")
    assert running.get("/pub/d.bin", headers={"If-None-Match": etag}).status == 304
    assert moto_s3.count_requests("GET", s3_bucket, "d.bin") == 0


def test_unusable_disk_keeps_serving(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    moto_s3.put_object(s3_bucket, "x.txt", b"still served")
    cache_dir = tmp_path / "cache"
    settings = {
        "enabled": True,
        "cache_layers": ["disk"],
        "disk": {"enabled": True, "cache_dir": str(cache_dir)},
    }
    running = proxy(config(moto_s3, s3_bucket, settings))
    # The disk goes bad under the running proxy: its directory becomes a file. (A directory
    # that cannot be made at all stops the start-up instead: tests/integration/
    # test_operations.py.)
    wait_until(cache_dir.is_dir, timeout=30, interval=0.05, what="the cache directory")
    shutil.rmtree(cache_dir)
    cache_dir.write_text("a file where the cache directory should be")
    for _ in range(3):
        response = running.get("/pub/x.txt")
        assert (response.status, response.body) == (200, b"still served")
    errors = [
        line for line in running.log_text().splitlines() if "yatagarasu.cache.disk#warn" in line
    ]
    assert errors  # each failure is a miss, logged, never an error to the client


def redis_cache(redis: RedisServer) -> dict[str, Any]:
    return {
        "enabled": True,
        "cache_layers": ["memory", "redis"],
        "memory": {"max_cache_size_mb": 8, "max_item_size_mb": 1},
        "redis": {"enabled": True, "redis_url": redis.url, "timeout_ms": 300},
    }


@pytest.mark.parametrize("size", [100 * 1024, 600 * 1024], ids=["100KiB", "600KiB"])
def test_redis_hits_of_large_values_are_whole(
    size: int,
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    redis_server: RedisServer,
) -> None:
    """Values of 100 KiB (one read: handed on without a copy) and 600 KiB (several reads)."""
    body = os.urandom(size)
    settings = {
        "enabled": True,
        "cache_layers": ["redis"],
        "redis": {"enabled": True, "redis_url": redis_server.url, "timeout_ms": 2000},
    }
    running, etag = stored_then_hit(proxy, moto_s3, s3_bucket, settings, "big.bin", body, "Redis")
    for _ in range(3):
        hit = running.get("/pub/big.bin")
        assert (hit.status, hit.header("X-Cache"), hit.header("ETag")) == (200, "HIT", etag)
        assert hit.body == body
    ranged = running.get("/pub/big.bin", headers={"Range": "bytes=10-19"})
    assert (ranged.status, ranged.body) == (206, body[10:20])
    assert moto_s3.count_requests("GET", s3_bucket, "big.bin") == 0


@pytest.mark.parametrize("size", [100_000, 3_000_000])
def test_large_memory_hits_are_sent_from_memory_files(
    size: int,
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    """Bodies of 64 KiB and more are kept in a memory file and sent from it (``sendfile``)."""
    body = os.urandom(size)
    running, etag = stored_then_hit(proxy, moto_s3, s3_bucket, MEMORY, "big.bin", body, "memory")
    assert memory_files(running.pid)[0] == 1
    for _ in range(3):
        hit = running.get("/pub/big.bin")
        assert (hit.status, hit.header("X-Cache"), hit.header("ETag")) == (200, "HIT", etag)
        assert hit.header("Content-Length") == str(size)
        assert hit.body == body
    ranged = running.get("/pub/big.bin", headers={"Range": "bytes=70000-70009"})
    assert (ranged.status, ranged.body) == (206, body[70000:70010])
    closing = running.get("/pub/big.bin", headers={"Connection": "close"})
    assert (closing.status, closing.body) == (200, body)
    head = running.request("HEAD", "/pub/big.bin")
    assert (head.status, head.body, head.header("Content-Length")) == (200, b"", str(size))
    with ThreadPoolExecutor(8) as pool:  # concurrent clients of one body
        assert all(got.body == body for got in pool.map(running.get, ["/pub/big.bin"] * 16))
    assert moto_s3.count_requests("GET", s3_bucket, "big.bin") == 0
    purged = running.request("POST", "/admin/cache/purge/pub/big.bin", headers=admin())
    assert purged.status == 200
    wait_until(
        lambda: memory_files(running.pid)[0] == 0, timeout=10, what="the purged body's file closed"
    )


def test_two_instances_share_redis_and_purges(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    redis_server: RedisServer,
) -> None:
    moto_s3.put_object(s3_bucket, "shared.txt", b"shared", CacheControl="max-age=600")
    a = proxy(config(moto_s3, s3_bucket, redis_cache(redis_server)))
    b = proxy(config(moto_s3, s3_bucket, redis_cache(redis_server)))
    moto_s3.clear_requests()
    assert a.get("/pub/shared.txt").header("X-Cache") == "MISS"
    wait_until(
        lambda: b.get("/pub/shared.txt").header("X-Cache") == "HIT",
        timeout=10,
        what="B to hit what A stored in Redis",
    )
    assert b.get("/pub/shared.txt").header("X-Cache") == "HIT"  # now from B's memory too
    assert moto_s3.count_requests("GET", s3_bucket, "shared.txt") == 1
    purged = a.request("POST", "/admin/cache/purge/pub/shared.txt", headers=admin())
    assert (purged.status, purged.json()["deleted"]) == (200, True)
    wait_until(
        lambda: b.get("/pub/shared.txt").header("X-Cache") == "MISS",
        timeout=10,
        what="A's purge to reach B's memory layer",
    )


def test_redis_killed_requests_keep_succeeding(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    redis_server: RedisServer,
) -> None:
    moto_s3.put_object(s3_bucket, "r.txt", b"resilient", CacheControl="max-age=600")
    running = proxy(config(moto_s3, s3_bucket, redis_cache(redis_server)))
    assert running.get("/pub/r.txt").status == 200
    redis_server.kill()
    for _ in range(5):
        response = running.get("/pub/r.txt")
        assert (response.status, response.body) == (200, b"resilient")
    moto_s3.put_object(s3_bucket, "new.txt", b"fresh from s3")
    assert running.get("/pub/new.txt").body == b"fresh from s3"
    stats = running.get("/admin/cache/stats", headers=admin()).json()["data"]
    assert stats["layers"]["redis"]["misses"] >= 1
    assert b'yatagarasu_cache_errors_total{layer="redis"}' in running.get("/metrics").body


def test_admin_api_auth_and_stats(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    moto_s3.put_object(s3_bucket, "a/1", b"1")
    moto_s3.put_object(s3_bucket, "a/2", b"2")
    running = proxy(config(moto_s3, s3_bucket, MEMORY))
    running.get("/pub/a/1")
    running.get("/pub/a/2")
    running.get("/pub/a/1")
    assert running.get("/admin/cache/stats").status == 401
    user = jwt.encode({"sub": "u", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256")
    assert (
        running.get("/admin/cache/stats", headers={"Authorization": f"Bearer {user}"}).status == 403
    )
    data = running.get("/admin/cache/stats", headers=admin()).json()["data"]
    assert (data["hits"], data["misses"], data["current_item_count"]) == (1, 2, 2)
    assert data["buckets"]["pub"]["hit_rate"] == pytest.approx(1 / 3)
    assert running.get("/admin/cache/stats/other", headers=admin()).status == 404
    purge = running.request("POST", "/admin/cache/purge/pub?prefix=a/", headers=admin())
    assert purge.json()["purged"] == 2
    assert running.get("/pub/a/1").header("X-Cache") == "MISS"


def test_third_party_cache_layer_plugin(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    moto_s3.put_object(s3_bucket, "d.txt", b"from a dict")
    settings = {"enabled": True, "cache_layers": ["dict"], "dict": {"max_entries": 10}}
    running = proxy(config(moto_s3, s3_bucket, settings))
    assert running.get("/pub/d.txt").header("X-Cache") == "MISS"
    hit = running.get("/pub/d.txt")
    assert (hit.header("X-Cache"), hit.body) == ("HIT", b"from a dict")
    stats = running.get("/admin/cache/stats", headers=admin()).json()["data"]
    assert stats["layers"]["dict"]["current_item_count"] == 1


def test_disk_only_cache_coalesces_concurrent_misses(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    body = os.urandom(3_000_000)
    moto_s3.put_object(s3_bucket, "disk-hot.bin", body)
    settings = {
        "enabled": True,
        "cache_layers": ["disk"],
        "disk": {"enabled": True, "cache_dir": str(tmp_path / "dc")},
    }
    running = proxy(config(moto_s3, s3_bucket, settings))
    moto_s3.clear_requests()
    with ThreadPoolExecutor(max_workers=10) as pool:
        responses = list(
            pool.map(lambda _: running.get("/pub/disk-hot.bin", timeout=60), range(10))
        )
    assert all(r.status == 200 and r.body == body for r in responses)
    assert moto_s3.count_requests("GET", s3_bucket, "disk-hot.bin") == 1
    assert running.get("/pub/disk-hot.bin").header("X-Cache") == "HIT"
