"""
An authorizer as a third party would write it: each subject reads the keys under its own
prefix (``<subject>/...``), everyone reads the shared prefixes.

Configuration (a bucket's ``authorization``)::

    authorization:
      type: owner_prefix
      shared_prefixes: ["public/"]   # default: none
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.plugin import IPlugin
from zope.interface import implementer

from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import IAuthorizer, IAuthorizerFactory
from yatagarasu.values import AuthorizationQuery, Decision


@implementer(IAuthorizer)
class OwnerPrefix:
    name = "owner_prefix"

    def __init__(self, shared: tuple[str, ...]) -> None:
        self._shared = shared

    def authorize(self, query: AuthorizationQuery) -> Deferred[Decision]:
        subject = query.identity.subject if query.identity is not None else None
        if query.key.startswith(self._shared):
            return succeed(Decision(True, "allow", "a shared prefix"))
        if subject and query.key.startswith(f"{subject}/"):
            return succeed(Decision(True, "allow", "the subject's own prefix"))
        return succeed(Decision(False, "deny", f"{subject or 'anonymous'} may not read this key"))

    def close(self) -> Deferred[None]:
        return succeed(None)


@implementer(IPlugin, IAuthorizerFactory)
class OwnerPrefixFactory:
    name = "owner_prefix"

    def build(self, settings: Mapping[str, Any], path: str, reactor: Any) -> OwnerPrefix:
        unknown = set(settings) - {"shared_prefixes"}
        if unknown:
            raise ConfigError(f"{path}.{sorted(unknown)[0]}", "unknown key")
        shared = settings.get("shared_prefixes", [])
        if not isinstance(shared, list) or not all(isinstance(p, str) and p for p in shared):
            raise ConfigError(f"{path}.shared_prefixes", "must be a list of key prefixes")
        return OwnerPrefix(tuple(shared))
