"""Built-in cache layer: ``redis``."""

from twisted.plugin import IPlugin
from zope.interface import provider

from yatagarasu.cache.redis import RedisLayerFactory
from yatagarasu.interfaces import ICacheLayerFactory

redis = RedisLayerFactory()
provider(IPlugin, ICacheLayerFactory)(redis)
