"""
A static API-key auth scheme, as a third party would write it.

Configuration (a bucket's ``auth``)::

    auth:
      enabled: true
      scheme: apikey
      settings:
        header: X-API-Key          # default
        keys: {"k-123": "alice"}   # key -> subject
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from twisted.application.service import IService
from twisted.internet.defer import Deferred, fail, succeed
from twisted.plugin import IPlugin
from twisted.web.iweb import IRequest
from zope.interface import implementer

from yatagarasu.errors import AuthenticationRequired, ConfigError, InvalidCredentials
from yatagarasu.interfaces import IAuthScheme, IAuthSchemeFactory
from yatagarasu.values import Identity


@implementer(IAuthScheme)
class ApiKeyScheme:
    name = "apikey"

    def __init__(self, header: str, keys: Mapping[str, str]) -> None:
        self._header = header.encode("latin-1")
        self._keys = dict(keys)

    def authenticate(self, request: IRequest) -> Deferred[Identity]:
        raw = request.getHeader(self._header)
        if not raw:
            return fail(AuthenticationRequired(f"{self._header.decode()} header required"))
        presented = raw.decode("latin-1") if isinstance(raw, bytes) else str(raw)
        for key, subject in self._keys.items():
            if hmac.compare_digest(key, presented):
                return succeed(Identity(subject, {"sub": subject}, "apikey"))
        return fail(InvalidCredentials("unknown API key"))

    def services(self) -> list[IService]:
        return []


@implementer(IPlugin, IAuthSchemeFactory)
class ApiKeySchemeFactory:
    name = "apikey"

    def build(self, settings: Mapping[str, Any], path: str, reactor: Any) -> ApiKeyScheme:
        unknown = set(settings) - {"header", "keys"}
        if unknown:
            raise ConfigError(f"{path}.{sorted(unknown)[0]}", "unknown key")
        header = settings.get("header", "X-API-Key")
        keys = settings.get("keys")
        if not isinstance(header, str) or not header:
            raise ConfigError(f"{path}.header", "must be a header name")
        if not isinstance(keys, Mapping) or not keys:
            raise ConfigError(f"{path}.keys", "must map at least one key to a subject")
        return ApiKeyScheme(header, {str(k): str(v) for k, v in keys.items()})
