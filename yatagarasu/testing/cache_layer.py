"""
The contract every cache layer honours (``ICacheLayer``): one mixin, run against each layer.

Subclass :class:`CacheLayerContract` and set ``self.layer`` to a fresh, empty layer before each
test (``setUp`` beside ``twisted.trial.unittest.TestCase``, or ``setup_method`` / an autouse
fixture in a pytest class run with pytest-twisted). Tests return Deferreds and run on the real
reactor, so layers may use threads or sockets.
"""

from __future__ import annotations

import os
from typing import Any

from zope.interface.verify import verifyObject

from yatagarasu.interfaces import (
    ICacheLayer,
    ICacheWriter,
    IDefaultTtlCacheLayer,
    IErrorCountingCacheLayer,
    IImmediateCacheLayer,
    IPurgeBroadcaster,
    ISwitchableCacheLayer,
)
from yatagarasu.testing.deferreds import deferred_test
from yatagarasu.values import CacheEntry, CacheKey

#: A wall-clock time no test reaches (2096): entries that stay fresh and retained.
FAR_FUTURE = 4_000_000_000.0

#: The optional interfaces a layer may provide besides ``ICacheLayer``.
OPTIONAL_INTERFACES = (
    IImmediateCacheLayer,
    IPurgeBroadcaster,
    ISwitchableCacheLayer,
    IDefaultTtlCacheLayer,
    IErrorCountingCacheLayer,
)


def sample_entry(body: bytes = b"hello", *, etag: bytes = b'"e1"', **overrides: Any) -> CacheEntry:
    """
    A cache entry as the proxy stores one: a few headers, fresh and retained until
    :data:`FAR_FUTURE`.

    :param body: the body.
    :param etag: its ``etag`` header.
    :param overrides: any other :class:`CacheEntry` field (``expires_at=...``).
    :returns: the entry.
    """
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
    """
    :param found: an entry a layer returned.
    :returns: its body bytes, whether kept as bytes, in a memory file
        (:class:`~yatagarasu.values.MappedBody`) or in a file
        (:class:`~yatagarasu.values.FileBody`).
    """
    if isinstance(found.body, bytes):
        return found.body
    return found.body.read()


class CacheLayerContract:
    """
    The promises of ``ICacheLayer`` as tests. Set :attr:`layer` before each test.

    :ivar layer: a fresh, empty layer whose ``max_item_size`` is at least 64 KiB.
    """

    layer: Any

    def test_provides_interface(self) -> None:
        assert verifyObject(ICacheLayer, self.layer)
        assert isinstance(self.layer.name, str) and self.layer.name
        assert self.layer.max_item_size >= 64 * 1024

    def test_declares_the_optional_interfaces_it_implements(self) -> None:
        """
        The proxy reads only what a layer declares: a ``lookup`` or an ``errors`` counter
        without its interface would be ignored, so having the names means declaring them.
        """
        for optional in OPTIONAL_INTERFACES:
            if optional.providedBy(self.layer):
                assert verifyObject(optional, self.layer)
            else:
                present = [name for name in optional.names() if hasattr(self.layer, name)]
                assert present != list(optional.names()), (
                    f"{type(self.layer).__name__} has {present} but does not declare "
                    f"{optional.__name__}"
                )

    @deferred_test
    async def test_streamed_body_is_visible_only_once_committed(self) -> None:
        key = CacheKey("b1", "streamed")
        writer = self.layer.open_writer(key)
        if writer is None:
            assert await self.layer.get(key) is None  # asking for a writer stores nothing
            return
        assert verifyObject(ICacheWriter, writer)
        body = os.urandom(70_000)
        writer.write(body[:30_000])
        writer.write(body[30_000:])
        assert await self.layer.get(key) is None
        await writer.commit(sample_entry(b""))
        found = await self.layer.get(key)
        assert found is not None and await body_of(found) == body

    @deferred_test
    async def test_aborted_stream_stores_nothing(self) -> None:
        key = CacheKey("b1", "aborted")
        writer = self.layer.open_writer(key)
        if writer is not None:
            writer.write(b"partial")
            writer.abort()
        assert await self.layer.get(key) is None

    @deferred_test
    async def test_miss_then_hit_roundtrips_exactly(self) -> None:
        key = CacheKey("b1", "dir/ünï code+plus.bin")
        assert await self.layer.get(key) is None
        body = os.urandom(50_000)
        stored = sample_entry(body, etag=b'"abc-123"', revalidate=True, expires_at=1_800_000_000.5)
        await self.layer.set(key, stored)
        found = await self.layer.get(key)
        assert found is not None
        assert await body_of(found) == body
        assert found.length == len(body)
        assert found.header(b"etag") == b'"abc-123"'
        assert found.headers == stored.headers
        assert found.stored_at == stored.stored_at
        assert found.expires_at == stored.expires_at
        assert found.revalidate is True

    @deferred_test
    async def test_set_replaces(self) -> None:
        key = CacheKey("b1", "k")
        await self.layer.set(key, sample_entry(b"one"))
        await self.layer.set(key, sample_entry(b"two", etag=b'"e2"'))
        found = await self.layer.get(key)
        assert found is not None and await body_of(found) == b"two"
        assert found.header(b"etag") == b'"e2"'
        assert self.layer.stats(None).current_item_count == 1

    @deferred_test
    async def test_keys_are_distinct_per_bucket(self) -> None:
        await self.layer.set(CacheKey("a", "k"), sample_entry(b"from a"))
        await self.layer.set(CacheKey("b", "k"), sample_entry(b"from b"))
        found_a = await self.layer.get(CacheKey("a", "k"))
        found_b = await self.layer.get(CacheKey("b", "k"))
        assert found_a is not None and await body_of(found_a) == b"from a"
        assert found_b is not None and await body_of(found_b) == b"from b"

    @deferred_test
    async def test_delete(self) -> None:
        key = CacheKey("b1", "k")
        await self.layer.set(key, sample_entry())
        assert await self.layer.delete(key) is True
        assert await self.layer.get(key) is None
        assert await self.layer.delete(key) is False

    @deferred_test
    async def test_purge_bucket_prefix_and_all(self) -> None:
        for bucket in ("a", "b"):
            for key in ("img/1", "img/2", "doc/1"):
                await self.layer.set(CacheKey(bucket, key), sample_entry())
        assert await self.layer.purge("a", "img/") == 2
        assert await self.layer.get(CacheKey("a", "img/1")) is None
        assert await self.layer.get(CacheKey("a", "doc/1")) is not None
        assert await self.layer.purge("a", None) == 1
        assert await self.layer.get(CacheKey("b", "img/1")) is not None
        assert await self.layer.purge(None, None) == 3
        assert await self.layer.get(CacheKey("b", "doc/1")) is None
        assert self.layer.stats(None).current_item_count == 0

    @deferred_test
    async def test_stats_track_items_bytes_and_buckets(self) -> None:
        await self.layer.set(CacheKey("a", "x"), sample_entry(b"x" * 1000))
        await self.layer.set(CacheKey("b", "y"), sample_entry(b"y" * 3000))
        await self.layer.get(CacheKey("a", "x"))
        await self.layer.get(CacheKey("a", "missing"))
        total = self.layer.stats(None)
        assert total.current_item_count == 2
        assert total.current_size_bytes >= 4000
        assert total.hits >= 1 and total.misses >= 1
        only_b = self.layer.stats("b")
        assert only_b.current_item_count == 1
        assert 3000 <= only_b.current_size_bytes < total.current_size_bytes

    @deferred_test
    async def test_declines_items_over_its_limit(self) -> None:
        key = CacheKey("b1", "huge")
        await self.layer.set(key, sample_entry(b"z" * (self.layer.max_item_size + 1)))
        assert await self.layer.get(key) is None

    @deferred_test
    async def test_entries_past_retention_are_gone(self) -> None:
        key = CacheKey("b1", "old")
        await self.layer.set(key, sample_entry(expires_at=1.0, retain_until=2.0))
        assert await self.layer.get(key) is None

    @deferred_test
    async def test_expired_but_retained_entries_are_returned(self) -> None:
        key = CacheKey("b1", "stale")
        await self.layer.set(key, sample_entry(expires_at=2.0, retain_until=FAR_FUTURE))
        found = await self.layer.get(key)
        assert found is not None and found.expires_at == 2.0
