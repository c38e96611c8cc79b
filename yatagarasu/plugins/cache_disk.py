"""Plugin dropin: the built-in ``disk`` cache layer (``cache.cache_layers: [memory, disk]``)."""

from yatagarasu.cache.disk import DiskCacheFactory

disk = DiskCacheFactory()
