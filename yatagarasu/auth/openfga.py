"""
The ``openfga`` authorizer: an OpenFGA Check call per (user, relation, object).

``POST {openfga_endpoint}/stores/{openfga_store_id}/check`` with
``{"tuple_key": {"user", "relation", "object"}, "authorization_model_id"}``; the request is
allowed when the answer says ``"allowed": true``. The mapping is the Rust version's:

- user: ``user:<claim>``, the claim named by ``openfga_user_claim`` (``sub``; dots reach into
  nested claims: ``user.id``), which must be a string; without one the request is denied
  (403) and OpenFGA is not asked;
- relation: ``viewer`` (the proxy only reads: GET and HEAD);
- object: ``file:<bucket>/<key>`` (``folder:<bucket>/<key>`` for a key ending in ``/``), with
  the configured bucket name (``buckets[].name``).
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.plugin import IPlugin
from twisted.web.iweb import IAgent
from zope.interface import implementer

from yatagarasu.auth.decision_cache import DecisionCache
from yatagarasu.auth.json_client import JsonClient, PolicyServiceError
from yatagarasu.auth.remote_authorizer import FailMode, RemoteAuthorizer, check_service_url
from yatagarasu.config.typed import from_raw, join
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import IAuthorizerFactory, IImmediateAuthorizer
from yatagarasu.values import AuthorizationQuery, Decision, Identity

_ID = re.compile(r"^[A-Za-z0-9_-]{1,128}$")

#: the relation checked for every request (the proxy is read-only)
RELATION = "viewer"


@dataclass(frozen=True)
class OpenFgaSettings:
    """``buckets[].authorization`` with ``type: openfga`` (the Rust v1.6 keys and defaults)."""

    openfga_endpoint: str
    openfga_store_id: str
    openfga_authorization_model_id: str | None = None
    openfga_api_token: str | None = field(default=None, repr=False)
    openfga_timeout_ms: int = 100
    openfga_cache_ttl_seconds: float = 60.0
    openfga_fail_mode: FailMode = "closed"
    openfga_user_claim: str = "sub"

    def check(self, path: str) -> None:
        check_service_url(self.openfga_endpoint, join(path, "openfga_endpoint"))
        for key in ("openfga_store_id", "openfga_authorization_model_id"):
            value = getattr(self, key)
            if value is not None and not _ID.match(value):
                raise ConfigError(join(path, key), "expected an id (letters, digits, '_' or '-')")
        token = self.openfga_api_token
        if token is not None and (not token.strip() or not token.isprintable() or " " in token):
            raise ConfigError(
                join(path, "openfga_api_token"), "must be one word of printable characters"
            )
        if self.openfga_timeout_ms <= 0:
            raise ConfigError(join(path, "openfga_timeout_ms"), "must be > 0")
        if self.openfga_cache_ttl_seconds < 0:
            raise ConfigError(join(path, "openfga_cache_ttl_seconds"), "must be >= 0")
        if not all(self.openfga_user_claim.split(".")):
            raise ConfigError(
                join(path, "openfga_user_claim"), "expected a claim name such as sub or user.id"
            )


def openfga_user(identity: Identity | None, claim: str) -> str | None:
    """
    :param identity: who authenticated (``None``: anonymous).
    :param claim: the claim name, dots reaching into nested claims.
    :returns: ``user:<value>``, or ``None`` when the claim is missing or not a string.
    """
    value: Any = identity.claims if identity is not None else {}
    for part in claim.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return f"user:{value}" if isinstance(value, str) and value else None


def openfga_object(bucket: str, key: str) -> str:
    """
    :param bucket: the configured bucket name.
    :param key: the object key.
    :returns: ``file:<bucket>/<key>``, or ``folder:<bucket>/<key>`` when ``key`` ends in ``/``.
    """
    key = key.lstrip("/")
    return f"{'folder' if key.endswith('/') else 'file'}:{bucket}/{key}"


@implementer(IImmediateAuthorizer)
class OpenFgaAuthorizer(RemoteAuthorizer):
    """
    :param settings: the validated settings.
    :param client: the HTTP client of the OpenFGA server.
    :param cache: where decisions are remembered (``openfga_cache_ttl_seconds``).
    """

    def __init__(self, settings: OpenFgaSettings, client: JsonClient, cache: DecisionCache) -> None:
        super().__init__("openfga", client, cache, settings.openfga_fail_mode)
        endpoint = settings.openfga_endpoint.rstrip("/")
        self._url = f"{endpoint}/stores/{settings.openfga_store_id}/check"
        self._model = settings.openfga_authorization_model_id
        self._claim = settings.openfga_user_claim
        self._no_user = Decision(
            False, "deny", f"denied by openfga: no user id in claim {self._claim!r}"
        )
        token = settings.openfga_api_token
        self._headers = {b"authorization": b"Bearer " + token.encode()} if token else {}

    def authorize(self, query: AuthorizationQuery) -> Deferred[Decision]:
        """
        :param query: the request to decide on.
        :returns: a denial at once when the identity has no user id; else as
            :meth:`RemoteAuthorizer.authorize`.
        """
        if openfga_user(query.identity, self._claim) is None:
            return succeed(self._no_user)
        return super().authorize(query)

    def authorize_now(self, query: AuthorizationQuery) -> Decision | None:
        """
        :param query: the request to decide on.
        :returns: the denial of an identity without a user id, or a cached decision, or
            ``None``.
        """
        if openfga_user(query.identity, self._claim) is None:
            return self._no_user
        return super().authorize_now(query)

    def cache_key(self, query: AuthorizationQuery) -> Hashable:
        """:returns: the checked tuple ``(user, relation, object)``."""
        return self._tuple(query)

    def _tuple(self, query: AuthorizationQuery) -> tuple[str, str, str]:
        user = openfga_user(query.identity, self._claim) or ""
        return user, RELATION, openfga_object(query.bucket, query.key)

    async def ask(self, query: AuthorizationQuery) -> bool:
        """
        :returns: the answer's ``allowed``.
        :raises PolicyServiceError: no usable answer.
        """
        user, relation, obj = self._tuple(query)
        document: dict[str, Any] = {
            "tuple_key": {"user": user, "relation": relation, "object": obj}
        }
        if self._model is not None:
            document["authorization_model_id"] = self._model
        answer = await self._client.post(self._url, document, self._headers)
        allowed = answer.get("allowed") if isinstance(answer, Mapping) else None
        if not isinstance(allowed, bool):
            raise PolicyServiceError("answer has no boolean 'allowed'")
        return allowed


@implementer(IPlugin, IAuthorizerFactory)
class OpenFgaAuthorizerFactory:
    """``IAuthorizerFactory`` for ``openfga`` (in :mod:`yatagarasu.plugins.authz_openfga`)."""

    name = "openfga"

    def build(
        self,
        settings: Mapping[str, Any],
        path: str,
        reactor: Any,
        *,
        agent: IAgent | None = None,
    ) -> OpenFgaAuthorizer:
        """
        :param settings: the ``authorization`` mapping without ``type``.
        :param path: its dotted key path.
        :param reactor: time and TCP.
        :param agent: the HTTP agent (tests); default: a connection pool of its own.
        :returns: the authorizer.
        :raises ConfigError: naming the dotted path of a bad value.
        """
        parsed = from_raw(OpenFgaSettings, settings, path)
        client = JsonClient(reactor, parsed.openfga_timeout_ms / 1000, agent=agent)
        cache = DecisionCache(reactor, parsed.openfga_cache_ttl_seconds)
        return OpenFgaAuthorizer(parsed, client, cache)
