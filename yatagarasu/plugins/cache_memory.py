"""Plugin dropin: the built-in ``memory`` cache layer (``cache.cache_layers: [memory]``)."""

from yatagarasu.cache.memory import MemoryCacheFactory

memory = MemoryCacheFactory()
