"""
The memory cache layer: entries kept in this process, bounded in bytes, W-TinyLFU policy.

Policy (W-TinyLFU, size-aware, after Einziger, Friedman & Manes, "TinyLFU: A Highly Efficient
Cache Admission Policy", and Caffeine):

- A small LRU **admission window** (1 % of the bytes) takes every new entry, so a burst of
  new-but-popular objects gets a chance to build up frequency.
- The rest is the **main** region, a segmented LRU: entries enter *probation*; a hit there
  moves them to *protected* (80 % of the main bytes); protected overflow falls back to the
  head of probation.
- When the window overflows, its oldest entry is a *candidate* for the main region. If it does
  not fit, victims are taken from the cold end of probation (then protected) until enough
  bytes would be freed, and the candidate is admitted only if its estimated frequency is
  higher than the **sum** of theirs (the hits it would bring against the hits they would lose).
  Otherwise the candidate is dropped and the main region is left alone. A one-off scan
  therefore passes through the window without displacing the hot set.
- Frequencies: every ``get`` (hit or miss) counts as an access; ``set`` does not. Accesses to
  keys that are not cached go to a :class:`FrequencySketch`, a count-min sketch of small
  saturating counters behind a doorkeeper (the first sighting of a key only sets a doorkeeper
  slot). A cached entry carries its own exact counter, seeded from the sketch when it is
  stored and handed back to the sketch when it leaves, so a hit costs an attribute increment
  instead of four sketch updates. Counters stop at 15, so that a formerly hot entry ages out
  within four periods. Every ``10 x width`` accesses everything is halved ("aging",
  so that the counts follow changes in popularity): the sketch at once, the entries' counters
  lazily (an epoch number).

Bodies of :data:`MAPPED_BODY_MIN` bytes and more are kept in sealed memory files
(:class:`~yatagarasu.values.MappedBody`), so that a hit is sent with ``sendfile``, while the
process has file descriptors to spare for them (a quarter of ``RLIMIT_NOFILE``); smaller bodies
(and large ones beyond that) stay ``bytes``.

The hit path costs one dict lookup, one O(1) ``OrderedDict`` move and a counter increment.
Entries past ``retain_until`` are dropped when they are looked up (a miss), and count as
free victims when room is made. Purges use a per-bucket index, so purging a bucket or a
prefix costs O(entries of that bucket).
"""

from __future__ import annotations

import math
import resource
from collections import OrderedDict
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.plugin import IPlugin
from zope.interface import implementer

from yatagarasu.config.typed import from_raw, join
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import (
    ICacheLayer,
    ICacheLayerFactory,
    ICacheWriter,
    IDefaultTtlCacheLayer,
    IImmediateCacheLayer,
    ISwitchableCacheLayer,
)
from yatagarasu.values import MIB, CacheEntry, CacheKey, LayerStats, MappedBody

#: The smallest body kept in a memory file: below it, copying the body into the socket costs
#: less than the second system call that ``sendfile`` takes (``bench/sendfile_probe.py``).
MAPPED_BODY_MIN = 64 * 1024


def mapped_body_budget() -> int:
    """:returns: how many memory files the process may hold: a quarter of its fd limit."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return (1 << 20 if soft == resource.RLIM_INFINITY else soft) // 4


_WINDOW = 0
_PROBATION = 1
_PROTECTED = 2

#: Internal key: (bucket, key, variant). Tuples of str hash and compare in C, which a
#: dataclass key does not.
_IKey = tuple[str, str, str]


@dataclass(frozen=True)
class MemoryCacheSettings:
    """
    ``cache.memory``: the memory layer's settings.

    :ivar enabled: accepted for compatibility with the seed configuration; the layer is used
        when ``cache.cache_layers`` names it.
    :ivar max_cache_size_mb: the bound on the bytes of all entries (body plus headers), MiB.
    :ivar max_item_size_mb: the largest entry the layer accepts, MiB.
    :ivar default_ttl_seconds: the default freshness of every caching bucket when
        ``cache.ttl_seconds`` is not set, wherever memory is in ``cache_layers`` (read by
        :mod:`yatagarasu.cache.from_config`).
    """

    enabled: bool = True
    max_cache_size_mb: float = 1024.0
    max_item_size_mb: float = 10.0
    default_ttl_seconds: float = 3600.0

    def check(self, path: str) -> None:
        """
        :param path: dotted key path of these settings.
        :raises ConfigError: when a size is not positive, the item cap is larger than the
            cache, or the TTL is negative.
        """
        for name in ("max_cache_size_mb", "max_item_size_mb"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(join(path, name), f"must be a positive number, got {value}")
        if self.max_item_size_mb > self.max_cache_size_mb:
            raise ConfigError(
                join(path, "max_item_size_mb"),
                f"must not be larger than max_cache_size_mb ({self.max_item_size_mb} > "
                f"{self.max_cache_size_mb})",
            )
        if not math.isfinite(self.default_ttl_seconds) or self.default_ttl_seconds < 0:
            raise ConfigError(
                join(path, "default_ttl_seconds"),
                f"must be zero or more, got {self.default_ttl_seconds}",
            )

    @property
    def max_cache_size(self) -> int:
        """The byte bound."""
        return int(self.max_cache_size_mb * MIB)

    @property
    def max_item_size(self) -> int:
        """The per-entry cap in bytes."""
        return int(self.max_item_size_mb * MIB)


class FrequencySketch:
    """
    Approximate access counts: a count-min sketch (4 rows of counters saturating at 15, one
    byte each) behind a doorkeeper. The owner calls :meth:`age` every :attr:`sample_size`
    accesses.

    Keys are given as their ``hash()``; the rows use different bit ranges of it.
    """

    DEPTH = 4
    MAX_WIDTH = 1 << 24

    def __init__(self, width: int, max_count: int = 15) -> None:
        """
        :param width: counters per row (rounded up to a power of two, at least 64).
        :param max_count: where counters saturate (at most 255).
        """
        self.max_count = min(max_count, 255)
        self._resize(width)

    def _resize(self, width: int) -> None:
        bits = max(6, (width - 1).bit_length())
        self.width = 1 << bits
        self._mask = self.width - 1
        # Row r uses bits [r * step, r * step + bits) of the 64-bit hash.
        self._step = min(16, (64 - bits) // (self.DEPTH - 1))
        self._table = bytearray(self.DEPTH * self.width)
        self._door = bytearray(self.width * 2)
        self._door_mask = len(self._door) - 1
        self.sample_size = 10 * self.width

    def ensure_capacity(self, items: int) -> bool:
        """
        Grow (and reset) the sketch when the cache holds more entries than it has counters.

        :param items: how many entries the cache holds.
        :returns: whether the sketch was grown.
        """
        if items > self.width and self.width < self.MAX_WIDTH:
            self._resize(min(2 * items, self.MAX_WIDTH))
            return True
        return False

    def increment(self, h: int) -> None:
        """
        Count one access.

        :param h: ``hash()`` of the key.
        """
        d = (h ^ (h >> 29)) & self._door_mask
        door = self._door
        if not door[d]:
            door[d] = 1
        else:
            table = self._table
            mask = self._mask
            step = self._step
            width = self.width
            top = self.max_count
            i = h & mask
            if table[i] < top:
                table[i] += 1
            i = width + ((h >> step) & mask)
            if table[i] < top:
                table[i] += 1
            i = 2 * width + ((h >> (2 * step)) & mask)
            if table[i] < top:
                table[i] += 1
            i = 3 * width + ((h >> (3 * step)) & mask)
            if table[i] < top:
                table[i] += 1

    def frequency(self, h: int) -> int:
        """
        :param h: ``hash()`` of the key.
        :returns: the estimated number of recent accesses.
        """
        table = self._table
        mask = self._mask
        step = self._step
        width = self.width
        count = min(
            table[h & mask],
            table[width + ((h >> step) & mask)],
            table[2 * width + ((h >> (2 * step)) & mask)],
            table[3 * width + ((h >> (3 * step)) & mask)],
        )
        return count + self._door[(h ^ (h >> 29)) & self._door_mask]

    def raise_to(self, h: int, count: int) -> None:
        """
        Make the estimate for a key at least ``count`` (an entry leaving the cache hands its
        count back).

        :param h: ``hash()`` of the key.
        :param count: its access count.
        """
        if count <= 0:
            return
        self._door[(h ^ (h >> 29)) & self._door_mask] = 1
        count = min(count - 1, self.max_count)
        table = self._table
        mask = self._mask
        step = self._step
        for row in range(self.DEPTH):
            i = row * self.width + ((h >> (row * step)) & mask)
            if table[i] < count:
                table[i] = count

    def age(self) -> None:
        """Halve every counter and clear the doorkeeper."""
        self._table = self._table.translate(_HALVE)
        self._door = bytearray(len(self._door))


_HALVE = bytes(i >> 1 for i in range(256))


class _Node:
    """
    One entry. ``freq`` counts its accesses while it is cached (seeded from the sketch when
    it is stored); it is halved lazily: ``freq >> (current epoch - epoch)``.
    """

    __slots__ = ("bucket", "entry", "epoch", "freq", "ikey", "segment", "size")

    def __init__(
        self,
        ikey: _IKey,
        entry: CacheEntry,
        size: int,
        bucket: _Bucket,
        freq: int,
        epoch: int,
    ) -> None:
        self.ikey = ikey
        self.entry = entry
        self.size = size
        self.segment = _WINDOW
        self.bucket = bucket
        self.freq = freq
        self.epoch = epoch


class _Bucket:
    """Per-bucket index and counters."""

    __slots__ = ("evictions", "hits", "misses", "nodes", "size")

    def __init__(self) -> None:
        self.nodes: dict[_IKey, _Node] = {}
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.size = 0

    def stats(self, max_size: int) -> LayerStats:
        return LayerStats(
            hits=self.hits,
            misses=self.misses,
            evictions=self.evictions,
            current_size_bytes=self.size,
            current_item_count=len(self.nodes),
            max_size_bytes=max_size,
        )


@implementer(IImmediateCacheLayer, ISwitchableCacheLayer, IDefaultTtlCacheLayer)
class MemoryCacheLayer:
    """
    The memory layer (see the module docstring for the policy).

    :ivar name: ``"memory"``.
    :ivar max_item_size: the per-entry cap, bytes.
    :ivar max_size: the bound on the bytes of all entries.
    :ivar default_ttl_seconds: the configured default freshness lifetime.
    :ivar enabled: as configured.
    """

    name = "memory"
    #: Share of the bytes given to the admission window.
    WINDOW_SHARE = 0.01
    #: Share of the main region's bytes given to the protected segment.
    PROTECTED_SHARE = 0.80
    #: Where an entry's access counter stops (so that a formerly hot entry ages out).
    FREQUENCY_CAP = 15
    #: Assumed average entry size, to size the frequency sketch at first.
    ASSUMED_ENTRY_SIZE = 4096

    def __init__(self, settings: MemoryCacheSettings, clock: IReactorTime) -> None:
        """
        :param settings: validated settings.
        :param clock: wall time is ``clock.seconds()``.
        """
        self.settings = settings
        self.enabled = settings.enabled
        self.default_ttl_seconds = settings.default_ttl_seconds
        self.max_size = settings.max_cache_size
        self.max_item_size = settings.max_item_size
        self._seconds = clock.seconds
        self._window_max = int(self.max_size * self.WINDOW_SHARE)
        self._main_max = self.max_size - self._window_max
        self._protected_max = int(self._main_max * self.PROTECTED_SHARE)
        self._nodes: dict[_IKey, _Node] = {}
        self._window: OrderedDict[_IKey, _Node] = OrderedDict()
        self._probation: OrderedDict[_IKey, _Node] = OrderedDict()
        self._protected: OrderedDict[_IKey, _Node] = OrderedDict()
        self._window_bytes = 0
        self._main_bytes = 0
        self._protected_bytes = 0
        self._buckets: dict[str, _Bucket] = {}
        self._sketch = FrequencySketch(
            min(1 << 22, max(1024, self.max_size // self.ASSUMED_ENTRY_SIZE))
        )
        self._epoch = 0
        self._accesses = 0
        self._sample_size = self._sketch.sample_size
        self._freq_cap = self.FREQUENCY_CAP
        self._mapped_budget = mapped_body_budget()

    # -- ICacheLayer ------------------------------------------------------------------------

    def get(self, key: CacheKey) -> Deferred[CacheEntry | None]:
        """See :meth:`ICacheLayer.get`."""
        return succeed(self.lookup(key))

    def set(self, key: CacheKey, entry: CacheEntry) -> Deferred[None]:
        """See :meth:`ICacheLayer.set`."""
        self.store(key, entry)
        return succeed(None)

    def open_writer(self, key: CacheKey) -> ICacheWriter | None:
        """The memory layer does not stream: always ``None``."""
        return None

    def delete(self, key: CacheKey) -> Deferred[bool]:
        """See :meth:`ICacheLayer.delete`."""
        node = self._nodes.get((key.bucket, key.key, key.variant))
        if node is None:
            return succeed(False)
        self._remove(node)
        return succeed(True)

    def purge(self, bucket: str | None, prefix: str | None) -> Deferred[int]:
        """See :meth:`ICacheLayer.purge`; O(entries of the bucket)."""
        if bucket is None:
            count = len(self._nodes)
            self._clear()
            return succeed(count)
        index = self._buckets.get(bucket)
        if index is None:
            return succeed(0)
        if prefix is None or prefix == "":
            doomed = list(index.nodes.values())
        else:
            doomed = [n for n in index.nodes.values() if n.ikey[1].startswith(prefix)]
        for node in doomed:
            self._remove(node, remember=False)
        return succeed(len(doomed))

    def stats(self, bucket: str | None) -> LayerStats:
        """See :meth:`ICacheLayer.stats`."""
        if bucket is not None:
            index = self._buckets.get(bucket)
            return index.stats(self.max_size) if index else LayerStats(max_size_bytes=self.max_size)
        hits = misses = evictions = 0
        for index in self._buckets.values():
            hits += index.hits
            misses += index.misses
            evictions += index.evictions
        return LayerStats(
            hits=hits,
            misses=misses,
            evictions=evictions,
            current_size_bytes=self.size,
            current_item_count=len(self._nodes),
            max_size_bytes=self.max_size,
        )

    def services(self) -> list[IService]:
        """:returns: ``[]``: the memory layer needs no background work."""
        return []

    def close(self) -> Deferred[None]:
        """Drop every entry."""
        self._clear()
        return succeed(None)

    # -- synchronous API (IImmediateCacheLayer, benchmarks, tests) ------------------------

    @property
    def size(self) -> int:
        """Bytes currently held (never more than :attr:`max_size`)."""
        return self._window_bytes + self._main_bytes

    @property
    def item_count(self) -> int:
        """Entries currently held."""
        return len(self._nodes)

    def lookup(self, key: CacheKey) -> CacheEntry | None:
        """
        :meth:`get` without the Deferred.

        :param key: what to look up.
        :returns: the entry, or ``None``.
        """
        self._accesses += 1
        if self._accesses >= self._sample_size:
            self._age()
        ikey = (key.bucket, key.key, key.variant)
        node = self._nodes.get(ikey)
        if node is None:
            self._sketch.increment(hash(ikey))
            index = self._buckets.get(key.bucket)
            if index is None:
                index = self._buckets[key.bucket] = _Bucket()
            index.misses += 1
            return None
        entry = node.entry
        if entry.retain_until <= self._seconds():
            node.bucket.misses += 1
            self._remove(node)  # hands its count back to the sketch: it is still popular
            self._sketch.increment(hash(ikey))
            return None
        node.bucket.hits += 1
        if node.epoch != self._epoch:
            node.freq >>= min(self._epoch - node.epoch, 62)
            node.epoch = self._epoch
        if node.freq < self._freq_cap:
            node.freq += 1
        segment = node.segment
        if segment == _PROTECTED:
            self._protected.move_to_end(ikey)
        elif segment == _PROBATION:
            del self._probation[ikey]
            self._protected[ikey] = node
            node.segment = _PROTECTED
            self._protected_bytes += node.size
            if self._protected_bytes > self._protected_max:
                self._demote()
        else:
            self._window.move_to_end(ikey)
        return entry

    def store(self, key: CacheKey, entry: CacheEntry) -> bool:
        """
        :meth:`set` without the Deferred.

        :param key: the key.
        :param entry: the entry.
        :returns: whether the entry is held after the call (it may be dropped by admission
            later, when it leaves the window).
        """
        size = entry.size
        ikey = (key.bucket, key.key, key.variant)
        old = self._nodes.get(ikey)
        if size > self.max_item_size:
            if old is not None:
                self._remove(old)
            return False
        body = entry.body
        if (
            isinstance(body, bytes)
            and len(body) >= MAPPED_BODY_MIN
            and MappedBody.open_files < self._mapped_budget
        ):
            with suppress(OSError):  # out of descriptors or memory for files: kept as bytes
                entry = entry.with_body(MappedBody(body))
        if old is not None:
            return self._replace(old, entry, size)
        index = self._buckets.get(key.bucket)
        if index is None:
            index = self._buckets[key.bucket] = _Bucket()
        sketch = self._sketch
        node = _Node(ikey, entry, size, index, sketch.frequency(hash(ikey)), self._epoch)
        self._nodes[ikey] = node
        index.nodes[ikey] = node
        index.size += size
        self._window[ikey] = node
        self._window_bytes += size
        if self._window_bytes > self._window_max:
            self._evict_from_window()
        if len(self._nodes) > sketch.width and sketch.ensure_capacity(len(self._nodes)):
            self._sample_size = sketch.sample_size
            self._accesses = 0
        return ikey in self._nodes

    # -- policy -----------------------------------------------------------------------------

    def _replace(self, node: _Node, entry: CacheEntry, size: int) -> bool:
        """Replace an entry in place, keeping its segment; evict from main if it grew."""
        delta = size - node.size
        node.entry = entry
        node.size = size
        node.bucket.size += delta
        ikey = node.ikey
        if node.segment == _WINDOW:
            self._window.move_to_end(ikey)
            self._window_bytes += delta
            if self._window_bytes > self._window_max:
                self._evict_from_window()
            return ikey in self._nodes
        self._main_bytes += delta
        if node.segment == _PROTECTED:
            self._protected.move_to_end(ikey)
            self._protected_bytes += delta
            if self._protected_bytes > self._protected_max:
                self._demote()
        else:
            self._probation.move_to_end(ikey)
        while self._main_bytes > self._main_max:
            victim = self._coldest_main()
            if victim is None:  # pragma: no cover - main can always shrink
                break
            self._evict(victim)
        return ikey in self._nodes

    def _coldest_main(self) -> _Node | None:
        for segment in (self._probation, self._protected):
            if segment:
                return next(iter(segment.values()))
        return None

    def _demote(self) -> None:
        """Move the oldest protected entries to the recent end of probation until it fits."""
        protected = self._protected
        probation = self._probation
        while self._protected_bytes > self._protected_max and protected:
            ikey, node = protected.popitem(last=False)
            node.segment = _PROBATION
            probation[ikey] = node
            self._protected_bytes -= node.size

    def _evict_from_window(self) -> None:
        """Move the window's overflow, oldest first, into main through admission."""
        window = self._window
        while self._window_bytes > self._window_max and window:
            _, candidate = window.popitem(last=False)
            self._window_bytes -= candidate.size
            self._admit(candidate)

    def _admit(self, candidate: _Node) -> None:
        """Admit a candidate into probation, or drop it if the victims are worth more."""
        need = self._main_bytes + candidate.size - self._main_max
        if need > 0:
            wanted = self._frequency(candidate)
            now = self._seconds()
            victims: list[_Node] = []
            freed = 0
            worth = 0
            for segment in (self._probation, self._protected):
                for victim in segment.values():
                    victims.append(victim)
                    freed += victim.size
                    if victim.entry.retain_until > now:
                        worth += self._frequency(victim)
                    if freed >= need or worth >= wanted:
                        break
                if freed >= need or worth >= wanted:
                    break
            if freed < need or worth >= wanted:
                self._drop(candidate)
                return
            for victim in victims:
                self._evict(victim)
        candidate.segment = _PROBATION
        self._probation[candidate.ikey] = candidate
        self._main_bytes += candidate.size

    def _frequency(self, node: _Node) -> int:
        return node.freq >> min(self._epoch - node.epoch, 62)

    def _age(self) -> None:
        """Halve the sketch; entries' counts are halved lazily by epoch."""
        self._sketch.age()
        self._epoch += 1
        self._accesses = 0

    def _drop(self, node: _Node) -> None:
        """Forget a candidate that was refused (already out of the window's list)."""
        self._sketch.raise_to(hash(node.ikey), self._frequency(node))
        del self._nodes[node.ikey]
        index = node.bucket
        del index.nodes[node.ikey]
        index.size -= node.size
        index.evictions += 1

    def _evict(self, node: _Node) -> None:
        self._remove(node)
        node.bucket.evictions += 1

    def _remove(self, node: _Node, remember: bool = True) -> None:
        """Unlink an entry; its access count goes back to the sketch if ``remember``."""
        ikey = node.ikey
        if remember:
            self._sketch.raise_to(hash(ikey), self._frequency(node))
        del self._nodes[ikey]
        index = node.bucket
        del index.nodes[ikey]
        index.size -= node.size
        segment = node.segment
        if segment == _WINDOW:
            del self._window[ikey]
            self._window_bytes -= node.size
        elif segment == _PROBATION:
            del self._probation[ikey]
            self._main_bytes -= node.size
        else:
            del self._protected[ikey]
            self._main_bytes -= node.size
            self._protected_bytes -= node.size

    def _clear(self) -> None:
        self._nodes.clear()
        self._window.clear()
        self._probation.clear()
        self._protected.clear()
        self._window_bytes = self._main_bytes = self._protected_bytes = 0
        for index in self._buckets.values():
            index.nodes.clear()
            index.size = 0


@implementer(IPlugin, ICacheLayerFactory)
class MemoryCacheFactory:
    """Builds the memory layer from ``cache.memory`` (see :class:`MemoryCacheSettings`)."""

    name = "memory"

    def build(self, settings: Mapping[str, Any], path: str, reactor: Any) -> ICacheLayer:
        """See :meth:`ICacheLayerFactory.build`."""
        return MemoryCacheLayer(from_raw(MemoryCacheSettings, settings, path), reactor)
