"""
A cache layer as a third party would write it: a plain dict, bounded by entry count.

Configuration::

    cache:
      enabled: true
      cache_layers: [dict]
      dict: {max_entries: 1000, max_item_size_kb: 512}
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred, succeed
from twisted.plugin import IPlugin
from zope.interface import implementer

from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import ICacheLayer, ICacheLayerFactory, ICacheWriter
from yatagarasu.values import CacheEntry, CacheKey, LayerStats


@implementer(ICacheLayer)
class DictLayer:
    name = "dict"

    def __init__(self, max_entries: int, max_item_size: int, clock: Any) -> None:
        self.max_item_size = max_item_size
        self._max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[CacheKey, CacheEntry] = OrderedDict()
        self._hits = self._misses = self._evictions = 0

    def get(self, key: CacheKey) -> Deferred[CacheEntry | None]:
        entry = self._entries.get(key)
        if entry is not None and self._clock.seconds() > entry.retain_until:
            del self._entries[key]
            entry = None
        if entry is None:
            self._misses += 1
            return succeed(None)
        self._hits += 1
        self._entries.move_to_end(key)
        return succeed(entry)

    def set(self, key: CacheKey, entry: CacheEntry) -> Deferred[None]:
        if entry.length > self.max_item_size or not isinstance(entry.body, bytes):
            return succeed(None)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)
            self._evictions += 1
        return succeed(None)

    def open_writer(self, key: CacheKey) -> ICacheWriter | None:
        return None

    def delete(self, key: CacheKey) -> Deferred[bool]:
        return succeed(self._entries.pop(key, None) is not None)

    def purge(self, bucket: str | None, prefix: str | None) -> Deferred[int]:
        doomed = [
            k
            for k in self._entries
            if bucket is None or (k.bucket == bucket and k.key.startswith(prefix or ""))
        ]
        for key in doomed:
            del self._entries[key]
        return succeed(len(doomed))

    def stats(self, bucket: str | None) -> LayerStats:
        entries = [e for k, e in self._entries.items() if bucket is None or k.bucket == bucket]
        return LayerStats(
            hits=self._hits,
            misses=self._misses,
            evictions=self._evictions,
            current_size_bytes=sum(e.size for e in entries),
            current_item_count=len(entries),
        )

    def services(self) -> list[IService]:
        return []

    def close(self) -> Deferred[None]:
        self._entries.clear()
        return succeed(None)


@implementer(IPlugin, ICacheLayerFactory)
class DictLayerFactory:
    name = "dict"

    def build(self, settings: Mapping[str, Any], path: str, reactor: Any) -> DictLayer:
        unknown = set(settings) - {"max_entries", "max_item_size_kb"}
        if unknown:
            raise ConfigError(f"{path}.{sorted(unknown)[0]}", "unknown key")
        max_entries = settings.get("max_entries", 1000)
        max_item_kb = settings.get("max_item_size_kb", 512)
        for name, value in (("max_entries", max_entries), ("max_item_size_kb", max_item_kb)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{path}.{name}", "must be a positive integer")
        return DictLayer(max_entries, max_item_kb * 1024, reactor)
