"""Dropin: makes the ``apikey`` auth scheme visible to ``twisted.plugin.getPlugins``."""

from yatagarasu_apikey import ApiKeySchemeFactory

apikey = ApiKeySchemeFactory()
