"""
The contract every cache layer honours (``ICacheLayer``): one mixin, run against each layer.

A test module subclasses :class:`CacheLayerContract` and defines a ``layer`` fixture returning
a fresh, empty layer whose ``max_item_size`` is at least 64 KiB. Tests run on the real reactor
(pytest-twisted), so layers may use threads or sockets.
"""

from __future__ import annotations

import os
from typing import Any

import pytest_twisted
from zope.interface.verify import verifyObject

from yatagarasu.cache.entry import CacheEntry, CacheKey, FileBody
from yatagarasu.interfaces import ICacheLayer

FAR_FUTURE = 4_000_000_000.0


def entry(body: bytes = b"hello", *, etag: bytes = b'"e1"', **overrides: Any) -> CacheEntry:
    fields: dict[str, Any] = {
        "headers": (
            (b"content-type", b"text/plain"),
            (b"etag", etag),
            (b"last-modified", b"Wed, 21 Oct 2026 07:28:00 GMT"),
        ),
        "body": body,
        "stored_at": 1_700_000_000.0,
        "expires_at": FAR_FUTURE,
        "retain_until": FAR_FUTURE,
    }
    fields.update(overrides)
    return CacheEntry(**fields)


async def body_of(found: CacheEntry) -> bytes:
    """The body bytes of an entry, whether kept in memory or in a file."""
    if isinstance(found.body, FileBody):
        with open(found.body.path, "rb") as f:
            f.seek(found.body.offset)
            return f.read(found.body.length)
    return found.body


class CacheLayerContract:
    """Subclass and provide a ``layer`` fixture."""

    def test_provides_interface(self, layer: Any) -> None:
        assert verifyObject(ICacheLayer, layer)
        assert isinstance(layer.name, str) and layer.name
        assert layer.max_item_size >= 64 * 1024

    @pytest_twisted.ensureDeferred
    async def test_miss_then_hit_roundtrips_exactly(self, layer: Any) -> None:
        key = CacheKey("b1", "dir/ünï code+plus.bin")
        assert await layer.get(key) is None
        body = os.urandom(50_000)
        stored = entry(body, etag=b'"abc-123"', revalidate=True, expires_at=1_800_000_000.5)
        await layer.set(key, stored)
        found = await layer.get(key)
        assert found is not None
        assert await body_of(found) == body
        assert found.length == len(body)
        assert found.header(b"etag") == b'"abc-123"'
        assert found.headers == stored.headers
        assert found.stored_at == stored.stored_at
        assert found.expires_at == stored.expires_at
        assert found.revalidate is True

    @pytest_twisted.ensureDeferred
    async def test_set_replaces(self, layer: Any) -> None:
        key = CacheKey("b1", "k")
        await layer.set(key, entry(b"one"))
        await layer.set(key, entry(b"two", etag=b'"e2"'))
        found = await layer.get(key)
        assert found is not None and await body_of(found) == b"two"
        assert found.header(b"etag") == b'"e2"'
        assert layer.stats(None).current_item_count == 1

    @pytest_twisted.ensureDeferred
    async def test_keys_are_distinct_per_bucket(self, layer: Any) -> None:
        await layer.set(CacheKey("a", "k"), entry(b"from a"))
        await layer.set(CacheKey("b", "k"), entry(b"from b"))
        found_a = await layer.get(CacheKey("a", "k"))
        found_b = await layer.get(CacheKey("b", "k"))
        assert found_a is not None and await body_of(found_a) == b"from a"
        assert found_b is not None and await body_of(found_b) == b"from b"

    @pytest_twisted.ensureDeferred
    async def test_delete(self, layer: Any) -> None:
        key = CacheKey("b1", "k")
        await layer.set(key, entry())
        assert await layer.delete(key) is True
        assert await layer.get(key) is None
        assert await layer.delete(key) is False

    @pytest_twisted.ensureDeferred
    async def test_purge_bucket_prefix_and_all(self, layer: Any) -> None:
        for bucket in ("a", "b"):
            for key in ("img/1", "img/2", "doc/1"):
                await layer.set(CacheKey(bucket, key), entry())
        assert await layer.purge("a", "img/") == 2
        assert await layer.get(CacheKey("a", "img/1")) is None
        assert await layer.get(CacheKey("a", "doc/1")) is not None
        assert await layer.purge("a", None) == 1
        assert await layer.get(CacheKey("b", "img/1")) is not None
        assert await layer.purge(None, None) == 3
        assert await layer.get(CacheKey("b", "doc/1")) is None
        assert layer.stats(None).current_item_count == 0

    @pytest_twisted.ensureDeferred
    async def test_stats_track_items_bytes_and_buckets(self, layer: Any) -> None:
        await layer.set(CacheKey("a", "x"), entry(b"x" * 1000))
        await layer.set(CacheKey("b", "y"), entry(b"y" * 3000))
        await layer.get(CacheKey("a", "x"))
        await layer.get(CacheKey("a", "missing"))
        total = layer.stats(None)
        assert total.current_item_count == 2
        assert total.current_size_bytes >= 4000
        assert total.hits >= 1 and total.misses >= 1
        only_b = layer.stats("b")
        assert only_b.current_item_count == 1
        assert 3000 <= only_b.current_size_bytes < total.current_size_bytes

    @pytest_twisted.ensureDeferred
    async def test_declines_items_over_its_limit(self, layer: Any) -> None:
        key = CacheKey("b1", "huge")
        await layer.set(key, entry(b"z" * (layer.max_item_size + 1)))
        assert await layer.get(key) is None

    @pytest_twisted.ensureDeferred
    async def test_entries_past_retention_are_gone(self, layer: Any) -> None:
        key = CacheKey("b1", "old")
        await layer.set(key, entry(expires_at=1.0, retain_until=2.0))
        assert await layer.get(key) is None

    @pytest_twisted.ensureDeferred
    async def test_expired_but_retained_entries_are_returned(self, layer: Any) -> None:
        key = CacheKey("b1", "stale")
        await layer.set(key, entry(expires_at=2.0, retain_until=FAR_FUTURE))
        found = await layer.get(key)
        assert found is not None and found.expires_at == 2.0
