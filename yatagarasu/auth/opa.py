"""
The ``opa`` authorizer: asks Open Policy Agent's data API.

``POST {opa_url}/v1/data/{opa_policy_path}`` with ``{"input": {...}}`` (the request, see
:func:`opa_input`); the request is allowed when the answer's ``result`` is ``true`` (an
undefined decision, ``{}``, denies).
"""

from __future__ import annotations

import json
import re
from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.plugin import IPlugin
from twisted.web.iweb import IAgent
from zope.interface import implementer

from yatagarasu.auth.decision_cache import DEFAULT_MAX_ENTRIES, DecisionCache
from yatagarasu.auth.json_client import JsonClient, PolicyServiceError
from yatagarasu.auth.remote_authorizer import FailMode, RemoteAuthorizer, check_service_url
from yatagarasu.config.typed import from_raw, join
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import IAuthorizerFactory, IImmediateAuthorizer
from yatagarasu.values import AuthorizationQuery, Identity

_POLICY_PATH = re.compile(r"^[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*$")


@dataclass(frozen=True)
class OpaSettings:
    """``buckets[].authorization`` with ``type: opa`` (the Rust v1.6 keys and defaults)."""

    opa_url: str
    opa_policy_path: str
    opa_timeout_ms: int = 100
    opa_cache_ttl_seconds: float = 60.0
    opa_fail_mode: FailMode = "closed"

    def check(self, path: str) -> None:
        check_service_url(self.opa_url, join(path, "opa_url"))
        if not _POLICY_PATH.match(self.opa_policy_path.strip("/")):
            raise ConfigError(
                join(path, "opa_policy_path"),
                "expected a rule path such as yatagarasu/authz/allow (letters, digits, '_.-'"
                " segments separated by '/')",
            )
        if self.opa_policy_path.strip("/").startswith("v1/data/"):
            raise ConfigError(
                join(path, "opa_policy_path"), "leave out v1/data/ (the proxy adds it)"
            )
        if self.opa_timeout_ms <= 0:
            raise ConfigError(join(path, "opa_timeout_ms"), "must be > 0")
        if self.opa_cache_ttl_seconds < 0:
            raise ConfigError(join(path, "opa_cache_ttl_seconds"), "must be >= 0")

    @property
    def decision_url(self) -> str:
        """``{opa_url}/v1/data/{opa_policy_path}``."""
        return f"{self.opa_url.rstrip('/')}/v1/data/{self.opa_policy_path.strip('/')}"


def opa_input(query: AuthorizationQuery) -> dict[str, Any]:
    """
    The ``input`` document OPA evaluates the policy on.

    :param query: the request.
    :returns: ``jwt_claims`` (the identity's claims, ``{}`` when anonymous), ``subject``
        (``null`` when anonymous), ``bucket`` (the configured bucket name), ``key`` and
        ``path`` (both the object key; ``path`` is the Rust version's name), ``method``,
        ``client_ip``.
    """
    identity = query.identity
    return {
        "jwt_claims": dict(identity.claims) if identity is not None else {},
        "subject": identity.subject if identity is not None else None,
        "bucket": query.bucket,
        "key": query.key,
        "path": query.key,
        "method": query.method,
        "client_ip": query.client_ip,
    }


class _EncodedClaims:
    """
    The canonical JSON of identities' claims, remembered per ``Identity`` object: an auth
    scheme hands out the same object for a token it knows (``jwt``'s verified-token cache), so
    a reused token's claims are encoded once, not on every request.

    :param max_entries: identities remembered (the oldest is forgotten first).
    """

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        self._max = max_entries
        #: ``id(identity)`` -> (the identity, kept alive so that its id is not reused; encoding)
        self._known: dict[int, tuple[Identity, str]] = {}

    def encode(self, identity: Identity) -> str:
        """:returns: ``identity.claims`` as JSON with sorted keys."""
        known = self._known.get(id(identity))
        if known is not None and known[0] is identity:
            return known[1]
        encoded = json.dumps(dict(identity.claims), sort_keys=True, default=str)
        if len(self._known) >= self._max:
            del self._known[next(iter(self._known))]
        self._known[id(identity)] = (identity, encoded)
        return encoded


@implementer(IImmediateAuthorizer)
class OpaAuthorizer(RemoteAuthorizer):
    """
    :param settings: the validated settings.
    :param client: the HTTP client of the OPA server.
    :param cache: where decisions are remembered (``opa_cache_ttl_seconds``).
    """

    def __init__(self, settings: OpaSettings, client: JsonClient, cache: DecisionCache) -> None:
        super().__init__("opa", client, cache, settings.opa_fail_mode)
        self._url = settings.decision_url
        self._claims = _EncodedClaims()

    def cache_key(self, query: AuthorizationQuery) -> Hashable:
        """:returns: every field of the input document (the claims canonically encoded)."""
        identity = query.identity
        if identity is None:
            return query.bucket, query.key, query.method, query.client_ip, None, ""
        return (
            query.bucket,
            query.key,
            query.method,
            query.client_ip,
            identity.subject,
            self._claims.encode(identity),
        )

    async def ask(self, query: AuthorizationQuery) -> bool:
        """
        :returns: whether ``result`` is ``true``.
        :raises PolicyServiceError: no usable answer.
        """
        answer = await self._client.post(self._url, {"input": opa_input(query)}, {})
        if not isinstance(answer, Mapping):
            raise PolicyServiceError("answer is not a JSON object")
        return answer.get("result") is True


@implementer(IPlugin, IAuthorizerFactory)
class OpaAuthorizerFactory:
    """``IAuthorizerFactory`` for ``opa`` (registered in :mod:`yatagarasu.plugins.authz_opa`)."""

    name = "opa"

    def build(
        self,
        settings: Mapping[str, Any],
        path: str,
        reactor: Any,
        *,
        agent: IAgent | None = None,
    ) -> OpaAuthorizer:
        """
        :param settings: the ``authorization`` mapping without ``type``.
        :param path: its dotted key path.
        :param reactor: time and TCP.
        :param agent: the HTTP agent (tests); default: a connection pool of its own.
        :returns: the authorizer.
        :raises ConfigError: naming the dotted path of a bad value.
        """
        parsed = from_raw(OpaSettings, settings, path)
        client = JsonClient(reactor, parsed.opa_timeout_ms / 1000, agent=agent)
        return OpaAuthorizer(parsed, client, DecisionCache(reactor, parsed.opa_cache_ttl_seconds))
