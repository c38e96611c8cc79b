"""Dropin: makes the ``dict`` cache layer visible to ``twisted.plugin.getPlugins``."""

from yatagarasu_dictlayer import DictLayerFactory

dictlayer = DictLayerFactory()
