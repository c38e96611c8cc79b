"""The memory cache layer: contract, byte bound, policy, settings and plugin discovery."""

from __future__ import annotations

import errno
import os
import random
from collections import OrderedDict
from typing import Any

import pytest
from twisted.internet.task import Clock
from twisted.plugin import IPlugin
from zope.interface.verify import verifyObject

from tests.unit.tiered_harness import memory
from yatagarasu import plugins
from yatagarasu.cache import memory as memory_module
from yatagarasu.cache.memory import (
    MAPPED_BODY_MIN,
    MIB,
    FrequencySketch,
    MemoryCacheFactory,
    MemoryCacheLayer,
    MemoryCacheSettings,
)
from yatagarasu.discovery import find
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import ICacheLayer, ICacheLayerFactory, IImmediateCacheLayer
from yatagarasu.testing import FAR_FUTURE, CacheLayerContract
from yatagarasu.testing import sample_entry as entry
from yatagarasu.values import CacheEntry, CacheKey, MappedBody

NOW = 1_750_000_000.0


def same_entry(found: CacheEntry, stored: CacheEntry) -> bool:
    """Whether the layer gave back what was stored (a large body now in a memory file)."""
    if isinstance(found.body, MappedBody):
        return (found.headers, found.body.read(), found.retain_until) == (
            stored.headers,
            stored.body,
            stored.retain_until,
        )
    return found is stored


def make_layer(clock: Clock | None = None, **settings: Any) -> MemoryCacheLayer:
    if clock is None:
        clock = Clock()
        clock.advance(NOW)
    return MemoryCacheLayer(MemoryCacheSettings(**settings), clock)


def sized(total: int, **overrides: Any) -> CacheEntry:
    """An entry whose ``size`` (what the layer counts) is exactly ``total`` bytes."""
    overhead = entry(b"").size
    return entry(b"x" * (total - overhead), **overrides)


class TestMemoryLayerContract(CacheLayerContract):
    def setup_method(self) -> None:
        self.layer = make_layer(max_cache_size_mb=4, max_item_size_mb=1)


# -- the layer's own behaviour -------------------------------------------------------------


def test_deferreds_are_already_fired_and_open_writer_is_none() -> None:
    layer = make_layer()
    key = CacheKey("b", "k")
    results: list[Any] = []
    layer.set(key, entry()).addCallback(results.append)
    layer.get(key).addCallback(results.append)
    layer.delete(key).addCallback(results.append)
    layer.purge(None, None).addCallback(results.append)
    layer.close().addCallback(results.append)
    assert results[0] is None
    assert isinstance(results[1], CacheEntry)
    assert results[2:] == [True, 0, None]
    assert layer.open_writer(key) is None


def test_settings_are_exposed() -> None:
    layer = make_layer(max_cache_size_mb=0.5, max_item_size_mb=0.25, default_ttl_seconds=60)
    assert layer.name == "memory"
    assert layer.max_size == MIB // 2
    assert layer.max_item_size == MIB // 4
    assert layer.default_ttl_seconds == 60
    assert layer.enabled is True
    assert layer.stats(None).max_size_bytes == MIB // 2


def test_per_item_cap() -> None:
    layer = make_layer(max_cache_size_mb=1, max_item_size_mb=0.1)
    cap = layer.max_item_size
    assert layer.store(CacheKey("b", "fits"), sized(cap)) is True
    assert layer.store(CacheKey("b", "too-big"), sized(cap + 1)) is False
    assert layer.lookup(CacheKey("b", "fits")) is not None
    assert layer.lookup(CacheKey("b", "too-big")) is None
    # A replacement too large to keep drops the outdated entry rather than serving it.
    assert layer.store(CacheKey("b", "fits"), sized(cap + 1)) is False
    assert layer.lookup(CacheKey("b", "fits")) is None
    assert layer.stats(None).current_item_count == 0
    assert layer.stats(None).current_size_bytes == 0


def test_expired_past_retention_is_dropped_on_access_and_counted_as_a_miss() -> None:
    clock = Clock()
    clock.advance(1000.0)
    layer = make_layer(clock)
    key = CacheKey("b", "k")
    layer.store(key, entry(expires_at=1010.0, retain_until=1100.0))
    clock.advance(50.0)  # expired, still retained
    found = layer.lookup(key)
    assert found is not None and not found.is_fresh(clock.seconds())
    clock.advance(50.0)  # now == retain_until
    assert layer.lookup(key) is None
    stats = layer.stats("b")
    assert (stats.hits, stats.misses, stats.current_item_count) == (1, 1, 0)
    assert stats.current_size_bytes == 0
    assert stats.evictions == 0


def test_eviction_count() -> None:
    layer = make_layer(max_cache_size_mb=0.5, max_item_size_mb=0.1)
    item = 10_000
    stored = 200
    for i in range(stored):
        key = CacheKey("a" if i % 2 else "b", f"obj/{i}")
        assert layer.lookup(key) is None
        layer.store(key, sized(item))
    total = layer.stats(None)
    held = total.current_item_count
    assert held == layer.item_count <= layer.max_size // item
    assert held >= (layer.max_size // item) - 2
    assert total.evictions == stored - held
    per_bucket = [layer.stats(b) for b in ("a", "b")]
    assert sum(s.evictions for s in per_bucket) == total.evictions
    assert sum(s.current_item_count for s in per_bucket) == held
    assert total.misses == stored and total.hits == 0


def test_purge_uses_the_bucket_index_and_keeps_counters() -> None:
    layer = make_layer()
    for bucket in ("a", "b"):
        for i in range(10):
            layer.store(CacheKey(bucket, f"img/{i}"), entry())
            layer.store(CacheKey(bucket, f"doc/{i}"), entry())
    layer.lookup(CacheKey("a", "img/1"))
    assert layer.purge("nope", None).result == 0
    assert layer.purge("a", "img/").result == 10
    assert layer.purge("a", "").result == 10
    assert layer.stats("a").current_item_count == 0
    assert layer.stats("a").current_size_bytes == 0
    assert layer.stats("a").hits == 1
    assert layer.stats("b").current_item_count == 20
    assert layer.purge(None, None).result == 20
    assert layer.size == 0 and layer.item_count == 0
    assert layer.stats(None).hits == 1


def test_stats_of_an_unknown_bucket_are_zero() -> None:
    layer = make_layer(max_cache_size_mb=2)
    stats = layer.stats("never-seen")
    assert (stats.hits, stats.misses, stats.current_item_count) == (0, 0, 0)
    assert stats.max_size_bytes == 2 * MIB


def test_byte_bound_holds_under_random_load() -> None:
    """Random gets, sets (new and replacing), deletes, purges and clock jumps, seeded."""
    rng = random.Random(4)
    clock = Clock()
    clock.advance(NOW)
    layer = make_layer(clock, max_cache_size_mb=0.5, max_item_size_mb=0.125)
    last_set: dict[CacheKey, CacheEntry] = {}
    keys = [CacheKey(rng.choice("abc"), f"{rng.choice(['x/', 'y/'])}{i}") for i in range(300)]
    for step in range(6000):
        key = keys[min(int(rng.paretovariate(0.8)) - 1, len(keys) - 1)]
        op = rng.random()
        if op < 0.6:
            found = layer.lookup(key)
            if found is not None:
                assert same_entry(found, last_set[key])
                assert found.retain_until > clock.seconds()
        elif op < 0.93:
            size = rng.choice([rng.randint(200, 4000), rng.randint(4000, 140_000)])
            retain = clock.seconds() + rng.choice([5.0, 1000.0, FAR_FUTURE])
            stored = entry(b"z" * size, retain_until=retain)
            layer.store(key, stored)
            last_set[key] = stored
        elif op < 0.97:
            layer.delete(key)
            assert layer.lookup(key) is None
        elif op < 0.98:
            layer.purge(key.bucket, rng.choice([None, "x/"]))
        else:
            clock.advance(rng.choice([1.0, 10.0]))
        total = layer.stats(None)
        assert layer.size == total.current_size_bytes <= layer.max_size, step
        per_bucket = [layer.stats(b) for b in "abc"]
        assert sum(s.current_size_bytes for s in per_bucket) == total.current_size_bytes
        assert sum(s.current_item_count for s in per_bucket) == total.current_item_count
    assert layer.stats(None).evictions > 0


class _LRU:
    """A byte-bounded LRU, the reference a plain cache would be."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.items: OrderedDict[CacheKey, int] = OrderedDict()
        self.used = 0

    def get(self, key: CacheKey) -> bool:
        if key in self.items:
            self.items.move_to_end(key)
            return True
        return False

    def set(self, key: CacheKey, size: int) -> None:
        while self.used + size > self.capacity and self.items:
            self.used -= self.items.popitem(last=False)[1]
        self.items[key] = size
        self.used += size


def test_hot_set_survives_a_one_off_scan_that_flushes_lru() -> None:
    layer = make_layer(max_cache_size_mb=1, max_item_size_mb=0.1)
    lru = _LRU(layer.max_size)
    item = 8 * 1024
    hot = [CacheKey("b", f"hot/{i}") for i in range(50)]  # 40 % of the bytes
    scan = [CacheKey("b", f"scan/{i}") for i in range(500)]  # 4x the cache, each seen once

    def access(key: CacheKey) -> tuple[bool, bool]:
        ours = layer.lookup(key) is not None
        if not ours:
            layer.store(key, sized(item))
        theirs = lru.get(key)
        if not theirs:
            lru.set(key, item)
        return ours, theirs

    for _ in range(5):
        for key in hot:
            access(key)
    for key in scan:
        access(key)
    after = [access(key) for key in hot]
    assert sum(ours for ours, _ in after) == len(hot)
    assert sum(theirs for _, theirs in after) == 0
    assert layer.size <= layer.max_size


def test_follows_a_change_of_popularity() -> None:
    """Aging lets a new hot set replace an old one that is no longer requested."""
    layer = make_layer(max_cache_size_mb=1, max_item_size_mb=0.1)
    item = 8 * 1024
    old = [CacheKey("b", f"old/{i}") for i in range(60)]
    new = [CacheKey("b", f"new/{i}") for i in range(100)]  # old + new do not fit

    def round_of(keys: list[CacheKey]) -> int:
        hits = 0
        for key in keys:
            if layer.lookup(key) is None:
                layer.store(key, sized(item))
            else:
                hits += 1
        return hits

    for _ in range(100):
        round_of(old)
    for _ in range(400):  # 40,000 accesses: several aging periods
        hits = round_of(new)
    assert hits >= 95


def test_frequency_sketch() -> None:
    sketch = FrequencySketch(1000)
    assert sketch.width == 1024
    assert sketch.sample_size == 10 * 1024
    h = hash(("b", "k", ""))
    assert sketch.frequency(h) == 0
    sketch.increment(h)  # the doorkeeper only
    assert sketch.frequency(h) == 1
    for _ in range(10):
        sketch.increment(h)
    assert sketch.frequency(h) == 11
    sketch.age()
    assert sketch.frequency(h) == 5  # halved; the doorkeeper is cleared
    for _ in range(1000):
        sketch.increment(h)
    assert sketch.frequency(h) == 16  # saturated counters plus the doorkeeper
    other = hash(("b", "other", ""))
    sketch.raise_to(other, 7)
    assert sketch.frequency(other) >= 7
    sketch.ensure_capacity(5000)
    assert sketch.width >= 5000 and sketch.frequency(h) == 0


# -- settings and the plugin ---------------------------------------------------------------


def build(settings: Any) -> MemoryCacheLayer:
    layer = MemoryCacheFactory().build(settings, "cache.memory", Clock())
    assert isinstance(layer, MemoryCacheLayer)
    return layer


def test_defaults() -> None:
    for settings in (None, {}):
        layer = build(settings)
        assert layer.max_size == 1024 * MIB
        assert layer.max_item_size == 10 * MIB
        assert layer.default_ttl_seconds == 3600
        assert layer.enabled is True


def test_seed_example_settings_load() -> None:
    layer = build(
        {
            "enabled": True,
            "max_item_size_mb": 10,
            "max_cache_size_mb": 1024,
            "default_ttl_seconds": 3600,
        }
    )
    assert layer.max_item_size == 10 * MIB
    assert layer.max_size == 1024 * MIB


@pytest.mark.parametrize(
    ("settings", "path", "words"),
    [
        ({"max_item_size_mbs": 1}, "cache.memory.max_item_size_mbs", "did you mean"),
        ({"max_cache_size": 1}, "cache.memory.max_cache_size", "did you mean"),
        (
            {"max_item_size_mb": 20, "max_cache_size_mb": 10},
            "cache.memory.max_item_size_mb",
            "larger",
        ),
        ({"max_item_size_mb": 2000}, "cache.memory.max_item_size_mb", "max_cache_size_mb"),
        ({"max_cache_size_mb": 0}, "cache.memory.max_cache_size_mb", "positive"),
        ({"max_cache_size_mb": -5}, "cache.memory.max_cache_size_mb", "positive"),
        ({"max_item_size_mb": 0}, "cache.memory.max_item_size_mb", "positive"),
        ({"max_cache_size_mb": "big"}, "cache.memory.max_cache_size_mb", "number"),
        ({"max_cache_size_mb": float("inf")}, "cache.memory.max_cache_size_mb", "positive"),
        ({"default_ttl_seconds": -1}, "cache.memory.default_ttl_seconds", "zero or more"),
        ({"enabled": "yes"}, "cache.memory.enabled", "true or false"),
        ([1, 2], "cache.memory", "mapping"),
    ],
)
def test_bad_settings_name_their_dotted_path(settings: Any, path: str, words: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build(settings)
    assert caught.value.path == path
    assert words in caught.value.message


def test_fractional_sizes() -> None:
    layer = build({"max_cache_size_mb": 0.5, "max_item_size_mb": 0.5})
    assert layer.max_size == layer.max_item_size == MIB // 2


def test_plugin_is_discovered() -> None:
    factory = find(ICacheLayerFactory, "memory", "cache.cache_layers[0]", plugins)
    assert verifyObject(ICacheLayerFactory, factory)
    assert IPlugin.providedBy(factory)
    assert factory.name == "memory"
    layer = factory.build({"max_cache_size_mb": 8, "max_item_size_mb": 1}, "cache.memory", Clock())
    assert verifyObject(ICacheLayer, layer)
    assert layer.max_size == 8 * MIB


def test_sketch_grows_with_the_number_of_entries() -> None:
    layer = make_layer(max_cache_size_mb=1, max_item_size_mb=0.1)
    width = layer._sketch.width
    for i in range(width + 10):
        key = CacheKey("b", f"tiny/{i}")
        layer.lookup(key)
        layer.store(key, entry(b""))
    assert layer.item_count > width
    assert layer._sketch.width >= 2 * layer.item_count - 20
    assert layer._sample_size == layer._sketch.sample_size
    assert layer.size <= layer.max_size


def test_entries_past_retention_are_free_victims() -> None:
    """Popular entries that may no longer be served do not keep new entries out."""
    clock = Clock()
    clock.advance(NOW)
    layer = make_layer(clock, max_cache_size_mb=1, max_item_size_mb=0.1)
    item = 8 * 1024
    old = [CacheKey("b", f"old/{i}") for i in range(120)]
    for _ in range(5):
        for key in old:
            if layer.lookup(key) is None:
                layer.store(key, sized(item, retain_until=NOW + 10))
    clock.advance(20)
    new = [CacheKey("b", f"new/{i}") for i in range(20)]
    for key in new:
        assert layer.lookup(key) is None
        layer.store(key, sized(item))
    assert sum(layer.lookup(key) is not None for key in new) == len(new)
    assert layer.stats(None).evictions > 0


def test_a_popular_entry_dropped_past_retention_keeps_its_popularity() -> None:
    clock = Clock()
    clock.advance(NOW)
    layer = make_layer(clock, max_cache_size_mb=1, max_item_size_mb=0.1)
    item = 8 * 1024
    hot = CacheKey("b", "hot")
    for _ in range(20):
        if layer.lookup(hot) is None:
            layer.store(hot, sized(item, retain_until=NOW + 10))
    warm = [CacheKey("b", f"warm/{i}") for i in range(140)]  # more than fits
    for _ in range(3):
        for key in warm:
            if layer.lookup(key) is None:
                layer.store(key, sized(item))
    clock.advance(20)
    assert layer.lookup(hot) is None  # past retention: dropped
    layer.store(hot, sized(item))  # refetched
    for i in range(3):  # push it out of the admission window
        layer.store(CacheKey("b", f"cold/{i}"), sized(item))
    assert layer.lookup(hot) is not None


def test_the_memory_layer_answers_at_once() -> None:
    assert verifyObject(IImmediateCacheLayer, memory(Clock()))


# -- large bodies in memory files ----------------------------------------------------------


def test_a_large_body_is_kept_in_a_sealed_memory_file_and_a_small_one_as_bytes() -> None:
    layer = make_layer()
    large, small = b"L" * MAPPED_BODY_MIN, b"s" * (MAPPED_BODY_MIN - 1)
    layer.store(CacheKey("b", "large"), entry(large))
    layer.store(CacheKey("b", "small"), entry(small))
    found = layer.lookup(CacheKey("b", "large"))
    assert found is not None and isinstance(found.body, MappedBody)
    assert found.length == len(large) and found.body.read() == large
    assert found.body.read(10, 5) == b"LLLLL" and found.body.read(len(large) - 2) == b"LL"
    with pytest.raises(PermissionError):  # sealed: no one can change a body in flight
        os.pwrite(found.body.fileno(), b"x", 0)
    tiny = layer.lookup(CacheKey("b", "small"))
    assert tiny is not None and tiny.body is small
    assert layer.size == entry(large).size + entry(small).size  # accounted as before


def test_memory_files_are_closed_when_their_entries_go() -> None:
    layer = make_layer()
    before = MappedBody.open_files
    for n in range(3):
        layer.store(CacheKey("b", f"k{n}"), entry(bytes([n]) * MAPPED_BODY_MIN))
    assert MappedBody.open_files == before + 3
    held = layer.lookup(CacheKey("b", "k0"))  # a connection still sending it
    layer.delete(CacheKey("b", "k1"))
    assert MappedBody.open_files == before + 2
    layer.purge("b", None)
    assert MappedBody.open_files == before + 1  # the one still held stays open
    assert held is not None and held.body.read(0, 3) == b"\0\0\0"
    del held
    assert MappedBody.open_files == before


def test_beyond_the_descriptor_budget_large_bodies_stay_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(memory_module, "mapped_body_budget", lambda: MappedBody.open_files + 1)
    layer = make_layer()
    bodies = [bytes([n]) * MAPPED_BODY_MIN for n in range(2)]
    for n, body in enumerate(bodies):
        layer.store(CacheKey("b", f"k{n}"), entry(body))
    first, second = layer.lookup(CacheKey("b", "k0")), layer.lookup(CacheKey("b", "k1"))
    assert first is not None and isinstance(first.body, MappedBody)
    assert second is not None and second.body is bodies[1]


def test_a_body_that_cannot_be_put_in_a_file_stays_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_more_files(name: str, flags: int) -> int:
        raise OSError(errno.EMFILE, "Too many open files")

    monkeypatch.setattr(os, "memfd_create", no_more_files)
    layer = make_layer()
    body = b"x" * MAPPED_BODY_MIN
    layer.store(CacheKey("b", "k"), entry(body))
    found = layer.lookup(CacheKey("b", "k"))
    assert found is not None and found.body is body
