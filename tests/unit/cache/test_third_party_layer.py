"""The cache layer contract, run against a third-party layer installed beside yatagarasu."""

from __future__ import annotations

from twisted.internet.task import Clock

from yatagarasu import plugins
from yatagarasu.discovery import available, find
from yatagarasu.interfaces import ICacheLayerFactory
from yatagarasu.testing import CacheLayerContract


class TestThirdPartyDictLayer(CacheLayerContract):
    def setup_method(self) -> None:
        factory = find(ICacheLayerFactory, "dict", "cache.cache_layers[0]", plugins)
        settings = {"max_entries": 100, "max_item_size_kb": 128}
        clock = Clock()
        clock.advance(1_700_000_000)  # the contract's entries were stored at this time
        self.layer = factory.build(settings, "cache.dict", clock)


def test_every_installed_layer_is_discovered() -> None:
    assert {"memory", "disk", "redis", "dict"} <= set(available(ICacheLayerFactory, plugins))
