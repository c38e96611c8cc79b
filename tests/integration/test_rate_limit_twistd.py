"""
Rate limits and the concurrency limit through the real ``twistd yatagarasu`` process, against
moto (SigV4 checked) and, for the cluster-wide limits, a real redis-server started here.

The limits are chosen so that no assertion depends on time: refills of one request per
hundreds of seconds, so that what a burst allows is the whole story while a test runs.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from devharness.moto_s3 import MotoS3Server
from devharness.proxy_config import bucket_config
from devharness.redis_server import RedisServer
from devharness.twistd import ProxyProcess
from devharness.waiting import wait_until

SECRET = "rate-limit-integration-secret-" + "x" * 40
#: one request per 1000 s: nothing refills while a test runs
SLOW = 0.001


def limits(**rules: Any) -> dict[str, Any]:
    return {"trusted_proxies": ["127.0.0.1"], "rate_limit": rules}


def status_of(proxy: ProxyProcess, path: str, ip: str, **headers: str) -> int:
    return proxy.get(path, headers={"X-Forwarded-For": ip, **headers}).status


@pytest.fixture
def seeded(moto_s3: MotoS3Server, s3_bucket: str) -> str:
    moto_s3.put_object(s3_bucket, "k.txt", b"hello")
    return s3_bucket


def test_per_ip_429_with_json_and_fields_and_the_metric(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    seeded: str,
) -> None:
    config = make_proxy_config({"pub": seeded})
    config["server"].update(limits(per_ip={"requests_per_second": SLOW, "burst": 2}))
    p = proxy(config)
    first = p.get("/pub/k.txt", headers={"X-Forwarded-For": "198.51.100.1"})
    assert (first.status, first.body) == (200, b"hello")
    assert first.header("RateLimit-Limit") is None  # headers_on_allowed is off by default
    assert status_of(p, "/pub/k.txt", "198.51.100.1") == 200
    refused = p.get("/pub/k.txt", headers={"X-Forwarded-For": "198.51.100.1"})
    assert refused.status == 429
    document = refused.json()
    assert document["error"] == "Too Many Requests" and document["status"] == 429
    assert document["request_id"] == refused.header("X-Request-ID")
    assert refused.header("Content-Type") == "application/json"
    assert int(refused.header("Retry-After") or 0) >= 1
    assert refused.header("RateLimit-Limit") == "2"
    assert refused.header("RateLimit-Remaining") == "0"
    assert int(refused.header("RateLimit-Reset") or 0) >= 1
    # another address (resolved from X-Forwarded-For of the trusted proxy) is not limited
    assert status_of(p, "/pub/k.txt", "198.51.100.2") == 200
    assert p.metric('yatagarasu_rate_limited_total{bucket="pub",scope="per_ip"}') == 1.0
    assert p.metric('yatagarasu_rate_limit_keys{scope="per_ip"}') == 2.0  # two addresses
    assert p.get("/health").status == 200  # the proxy's own routes are never limited


def test_sliding_window_bucket_limit_and_headers_on_allowed(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    seeded: str,
) -> None:
    buckets = [
        bucket_config(moto_s3, "a", seeded, rate_limit={"requests_per_second": SLOW, "burst": 3}),
        bucket_config(moto_s3, "b", seeded),
    ]
    config = {
        "server": limits(algorithm="sliding_window", headers_on_allowed=True),
        "buckets": buckets,
    }
    p = proxy(config)
    allowed = [p.get("/a/k.txt", headers={"X-Forwarded-For": f"192.0.2.{i}"}) for i in range(3)]
    assert [r.status for r in allowed] == [200] * 3
    assert [r.header("RateLimit-Remaining") for r in allowed] == ["2", "1", "0"]
    assert all(r.header("RateLimit-Limit") == "3" for r in allowed)
    refused = p.get("/a/k.txt", headers={"X-Forwarded-For": "192.0.2.99"})
    assert refused.status == 429 and refused.json()["message"] == "rate limit exceeded (bucket)"
    assert status_of(p, "/b/k.txt", "192.0.2.99") == 200
    assert p.metric('yatagarasu_rate_limited_total{bucket="a",scope="bucket"}') == 1.0


def test_per_user_limit_counts_the_jwt_subject(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    seeded: str,
) -> None:
    bucket = bucket_config(moto_s3, "priv", seeded, auth={"enabled": True}, jwt={"secret": SECRET})
    config = {
        "server": limits(per_user={"requests_per_second": SLOW, "burst": 1}),
        "buckets": [bucket],
    }
    p = proxy(config)

    def bearer(sub: str) -> str:
        claims = {"sub": sub, "exp": int(time.time()) + 3600}
        return "Bearer " + jwt.encode(claims, SECRET, algorithm="HS256")

    assert status_of(p, "/priv/k.txt", "192.0.2.1", Authorization=bearer("ann")) == 200
    assert status_of(p, "/priv/k.txt", "192.0.2.2", Authorization=bearer("ann")) == 429
    assert status_of(p, "/priv/k.txt", "192.0.2.2", Authorization=bearer("bob")) == 200
    assert status_of(p, "/priv/k.txt", "192.0.2.2") == 401  # anonymous: never a user's count
    assert p.metric('yatagarasu_rate_limited_total{bucket="priv",scope="per_user"}') == 1.0


def redis_limits(redis: RedisServer, **rules: Any) -> dict[str, Any]:
    return limits(backend="redis", redis={"redis_url": redis.url, "timeout_ms": 500}, **rules)


def test_two_processes_on_one_redis_hold_the_combined_limit(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    seeded: str,
    redis_server: RedisServer,
) -> None:
    burst = 10
    config = make_proxy_config({"pub": seeded})
    config["server"].update(
        redis_limits(redis_server, **{"global": {"requests_per_second": SLOW, "burst": burst}})
    )
    one = proxy(config)
    config = make_proxy_config({"pub": seeded})
    config["server"].update(
        redis_limits(redis_server, **{"global": {"requests_per_second": SLOW, "burst": burst}})
    )
    two = proxy(config)
    assert one.port != two.port
    statuses = [status_of((one, two)[i % 2], "/pub/k.txt", f"192.0.2.{i}") for i in range(16)]
    assert statuses.count(200) == burst, statuses
    assert statuses.count(429) == 16 - burst
    assert statuses[:burst] == [200] * burst  # the first ones, from both processes
    refused = one.metric('yatagarasu_rate_limited_total{bucket="pub",scope="global"}')
    refused += two.metric('yatagarasu_rate_limited_total{bucket="pub",scope="global"}')
    assert refused == 16 - burst
    keys = redis_server.query("KEYS", "yatagarasu:rl:*")
    assert keys == [b"yatagarasu:rl:global:token_bucket:"]
    # Redis forgets the script (SCRIPT FLUSH): it is loaded again, the count carries on
    assert redis_server.query("SCRIPT", "FLUSH") == "OK"
    assert status_of(one, "/pub/k.txt", "192.0.2.200") == 429
    assert status_of(two, "/pub/k.txt", "192.0.2.201") == 429


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
def test_the_redis_script_answers_like_the_local_limiter(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    seeded: str,
    redis_server: RedisServer,
    algorithm: str,
) -> None:
    rule = {"requests_per_second": SLOW, "burst": 3}
    answers = {}
    for backend in ("local", "redis"):
        config = make_proxy_config({"pub": seeded})
        server = limits(algorithm=algorithm, headers_on_allowed=True, per_ip=rule)
        if backend == "redis":
            server = redis_limits(
                redis_server, algorithm=algorithm, headers_on_allowed=True, per_ip=rule
            )
        config["server"].update(server)
        p = proxy(config)
        responses = [p.get("/pub/k.txt", headers={"X-Forwarded-For": "192.0.2.5"}) for _ in "1234"]
        answers[backend] = [
            (r.status, r.header("RateLimit-Limit"), r.header("RateLimit-Remaining"))
            for r in responses
        ]
        refused = responses[-1]
        assert int(refused.header("Retry-After") or 0) >= 1
        assert int(refused.header("RateLimit-Reset") or 0) >= 1
    assert answers["local"] == [(200, "3", "2"), (200, "3", "1"), (200, "3", "0"), (429, "3", "0")]
    assert answers["redis"] == answers["local"]
    key = f"yatagarasu:rl:per_ip:{algorithm}:192.0.2.5"
    assert redis_server.query("EXISTS", key) == 1
    assert redis_server.query("PTTL", key) > 0  # it expires: Redis memory stays bounded


@pytest.mark.parametrize("fail_mode", ["fail_open", "fail_closed"])
def test_redis_killed_follows_the_fail_mode_counted_and_logged_once(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    seeded: str,
    redis_server: RedisServer,
    fail_mode: str,
) -> None:
    config = make_proxy_config({"pub": seeded})
    config["server"].update(
        redis_limits(
            redis_server, fail_mode=fail_mode, per_ip={"requests_per_second": SLOW, "burst": 1}
        )
    )
    p = proxy(config)
    assert status_of(p, "/pub/k.txt", "192.0.2.1") == 200
    assert status_of(p, "/pub/k.txt", "192.0.2.1") == 429
    redis_server.kill()
    during = [p.get("/pub/k.txt", headers={"X-Forwarded-For": "192.0.2.1"}) for _ in range(5)]
    expected = 200 if fail_mode == "fail_open" else 503
    assert [r.status for r in during] == [expected] * 5
    if fail_mode == "fail_closed":
        assert all(r.header("Retry-After") == "1" for r in during)
        assert during[0].json()["message"] == "rate limits cannot be checked"
    outcome = "allowed" if fail_mode == "fail_open" else "refused"
    series = f'yatagarasu_rate_limit_backend_unavailable_total{{outcome="{outcome}"}}'
    assert p.metric(series) == 5.0
    log = p.log_text()
    assert log.count("rate limits: Redis at") == 1, log[-3000:]
    assert "cannot answer" in log
    # Redis back (empty): limits apply again, and that is logged once
    redis_server.start()

    def limiting_again() -> bool:
        return status_of(p, "/pub/k.txt", "192.0.2.1") == 429

    wait_until(limiting_again, timeout=30.0, interval=0.5, what="limits applied again")
    p.wait_for_log("answers again")
    assert p.log_text().count("rate limits: Redis at") == 2


def test_max_concurrent_requests_holds_a_slot_until_the_stream_ended(
    proxy: Callable[..., ProxyProcess],
    make_proxy_config: Callable[..., dict[str, Any]],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    size = 32 * 1024 * 1024
    moto_s3.put_object(s3_bucket, "big.bin", b"\x07" * size)
    moto_s3.put_object(s3_bucket, "small.txt", b"small")
    config = make_proxy_config({"pub": s3_bucket})
    config["server"]["max_concurrent_requests"] = 1
    p = proxy(config)
    with socket.create_connection((p.address, p.port), timeout=10) as slow:
        slow.sendall(b"GET /pub/big.bin HTTP/1.1\r\nHost: proxy\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = slow.recv(1024)
            assert chunk, "the proxy closed the connection"
            head += chunk
        assert head.startswith(b"HTTP/1.1 200 ")
        # the stream has started and cannot have finished: this client stopped reading, and
        # 32 MiB is more than the kernel buffers of both sockets hold
        busy = p.get("/pub/small.txt")
        assert busy.status == 503
        assert busy.header("Retry-After") == "1"
        assert busy.json()["message"] == "too many concurrent requests"
        received = len(head.partition(b"\r\n\r\n")[2])
        while received < size:
            chunk = slow.recv(1 << 20)
            assert chunk, "the stream ended early"
            received += len(chunk)
        assert received == size
    # the stream ended: the slot is free again

    def free() -> bool:
        return p.get("/pub/small.txt").status == 200

    wait_until(free, timeout=10.0, interval=0.1, what="the slot freed")
    assert json.loads(p.get("/pub/nope").body)["status"] == 404
