"""Tiered caches on a Clock, shared by the cache and web unit tests."""

from __future__ import annotations

from twisted.internet.task import Clock

from yatagarasu.cache.memory import MemoryCacheLayer, MemoryCacheSettings


def memory(clock: Clock) -> MemoryCacheLayer:
    return MemoryCacheLayer(MemoryCacheSettings(), clock)
