"""
Redis Sentinel failover through the real twistd proxy: a master and a replica (``--replicaof``)
and one sentinel, all private redis-servers on free ports; moto with SigV4 checking.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest

from devharness.install_hint import INSTALL_HINT
from devharness.moto_s3 import MotoS3Server
from devharness.proxy_config import bucket_config
from devharness.redis_server import RedisSentinel, RedisServer
from devharness.twistd import ProxyProcess
from devharness.waiting import StartupError, wait_until

pytestmark = pytest.mark.integration

SECRET = "sentinel-admin-secret-" + "z" * 48
#: Larger than the memory layer's max_item_size_mb (1), smaller than Redis' (10).
BIG = bytes(range(256)) * 8192
#: Seconds any one phase of the failover may take on a loaded machine.
PHASE_TIMEOUT = 60.0


def admin() -> dict[str, str]:
    token = jwt.encode(
        {"sub": "ops", "role": "admin", "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
    )
    return {"Authorization": f"Bearer {token}"}


def config(moto: MotoS3Server, bucket: str, sentinel: RedisSentinel, layers: list[str]) -> Any:
    return {
        "cache": {
            "enabled": True,
            "cache_layers": layers,
            "memory": {"max_cache_size_mb": 8, "max_item_size_mb": 1},
            "redis": {
                "enabled": True,
                "redis_url": (
                    f"redis+sentinel://{sentinel.host}:{sentinel.port}/{sentinel.master_name}/0"
                ),
                "timeout_ms": 300,
            },
        },
        "jwt": {
            "secret": SECRET,
            "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
        },
        "buckets": [bucket_config(moto, "pub", bucket)],
    }


def wait_for_hit(running: ProxyProcess, key: str, body: bytes) -> None:
    """GET ``/pub/<key>`` (always a 200 with ``body``) until it is served from the cache."""

    def hit() -> bool:
        response = running.get(f"/pub/{key}")
        assert (response.status, response.body) == (200, body)
        return response.header("X-Cache") == "HIT"

    wait_until(hit, timeout=PHASE_TIMEOUT, what=f"a cache hit for {key}")


def redis_key(key: str) -> str:
    return f"yatagarasu:obj:pub::{key}"


class Topology:
    """A master, its replica and a sentinel watching them."""

    def __init__(self, workdir: Path) -> None:
        self.master = RedisServer(workdir / "master")
        self.replica = RedisServer(workdir / "replica", replica_of=self.master)
        self.sentinel = RedisSentinel(workdir / "sentinel", self.master)

    def start(self) -> Topology:
        self.master.start()
        self.replica.start()
        self.sentinel.start()
        name = self.sentinel.master_name

        def ready() -> bool:
            info = self.replica.query("INFO", "replication")
            replicas = self.sentinel.query("SENTINEL", "replicas", name)
            return (
                isinstance(info, bytes)
                and b"master_link_status:up" in info
                and isinstance(replicas, list)
                and len(replicas) == 1
            )

        wait_until(ready, timeout=PHASE_TIMEOUT, interval=0.2, what="a synced replica")
        return self

    def stop(self) -> None:
        for server in (self.sentinel, self.replica, self.master):
            server.kill()


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    made = Topology(tmp_path / "redis")
    try:
        made.start()
    except (StartupError, TimeoutError) as exc:
        made.stop()
        pytest.fail(f"could not start redis-server, replica and sentinel: {exc}\n{INSTALL_HINT}")
    yield made
    made.stop()


def test_failover_misses_then_caches_into_the_promoted_replica(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    topology: Topology,
) -> None:
    master, replica, sentinel = topology.master, topology.replica, topology.sentinel
    for key in ("before.txt", "during.txt", "after.txt"):
        moto_s3.put_object(s3_bucket, key, key.encode(), CacheControl="max-age=600")
    moto_s3.put_object(s3_bucket, "big.bin", BIG, CacheControl="max-age=600")
    # A caches in Redis only (every answer says where it came from); B in memory and Redis.
    a = proxy(config(moto_s3, s3_bucket, sentinel, ["redis"]))
    b = proxy(config(moto_s3, s3_bucket, sentinel, ["memory", "redis"]))
    assert sentinel.master_address() == (master.host, master.port)

    # Entries go to the master the sentinel names.
    wait_for_hit(a, "before.txt", b"before.txt")
    assert master.query("EXISTS", redis_key("before.txt")) == 1

    # The master dies; until the sentinel has promoted the replica every request is a
    # counted miss, answered from S3.
    master.kill()
    answered = 0

    def promoted() -> bool:
        nonlocal answered
        if sentinel.master_address() == (replica.host, replica.port):
            return True
        answers = [running.get("/pub/during.txt") for running in (a, b)]
        assert [(r.status, r.body) for r in answers] == [(200, b"during.txt")] * 2
        assert answers[0].header("X-Cache") == "MISS"
        answered += 1
        return False

    wait_until(promoted, timeout=PHASE_TIMEOUT, interval=0.05, what="the sentinel's failover")
    assert answered >= 1
    assert replica.query("ROLE")[0] == b"master"
    metrics = a.get("/metrics").body
    assert b'yatagarasu_cache_errors_total{layer="redis"}' in metrics

    # The proxies find the new master by themselves: new entries are cached there.
    wait_for_hit(a, "after.txt", b"after.txt")
    assert replica.query("EXISTS", redis_key("after.txt")) == 1

    # B too: an object too large for its memory layer is cached in, and served from, the
    # promoted node.
    wait_for_hit(b, "big.bin", BIG)
    assert replica.query("EXISTS", redis_key("big.bin")) == 1

    # The purge channel follows the master too: A's purge of the bucket empties B's memory
    # layer, which holds during.txt.
    wait_until(lambda: memory_items(b) >= 1, timeout=PHASE_TIMEOUT, what="B's memory to fill")

    def purged_everywhere() -> bool:
        response = a.request("POST", "/admin/cache/purge/pub", headers=admin())
        assert response.status == 200
        return memory_items(b) == 0

    wait_until(purged_everywhere, timeout=PHASE_TIMEOUT, what="A's purge to reach B's memory")
    assert replica.query("EXISTS", redis_key("big.bin")) == 0
    assert b.get("/pub/during.txt").header("X-Cache") == "MISS"
    stats = a.get("/admin/cache/stats", headers=admin()).json()["data"]
    assert stats["layers"]["redis"]["misses"] >= answered


def memory_items(running: ProxyProcess) -> int:
    stats = running.get("/admin/cache/stats", headers=admin()).json()["data"]
    return int(stats["layers"]["memory"]["current_item_count"])


def test_manual_failover_moves_the_proxy_to_the_new_master(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    topology: Topology,
) -> None:
    master, replica, sentinel = topology.master, topology.replica, topology.sentinel
    a = proxy(config(moto_s3, s3_bucket, sentinel, ["redis"]))
    moto_s3.put_object(s3_bucket, "one.txt", b"one", CacheControl="max-age=600")
    wait_for_hit(a, "one.txt", b"one")
    assert master.query("EXISTS", redis_key("one.txt")) == 1
    # Both nodes stay up: the old master is demoted to a replica of the new one.
    assert sentinel.query("SENTINEL", "FAILOVER", sentinel.master_name) == "OK"
    wait_until(
        lambda: (
            sentinel.master_address() == (replica.host, replica.port)
            and master.query("ROLE")[0] == b"slave"
        ),
        timeout=PHASE_TIMEOUT,
        what="the manual failover",
    )
    # Entries written from now on are written to the new master (and replicated back).
    moto_s3.put_object(s3_bucket, "two.txt", b"two", CacheControl="max-age=600")

    wait_for_hit(a, "two.txt", b"two")
    assert replica.query("EXISTS", redis_key("two.txt")) == 1
    assert replica.query("ROLE")[0] == b"master"
    assert a.get("/pub/one.txt").status == 200
