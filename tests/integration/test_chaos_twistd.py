"""
The seed's chaos tests (phase 39), each through the real ``twistd yatagarasu`` process against
broken upstreams of the test's own (:mod:`devharness.broken_s3` on 127.0.0.1), with moto (SigV4
on) for the healthy replicas and the test's own redis-server.

No assertion here is about time: "fails over in < 5 s" is a bench
(``bench/failover_time.py``); these tests assert that the failover, the 503, the 504 happen.
"""

from __future__ import annotations

import http.client
import resource
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from devharness.broken_s3 import BrokenS3, broken_s3
from devharness.http_client import http_request
from devharness.moto_s3 import MotoS3Server
from devharness.ports import LOOPBACK, free_port
from devharness.proxy_config import bucket_config
from devharness.redis_server import RedisServer
from devharness.twistd import ProxyProcess
from devharness.waiting import wait_until

FAST_RETRY = {"max_attempts": 3, "initial_backoff_ms": 10, "max_backoff_ms": 20}


def broken_bucket(name: str, upstream: BrokenS3 | str, **s3: Any) -> dict[str, Any]:
    """A bucket whose one upstream is a :class:`BrokenS3` (or any endpoint URL)."""
    endpoint = upstream if isinstance(upstream, str) else upstream.endpoint_url
    return {
        "name": name,
        "path_prefix": f"/{name}",
        "s3": {
            "bucket": "broken",
            "endpoint": endpoint,
            "access_key": "AKIDEXAMPLE",
            "secret_key": "not-checked-by-the-broken-s3",
            "retry": FAST_RETRY,
            **s3,
        },
    }


def replica(name: str, priority: int, upstream: BrokenS3) -> dict[str, Any]:
    return {
        "name": name,
        "priority": priority,
        "bucket": name,
        "endpoint": upstream.endpoint_url,
        "access_key": "AKIDEXAMPLE",
        "secret_key": "not-checked-by-the-broken-s3",
    }


def circuit(running: ProxyProcess, bucket: str, name: str) -> dict[str, Any]:
    replicas: dict[str, Any] = running.get("/ready").json()["backends"][bucket]["replicas"]
    return dict(replicas[name])


@pytest.fixture
def upstream() -> Iterator[BrokenS3]:
    with broken_s3(b"broken-s3 object") as server:
        yield server


def test_s3_503_slowdown_opens_the_breaker(
    proxy: Callable[..., ProxyProcess], upstream: BrokenS3
) -> None:
    upstream.mode = "slowdown"
    breaker = {"failure_threshold": 3, "timeout_seconds": 60}
    running = proxy(
        {
            "buckets": [
                broken_bucket("slow", upstream, retry={"max_attempts": 1}, circuit_breaker=breaker)
            ]
        }
    )
    for _ in range(3):
        response = running.get("/slow/k")
        assert (response.status, response.json()["s3_code"]) == (503, "SlowDown")
        assert response.header("Retry-After") == "1"
    assert upstream.count() == 3
    refused = running.get("/slow/k")
    assert refused.status == 503
    assert "circuit" in refused.json()["message"]
    assert 1 <= int(refused.header("Retry-After") or 0) <= 60
    assert upstream.count() == 3  # the open circuit kept the request away from S3
    assert circuit(running, "slow", "primary")["state"] == "open"
    assert "SlowDown" in circuit(running, "slow", "primary")["last_error"]
    assert running.metric('yatagarasu_circuit_state{bucket="slow",replica="primary"}') == 1
    ready = running.get("/ready")
    assert (ready.status, ready.json()["status"]) == (503, "unavailable")
    running.wait_for_log("Circuit of bucket slow replica primary is open")


def test_unreachable_s3_is_502(proxy: Callable[..., ProxyProcess]) -> None:
    running = proxy({"buckets": [broken_bucket("down", f"http://{LOOPBACK}:{free_port()}")]})
    response = running.get("/down/k")
    assert response.status == 502
    assert "cannot connect" in response.json()["message"]


def test_slow_s3_is_504_after_the_first_byte_timeout(
    proxy: Callable[..., ProxyProcess], upstream: BrokenS3
) -> None:
    upstream.mode, upstream.delay = "slow", 3.0
    running = proxy(
        {
            "buckets": [
                broken_bucket("slow", upstream, first_byte_timeout=1, retry={"max_attempts": 1})
            ]
        }
    )
    response = running.get("/slow/k", timeout=30)
    assert response.status == 504
    assert response.json()["message"] == "S3 did not answer within 1s"
    upstream.mode = "ok"
    assert running.get("/slow/k", timeout=30).body == b"broken-s3 object"


def test_half_the_answers_500_the_retries_and_the_breaker_protect(
    proxy: Callable[..., ProxyProcess], upstream: BrokenS3
) -> None:
    upstream.mode = "flaky"  # every other answer is a 500
    breaker = {"failure_threshold": 3, "timeout_seconds": 60}
    running = proxy({"buckets": [broken_bucket("flaky", upstream, circuit_breaker=breaker)]})
    for i in range(10):
        response = running.get(f"/flaky/k{i}")
        assert (response.status, response.body) == (200, b"broken-s3 object")
    assert upstream.count() == 20  # one retry per request, no more
    assert circuit(running, "flaky", "primary")["state"] == "closed"
    upstream.mode = "error"  # now everything fails: the breaker stops the traffic
    statuses = [running.get(f"/flaky/e{i}").status for i in range(5)]
    assert statuses[0] == 502
    assert statuses[-1] == 503
    assert upstream.count() == 20 + 3  # failure_threshold attempts, then nothing
    assert circuit(running, "flaky", "primary")["state"] == "open"


def test_primary_down_failover_tertiary_fallback_and_recovery(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    moto_s3.put_object(s3_bucket, "k.txt", b"from tertiary (moto)")
    with broken_s3(b"from primary") as primary, broken_s3(b"from secondary") as secondary:
        tertiary = bucket_config(moto_s3, "t", s3_bucket)["s3"]
        running = proxy(
            {
                "buckets": [
                    {
                        "name": "ha",
                        "path_prefix": "/ha",
                        "s3": {
                            "region": moto_s3.region,
                            "retry": FAST_RETRY,
                            "circuit_breaker": {
                                "failure_threshold": 1,
                                "timeout_seconds": 1,
                                "success_threshold": 1,
                            },
                            "replicas": [
                                replica("primary", 1, primary),
                                replica("secondary", 2, secondary),
                                {
                                    "name": "tertiary",
                                    "priority": 3,
                                    **{k: tertiary[k] for k in ("bucket", "endpoint")},
                                    **{k: tertiary[k] for k in ("access_key", "secret_key")},
                                },
                            ],
                        },
                    }
                ]
            }
        )
        assert running.get("/ha/k.txt").body == b"from primary"
        primary.stop()
        assert running.get("/ha/k.txt").body == b"from secondary"
        running.wait_for_log("Bucket ha: failing over from replica primary to secondary")
        assert circuit(running, "ha", "primary")["state"] in ("open", "half_open")
        secondary.mode = "error"
        assert running.get("/ha/k.txt").body == b"from tertiary (moto)"  # signed, moto checked
        failovers = (
            'yatagarasu_replica_failovers_total{bucket="ha",from_replica="%s",to_replica="%s"}'
        )
        assert running.metric(failovers % ("primary", "secondary")) == 1
        assert running.metric(failovers % ("secondary", "tertiary")) >= 1
        primary.start()
        wait_until(
            lambda: running.get("/ha/k.txt").body == b"from primary",
            timeout=20,
            what="the proxy to return to the recovered primary",
        )
        assert circuit(running, "ha", "primary")["state"] == "closed"
        assert running.get("/ha/k.txt").body == b"from primary"


def cache_settings(tmp_path: Path, redis: RedisServer | None) -> dict[str, Any]:
    layers = ["memory", "disk", *(["redis"] if redis is not None else [])]
    settings: dict[str, Any] = {
        "enabled": True,
        "cache_layers": layers,
        # objects above 0.1 MiB are kept on disk (and in Redis), not in memory
        "memory": {"max_cache_size_mb": 8, "max_item_size_mb": 0.1},
        "disk": {"enabled": True, "cache_dir": str(tmp_path / "disk-cache")},
    }
    if redis is not None:
        settings["redis"] = {"enabled": True, "redis_url": redis.url, "timeout_ms": 300}
    return settings


def test_redis_killed_disk_and_memory_keep_serving(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    redis_server: RedisServer,
) -> None:
    small, large = b"small object", bytes(range(256)) * 1024  # 256 KiB: disk, not memory
    moto_s3.put_object(s3_bucket, "small.txt", small, CacheControl="max-age=600")
    moto_s3.put_object(s3_bucket, "large.bin", large, CacheControl="max-age=600")
    running = proxy(
        {
            "cache": cache_settings(tmp_path, redis_server),
            "buckets": [bucket_config(moto_s3, "pub", s3_bucket)],
        }
    )
    for key in ("small.txt", "large.bin"):
        assert running.get(f"/pub/{key}").header("X-Cache") == "MISS"
    # the disk layer writes behind the responses: both objects are on disk before Redis dies
    wait_until(
        lambda: running.metric('yatagarasu_cache_items{layer="disk"}') == 2,
        timeout=30,
        what="both objects in the disk layer",
    )
    redis_server.kill()
    moto_s3.clear_requests()
    for _ in range(3):
        first, second = running.get("/pub/small.txt"), running.get("/pub/large.bin")
        assert (first.body, first.header("X-Cache")) == (small, "HIT")
        assert (second.body, second.header("X-Cache")) == (large, "HIT")
    assert moto_s3.count_requests("GET", s3_bucket) == 0
    assert running.metric('yatagarasu_cache_hits_total{bucket="pub",layer="disk"}') >= 3
    assert running.metric('yatagarasu_cache_hits_total{bucket="pub",layer="memory"}') >= 3


def test_disk_cache_full_is_logged_and_serving_continues(
    tmp_path: Path,
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    body = bytes(range(256)) * 2048  # 512 KiB
    moto_s3.put_object(s3_bucket, "big.bin", body, CacheControl="max-age=600")
    settings = {
        "enabled": True,
        "cache_layers": ["disk"],
        "disk": {"enabled": True, "cache_dir": str(tmp_path / "disk-cache")},
    }
    running = proxy({"cache": settings, "buckets": [bucket_config(moto_s3, "pub", s3_bucket)]})
    # The disk is "full" for the proxy: no file of its may grow past 256 KiB any more (EFBIG;
    # Python ignores SIGXFSZ). Its log file is far below that.
    assert running.log_path.stat().st_size < 128 * 1024
    limit = 256 * 1024
    resource.prlimit(running.pid, resource.RLIMIT_FSIZE, (limit, limit))
    moto_s3.clear_requests()
    for _ in range(3):
        response = running.get("/pub/big.bin")
        assert (response.status, response.body) == (200, body)
        # MISS, then BYPASS while the disk layer rests after its failure: never a HIT
        assert response.header("X-Cache") in ("MISS", "BYPASS")
    assert moto_s3.count_requests("GET", s3_bucket, "big.bin") == 3
    running.wait_for_log("disk cache write failed for pub/big.bin")
    assert "File too large" in running.log_text()
    assert running.metric('yatagarasu_cache_errors_total{layer="disk"}') >= 1
    # each failed write removes its temporary file; the last one may still be finishing
    wait_until(
        lambda: not list((tmp_path / "disk-cache").rglob("*.tmp*")),
        timeout=30,
        what="the failed writes' temporary files removed",
    )


def test_s3_truncating_the_body_aborts_the_client_and_is_never_cached(
    proxy: Callable[..., ProxyProcess], upstream: BrokenS3, tmp_path: Path
) -> None:
    upstream.body = b"x" * 100_000
    upstream.mode, upstream.truncate_at = "truncate", 10_000
    settings = {"enabled": True, "memory": {"max_cache_size_mb": 8, "max_item_size_mb": 1}}
    running = proxy({"cache": settings, "buckets": [broken_bucket("cut", upstream)]})
    for _ in range(2):
        # aborted (the reset may even overtake the head), never a complete-looking 200
        with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
            http_request("GET", running.url("/cut/k"), timeout=10)
    assert upstream.count() == 2  # the first, cut-short body was not stored
    upstream.mode = "ok"
    response = running.get("/cut/k")
    assert (response.body, response.header("X-Cache")) == (upstream.body, "MISS")
    assert running.get("/cut/k").header("X-Cache") == "HIT"
