"""Dropin: makes the ``owner_prefix`` authorizer visible to ``twisted.plugin.getPlugins``."""

from yatagarasu_ownerprefix import OwnerPrefixFactory

owner_prefix = OwnerPrefixFactory()
