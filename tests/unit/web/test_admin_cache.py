"""The cache admin routes (yatagarasu.web.admin_cache): purge and stats."""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest

from tests.unit.cache_harness import SECRET, START, cached, fetch, obj
from tests.unit.fakes import bucket_entry, parse_response


def admin_header() -> str:
    tok = jwt.encode(
        {"sub": "ops", "role": "admin", "exp": int(START) + 10**9}, SECRET, algorithm="HS256"
    )
    return f"Authorization: Bearer {tok}"


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
