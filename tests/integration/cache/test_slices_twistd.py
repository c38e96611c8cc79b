"""
Sliced caching of large objects through the real twistd process, against moto with SigV4
checking on: the upstream GETs counted from moto's own request recording.
"""

from __future__ import annotations

import hashlib
import math
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devharness.moto_s3 import MotoS3Server
from devharness.redis_server import RedisServer
from devharness.twistd import ProxyProcess
from devharness.waiting import wait_until
from tests.integration.test_cache_twistd import admin, config

MIB = 1024 * 1024


def disk_entries(cache_dir: Path) -> int:
    """The committed entries of a disk cache (its write-in-progress files excluded)."""
    return sum(1 for f in cache_dir.rglob("*") if f.is_file() and ".tmp" not in f.name)


def upstream_gets(moto: MotoS3Server, bucket: str, key: str) -> list[str | None]:
    """:returns: the ``Range`` of every signed GET moto received for the object."""
    return [r.headers.get("Range") for r in moto.requests("GET", bucket, key) if r.signed]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def big_body() -> bytes:
    return random.Random(20261202).randbytes(200 * MIB)


def test_cost_of_200_random_ranges_over_a_200_mib_object(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    big_body: bytes,
) -> None:
    etag = moto_s3.put_large_object(s3_bucket, "video/big.bin", big_body)
    assert etag.endswith('-13"')  # a multipart upload: 13 parts of 16 MiB
    cache = {
        "enabled": True,
        "memory": {"max_cache_size_mb": 320, "max_item_size_mb": 8},
        "slice_size_mb": 4,
    }
    running = proxy(config(moto_s3, s3_bucket, cache))
    moto_s3.clear_requests()
    rng = random.Random(7)
    started = time.monotonic()
    for i in range(200):
        first = rng.randrange(len(big_body))
        last = min(len(big_body) - 1, first + rng.randrange(1, 2 * MIB))
        response = running.get(
            "/pub/video/big.bin", headers={"Range": f"bytes={first}-{last}"}, timeout=60
        )
        assert response.status == 206, (i, response.status, response.body[:200])
        assert response.header("Content-Range") == f"bytes {first}-{last}/{len(big_body)}"
        assert response.header("ETag") == etag
        assert sha(response.body) == sha(big_body[first : last + 1]), i
    gets = upstream_gets(moto_s3, s3_bucket, "video/big.bin")
    slices = math.ceil(len(big_body) / (4 * MIB))
    assert len(gets) <= slices + 2, gets
    assert all(g is not None and g.startswith("bytes=") for g in gets)
    # every GET asked for exactly one aligned slice
    for value in gets:
        assert value is not None
        start, end = (int(n) for n in value.removeprefix("bytes=").split("-"))
        assert start % (4 * MIB) == 0 and end - start + 1 <= 4 * MIB
    # a full GET now comes entirely from the slices, at the client's pace
    whole = running.get("/pub/video/big.bin", timeout=120)
    assert (whole.status, whole.header("Content-Length")) == (200, str(len(big_body)))
    assert sha(whole.body) == sha(big_body)
    assert whole.header("Accept-Ranges") == "bytes"
    after = upstream_gets(moto_s3, s3_bucket, "video/big.bin")
    assert len(after) <= slices + 2
    print(
        f"200 ranged reads + 1 full GET: {len(after)} upstream GETs, {slices} slices, "
        f"{time.monotonic() - started:.1f}s"
    )


def test_a_full_get_is_cut_into_slices_and_purge_removes_them(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    body = random.Random(3).randbytes(10 * MIB + 12345)
    etag = moto_s3.put_object(s3_bucket, "doc.bin", body, CacheControl="max-age=300")
    cache = {
        "enabled": True,
        "memory": {"max_cache_size_mb": 64, "max_item_size_mb": 4},
        "slice_size_mb": 1,
    }
    running = proxy(config(moto_s3, s3_bucket, cache))
    moto_s3.clear_requests()
    first = running.get("/pub/doc.bin", timeout=60)
    assert (first.status, first.header("X-Cache"), sha(first.body)) == (200, "MISS", sha(body))
    assert upstream_gets(moto_s3, s3_bucket, "doc.bin") == [None]  # one plain GET
    ranged = running.get("/pub/doc.bin", headers={"Range": "bytes=1048000-3145800"})
    assert (ranged.status, ranged.header("X-Cache")) == (206, "HIT")
    assert ranged.body == body[1048000:3145801]
    assert running.get("/pub/doc.bin", headers={"If-None-Match": etag}).status == 304
    assert running.get("/pub/doc.bin", headers={"Range": "bytes=99999999-"}).status == 416
    assert len(upstream_gets(moto_s3, s3_bucket, "doc.bin")) == 1
    stats = running.get("/admin/cache/stats/pub", headers=admin()).json()["data"]
    assert stats["current_item_count"] == 12  # the manifest and 11 slices
    assert stats["slices"]["hits"] == 4 and stats["slices"]["misses"] == 0
    purged = running.request("POST", "/admin/cache/purge/pub/doc.bin", headers=admin())
    assert (purged.status, purged.json()["deleted"]) == (200, True)
    stats = running.get("/admin/cache/stats/pub", headers=admin()).json()["data"]
    assert stats["current_item_count"] == 0
    again = running.get("/pub/doc.bin", headers={"Range": "bytes=5-9"})
    assert (again.status, again.header("X-Cache"), again.body) == (206, "MISS", body[5:10])
    assert upstream_gets(moto_s3, s3_bucket, "doc.bin")[1:] == ["bytes=0-1048575"]


def test_a_changed_object_is_never_mixed(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
) -> None:
    old = random.Random(1).randbytes(3 * MIB)
    new = random.Random(2).randbytes(3 * MIB + 777)
    old_etag = moto_s3.put_object(s3_bucket, "changing.bin", old)
    cache: dict[str, Any] = {
        "enabled": True,
        "memory": {"max_cache_size_mb": 64, "max_item_size_mb": 4},
        "slice_size_mb": 1,
        "slice_threshold_mb": 1,
    }
    running = proxy(config(moto_s3, s3_bucket, cache))
    first = running.get("/pub/changing.bin", headers={"Range": "bytes=100-199"})
    assert (first.status, first.body, first.header("ETag")) == (206, old[100:200], old_etag)
    new_etag = moto_s3.put_object(s3_bucket, "changing.bin", new)  # a new version
    assert new_etag != old_etag
    # slice 1 is not cached: its fetch meets the new version, and the request starts over
    second = running.get("/pub/changing.bin", headers={"Range": f"bytes={MIB}-{MIB + 99}"})
    assert (second.status, second.header("ETag")) == (206, new_etag)
    assert second.body == new[MIB : MIB + 100]
    assert second.header("Content-Range") == f"bytes {MIB}-{MIB + 99}/{len(new)}"
    # the old slice 0 was dropped: the new version's is fetched
    third = running.get("/pub/changing.bin", headers={"Range": "bytes=100-199"})
    assert (third.body, third.header("ETag")) == (new[100:200], new_etag)
    whole = running.get("/pub/changing.bin", timeout=60)
    assert (whole.status, sha(whole.body)) == (200, sha(new))
    assert "changed while served from slices" in running.log_text()


def test_slices_in_the_disk_layer(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    tmp_path: Any,
) -> None:
    body = random.Random(5).randbytes(6 * MIB + 1)
    moto_s3.put_object(s3_bucket, "disk.bin", body)
    cache = {
        "enabled": True,
        "cache_layers": ["disk"],
        "disk": {"enabled": True, "cache_dir": str(tmp_path / "c"), "max_item_size_mb": 3},
        "slice_size_mb": 2,
    }
    running = proxy(config(moto_s3, s3_bucket, cache))
    moto_s3.clear_requests()
    first = running.get("/pub/disk.bin", headers={"Range": "bytes=3000000-5000000"})
    assert (first.status, first.body) == (206, body[3000000:5000001])
    # the disk layer writes behind the response: without this wait, a slow machine's full GET
    # finds slices 1 and 2 not committed yet and fetches them again
    wait_until(
        lambda: disk_entries(tmp_path / "c") == 3, timeout=30, what="manifest + 2 slices on disk"
    )
    whole = running.get("/pub/disk.bin", timeout=60)
    assert (whole.status, sha(whole.body)) == (200, sha(body))
    # slices 1 and 2 (the first read) then 0 and 3 (the full GET): each fetched once
    # (moto's recorder is a file its threads append to: read it until the last line is in)
    expected = sorted(
        f"bytes={i * 2 * MIB}-{min(len(body), (i + 1) * 2 * MIB) - 1}" for i in range(4)
    )
    wait_until(
        lambda: sorted(g or "" for g in upstream_gets(moto_s3, s3_bucket, "disk.bin")) == expected,
        timeout=10,
        what=f"exactly the GETs {expected}",
    )
    # the disk layer writes behind the response: wait for the manifest and the four slices
    wait_until(
        lambda: disk_entries(tmp_path / "c") == 5, timeout=30, what="manifest + 4 slices on disk"
    )
    again = running.get("/pub/disk.bin", timeout=60)
    assert (again.header("X-Cache"), sha(again.body)) == ("HIT", sha(body))
    assert len(upstream_gets(moto_s3, s3_bucket, "disk.bin")) == 4


def test_slices_shared_through_redis_and_purged_there(
    proxy: Callable[..., ProxyProcess],
    moto_s3: MotoS3Server,
    s3_bucket: str,
    redis_server: RedisServer,
) -> None:
    body = random.Random(9).randbytes(5 * MIB + 3)
    moto_s3.put_object(s3_bucket, "shared.bin", body)
    cache = {
        "enabled": True,
        "cache_layers": ["memory", "redis"],
        "memory": {"max_cache_size_mb": 64, "max_item_size_mb": 2},
        "redis": {"enabled": True, "redis_url": redis_server.url, "max_item_size_mb": 2},
        "slice_size_mb": 1,
    }
    first = proxy(config(moto_s3, s3_bucket, cache))
    second = proxy(config(moto_s3, s3_bucket, cache))
    moto_s3.clear_requests()
    whole = first.get("/pub/shared.bin", timeout=60)
    assert (whole.status, sha(whole.body)) == (200, sha(body))

    def redis_keys() -> list[bytes]:
        keys: list[bytes] = redis_server.query("KEYS", "yatagarasu:obj:*")
        return keys

    wait_until(lambda: len(redis_keys()) == 7, timeout=10, what="manifest + 6 slices in Redis")
    # the other instance finds the manifest and every slice in Redis: no upstream GET
    ranged = second.get("/pub/shared.bin", headers={"Range": f"bytes={MIB - 5}-{4 * MIB + 5}"})
    assert (ranged.status, ranged.header("X-Cache")) == (206, "HIT")
    assert ranged.body == body[MIB - 5 : 4 * MIB + 6]
    assert len(upstream_gets(moto_s3, s3_bucket, "shared.bin")) == 1
    purged = second.request("POST", "/admin/cache/purge/pub/shared.bin", headers=admin())
    assert purged.status == 200
    assert redis_keys() == []
    # the first instance heard of the purge: its memory slices are gone too
    wait_until(
        lambda: (
            first.get("/admin/cache/stats/pub", headers=admin()).json()["data"]["layers"]["memory"][
                "current_item_count"
            ]
            == 0
        ),
        timeout=10,
        what="the purge to reach the first instance's memory layer",
    )
