"""The cache layer contract, run against a third-party layer installed beside yatagarasu."""

from __future__ import annotations

from typing import Any

import pytest

from yatagarasu import plugins
from yatagarasu.discovery import available, find
from yatagarasu.interfaces import ICacheLayerFactory
from yatagarasu.testing import CacheLayerContract


class TestThirdPartyDictLayer(CacheLayerContract):
    @pytest.fixture(autouse=True)
    def _layer(self, reactor: Any) -> None:
        factory = find(ICacheLayerFactory, "dict", "cache.cache_layers[0]", plugins)
        settings = {"max_entries": 100, "max_item_size_kb": 128}
        self.layer = factory.build(settings, "cache.dict", reactor)


def test_every_installed_layer_is_discovered() -> None:
    assert {"memory", "disk", "redis", "dict"} <= set(available(ICacheLayerFactory, plugins))
