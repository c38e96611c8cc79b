"""
The ``disk`` cache layer, a package: its factory here, and one module per concern --
``settings``, ``format`` (the entry file, pure), ``files`` (blocking file operations),
``scan`` (rebuild and sweep), ``layer`` (the ICacheLayer) and ``writer`` (streaming).
How it works: docs/CACHING.md ("Disk layer internals").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.plugin import IPlugin
from zope.interface import implementer

from yatagarasu.cache.disk.layer import DiskCacheLayer
from yatagarasu.cache.disk.settings import DiskCacheSettings
from yatagarasu.config.typed import from_raw
from yatagarasu.interfaces import ICacheLayer, ICacheLayerFactory


@implementer(IPlugin, ICacheLayerFactory)
class DiskCacheFactory:
    """Builds :class:`DiskCacheLayer` from ``cache.disk``."""

    name = "disk"

    def build(self, settings: Mapping[str, Any], path: str, reactor: Any) -> ICacheLayer:
        """
        :param settings: the ``cache.disk`` mapping.
        :param path: its dotted key path.
        :param reactor: the reactor (``seconds``, ``getThreadPool``).
        :returns: the layer; nothing is read or written yet.
        :raises ConfigError: naming the dotted path of a bad value.
        """
        return DiskCacheLayer(from_raw(DiskCacheSettings, settings, path), reactor)
