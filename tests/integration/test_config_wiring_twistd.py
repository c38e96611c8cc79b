"""Configuration keys that must work end to end (or be refused), through the real twistd."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt

from devharness.moto_s3 import MotoS3Server
from devharness.proxy_config import bucket_config
from devharness.twistd import ProxyProcess, TwistdResult
from devharness.waiting import wait_until

SECRET = "wiring-secret-" + "z" * 48
ADMIN_CLAIMS = [{"claim": "role", "operator": "equals", "value": "admin"}]


def bearer(claims: dict[str, Any], secret: str = SECRET) -> dict[str, str]:
    payload = {"sub": "ops", "exp": int(time.time()) + 600, **claims}
    return {"Authorization": f"Bearer {jwt.encode(payload, secret, algorithm='HS256')}"}


def test_disabled_top_level_jwt_is_not_used_by_buckets(
    twistd_check: Callable[..., TwistdResult], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    bucket = bucket_config(moto_s3, "pub", s3_bucket, auth={"enabled": True})
    enabled = twistd_check({"jwt": {"secret": SECRET, "enabled": True}, "buckets": [bucket]})
    assert enabled.returncode == 0, enabled.output
    disabled = twistd_check({"jwt": {"secret": SECRET, "enabled": False}, "buckets": [bucket]})
    assert disabled.returncode == 1
    assert "buckets[0].auth.enabled" in disabled.output
    assert "jwt.enabled: false" in disabled.output
    wrong_type = twistd_check({"jwt": {"secret": SECRET, "enabled": "no"}, "buckets": [bucket]})
    assert wrong_type.returncode == 1
    assert "jwt.enabled: expected true or false" in wrong_type.output


def test_disabled_top_level_jwt_turns_the_admin_api_off(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    moto_s3.put_object(s3_bucket, "own.txt", b"own")
    own_secret = "own-" + "k" * 48
    own = bucket_config(
        moto_s3, "own", s3_bucket, auth={"enabled": True}, jwt={"secret": own_secret}
    )
    running = proxy({
        "jwt": {"enabled": False, "secret": SECRET, "admin_claims": ADMIN_CLAIMS},
        "cache": {"enabled": True},
        "buckets": [own],
    })  # fmt: skip
    stats = running.get("/admin/cache/stats", headers=bearer({"role": "admin"}))
    assert stats.status == 403
    assert "disabled" in stats.json()["message"]
    # a bucket's own jwt still works
    assert running.get("/own/own.txt", headers=bearer({}, own_secret)).body == b"own"
    assert running.get("/own/own.txt", headers=bearer({})).status == 401


def test_memory_default_ttl_applies_when_memory_is_not_the_first_layer(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    etag = moto_s3.put_object(s3_bucket, "ttl.txt", b"no cache-control here")
    cache = {
        "enabled": True,
        "cache_layers": ["disk", "memory"],
        "stale_if_error_seconds": 300,
        "disk": {"enabled": True, "cache_dir": str(tmp_path / "disk")},
        "memory": {"default_ttl_seconds": 0},
    }
    running = proxy({"cache": cache, "buckets": [bucket_config(moto_s3, "pub", s3_bucket)]})
    moto_s3.clear_requests()
    first = running.get("/pub/ttl.txt")
    second = running.get("/pub/ttl.txt")
    assert (first.header("X-Cache"), second.header("X-Cache")) == ("MISS", "REVALIDATED")
    assert second.header("ETag") == etag
    assert moto_s3.count_requests("GET", s3_bucket, "ttl.txt") == 2


def test_memory_default_ttl_without_a_memory_layer_is_refused(
    twistd_check: Callable[..., TwistdResult], moto_s3: MotoS3Server, s3_bucket: str, tmp_path: Path
) -> None:
    cache = {
        "enabled": True,
        "cache_layers": ["disk"],
        "disk": {"enabled": True, "cache_dir": str(tmp_path / "disk")},
        "memory": {"default_ttl_seconds": 60},
    }
    result = twistd_check({"cache": cache, "buckets": [bucket_config(moto_s3, "pub", s3_bucket)]})
    assert result.returncode == 1
    assert "cache.memory.default_ttl_seconds: the memory layer is not in" in result.output


def test_ready_names_the_one_upstream_primary_with_its_origin(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    moto_s3.put_object(s3_bucket, "r.txt", b"r")
    running = proxy({"buckets": [bucket_config(moto_s3, "pub", s3_bucket)]})
    assert running.get("/pub/r.txt").status == 200
    ready = running.get("/ready").json()
    assert ready["backends"]["pub"] == {
        "status": "healthy",
        "replicas": {
            "primary": {
                "state": "closed",
                "endpoint": moto_s3.endpoint_url,
                "priority": 0,
                "consecutive_failures": 0,
                "last_error": None,
                "credentials": {
                    "source": "static",
                    "state": "ready",
                    "expires_in_seconds": None,
                    "last_error": None,
                },
            }
        },
    }


def test_the_reload_route_and_sighup_reload(
    proxy: Callable[..., ProxyProcess], moto_s3: MotoS3Server, s3_bucket: str
) -> None:
    running = proxy({
        "jwt": {"secret": SECRET, "admin_claims": ADMIN_CLAIMS},
        "cache": {"enabled": True},
        "buckets": [bucket_config(moto_s3, "pub", s3_bucket)],
    })  # fmt: skip
    reload = running.request("POST", "/admin/reload", headers=bearer({"role": "admin"}))
    assert (reload.status, reload.header("Content-Type")) == (200, "application/json")
    assert reload.json()["generation"] == 2
    unknown = running.request("POST", "/admin/reloads", headers=bearer({"role": "admin"}))
    assert (unknown.status, unknown.header("Content-Type")) == (404, "application/json")
    assert unknown.json()["error"] == "Not Found"
    assert unknown.json()["message"] == "no such admin route"
    running.send_signal(signal.SIGHUP)
    wait_until(lambda: "reloaded: generation 3" in running.log_text(), timeout=20)
    assert running.get("/health").status == 200
