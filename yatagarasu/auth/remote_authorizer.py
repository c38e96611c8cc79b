"""
What the OPA and OpenFGA authorizers share: decisions cached for a TTL, one call at a time per
query (concurrent identical requests share it), a policy service asked over HTTP
(:class:`JsonClient`), and a fail mode for when it gives no usable answer — logged once when
the service starts failing and once when it answers again, not per request.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Literal
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from yatagarasu.auth.decision_cache import DecisionCache
from yatagarasu.auth.json_client import JsonClient, PolicyServiceError
from yatagarasu.auth.shared_calls import SharedCalls
from yatagarasu.errors import ConfigError
from yatagarasu.values import AuthorizationQuery, Decision

log = Logger()

FailMode = Literal["open", "closed"]


def check_service_url(url: str, path: str) -> str:
    """
    :param url: a policy service's base URL from the configuration.
    :param path: its dotted key path.
    :returns: the URL without a trailing ``/``.
    :raises ConfigError: it is not ``http(s)://host[:port][/base]`` without query or fragment.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(path, f"expected http(s)://host[:port], got {url!r}")
    if parts.query or parts.fragment or parts.username or parts.password:
        raise ConfigError(path, "must not have a query, a fragment or credentials")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(path, f"bad port in {url!r}") from None
    return url.rstrip("/")


class RemoteAuthorizer:
    """
    An ``IAuthorizer`` backed by a policy service. Subclasses say how a query is keyed in the
    cache (:meth:`cache_key`) and how the service is asked (:meth:`ask`).

    :param name: the authorizer type (``opa``), for logs and metrics.
    :param client: the HTTP client of the service.
    :param cache: where answers are remembered.
    :param fail_mode: ``closed`` (no answer → refused) or ``open`` (no answer → allowed).
    """

    name = ""

    def __init__(
        self, name: str, client: JsonClient, cache: DecisionCache, fail_mode: FailMode
    ) -> None:
        self.name = name
        self._client = client
        self._cache = cache
        self._fail_open = fail_mode == "open"
        self._failing = False
        self._cached_allow = Decision(True, "cached", self._reason(True))
        self._cached_deny = Decision(False, "cached", self._reason(False))
        self._calls: SharedCalls[Decision] = SharedCalls()

    def cache_key(self, query: AuthorizationQuery) -> Hashable:
        """:returns: what identifies the question asked for ``query``."""
        raise NotImplementedError

    async def ask(self, query: AuthorizationQuery) -> bool:
        """
        :returns: the service's answer for ``query``.
        :raises PolicyServiceError: no usable answer.
        """
        raise NotImplementedError

    def authorize_now(self, query: AuthorizationQuery) -> Decision | None:
        """
        :param query: the request to decide on.
        :returns: the cached decision, or ``None`` (:meth:`authorize` asks the service).
        """
        cached = self._cache.get(self.cache_key(query))
        if cached is None:
            return None
        return self._cached_allow if cached else self._cached_deny

    def authorize(self, query: AuthorizationQuery) -> Deferred[Decision]:
        """
        :param query: the request to decide on.
        :returns: a cached decision at once, else the service's (or the fail mode's).
        """
        key = self.cache_key(query)
        cached = self._cache.get(key)
        if cached is not None:
            return succeed(self._cached_allow if cached else self._cached_deny)
        deciding, started = self._calls.join(
            key, lambda: Deferred.fromCoroutine(self._decide(query, key))
        )
        return deciding if started else deciding.addCallback(self._shared)

    def _shared(self, decision: Decision) -> Decision:
        """A request that joined another's call: an answer it reused, counted as ``cached``."""
        if decision.result == "error":
            return decision
        return self._cached_allow if decision.allowed else self._cached_deny

    async def _decide(self, query: AuthorizationQuery, key: Hashable) -> Decision:
        try:
            allowed = await self.ask(query)
        except PolicyServiceError as e:
            if not self._failing:
                self._failing = True
                log.warn(
                    "authorization service {authorizer} gives no answer ({reason}); fail mode"
                    " {fail_mode}: requests are {outcome} until it answers again",
                    authorizer=self.name,
                    reason=str(e),
                    fail_mode="open" if self._fail_open else "closed",
                    outcome="allowed" if self._fail_open else "refused",
                )
            return Decision(self._fail_open, "error", f"{self.name} gave no answer ({e})")
        if self._failing:
            self._failing = False
            log.info("authorization service {authorizer} answers again", authorizer=self.name)
        self._cache.put(key, allowed)
        return Decision(allowed, "allow" if allowed else "deny", self._reason(allowed))

    def _reason(self, allowed: bool) -> str:
        return f"{'allowed' if allowed else 'denied'} by {self.name}"

    def close(self) -> Deferred[None]:
        """Close the service's pooled connections."""
        return Deferred.fromCoroutine(self._client.close())
