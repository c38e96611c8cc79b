"""
Keys from a JWKS URL: fetched at start, refreshed every ``jwks_refresh_interval_seconds`` by a
``TimerService``, and (rate-limited) when a token names an unknown ``kid``. A failed refresh
keeps the keys already known.
"""

from __future__ import annotations

import json
from typing import Any

from jwt import PyJWK
from jwt.exceptions import PyJWTError
from twisted.application.internet import TimerService
from twisted.application.service import IService
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger
from twisted.web.client import Agent, readBody

from yatagarasu.auth.keys import VerificationKey, algorithms_of
from yatagarasu.values import MIB

log = Logger()

_MAX_JWKS_BYTES = MIB


def parse_jwks(document: Any, default_algorithm: str | None) -> list[VerificationKey]:
    """
    Extract the usable public keys of a JWKS document.

    Symmetric (``oct``) keys, unknown key types and keys whose ``alg`` does not fit their
    type are ignored. A key's algorithm is its ``alg``, else ``default_algorithm`` when that
    fits, else every algorithm of its key type.

    :param document: the decoded JSON.
    :param default_algorithm: ``jwt.algorithm`` from the configuration, if any.
    :returns: the keys.
    """
    keys: list[VerificationKey] = []
    entries = document.get("keys") if isinstance(document, dict) else None
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if entry.get("use") not in (None, "sig"):
            continue
        try:
            jwk = PyJWK(entry)
        except (PyJWTError, ValueError, TypeError, KeyError):
            continue
        available = algorithms_of(jwk.key)
        alg = entry.get("alg")
        if alg is not None:
            allowed = frozenset({alg}) & available
        elif default_algorithm in available:
            allowed = frozenset({default_algorithm})
        else:
            allowed = available
        if allowed:
            kid = entry.get("kid")
            keys.append(VerificationKey(kid if isinstance(kid, str) else None, allowed, jwk.key))
    return keys


class JwksKeySet:
    """
    The keys published at one JWKS URL.

    :param reactor: time and TCP.
    :param url: the JWKS URL (https verified with service-identity).
    :param refresh_seconds: periodic refresh interval.
    :param default_algorithm: ``jwt.algorithm``, used for keys without ``alg``.
    :param min_refresh_seconds: at most one refresh for unknown ``kid`` values per this many
        seconds.
    :param timeout_seconds: a fetch taking longer fails (old keys stay).
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        refresh_seconds: float,
        default_algorithm: str | None,
        *,
        min_refresh_seconds: float = 10.0,
        timeout_seconds: float = 10.0,
    ) -> None:
        self._reactor = reactor
        self._url = url
        self._refresh_seconds = refresh_seconds
        self._default_algorithm = default_algorithm
        self._min_refresh_seconds = min_refresh_seconds
        self._timeout_seconds = timeout_seconds
        self._agent = Agent(reactor, connectTimeout=timeout_seconds)
        self._keys: list[VerificationKey] = []
        self._last_forced: float | None = None
        self._in_flight: Deferred[None] | None = None
        self._waiters: list[Deferred[None]] = []

    @property
    def keys(self) -> list[VerificationKey]:
        """The keys currently known."""
        return self._keys

    def service(self) -> IService:
        """:returns: a ``TimerService`` refreshing now and then every interval."""
        timer = TimerService(self._refresh_seconds, self.refresh)
        timer.clock = self._reactor
        return timer

    def refresh(self) -> Deferred[None]:
        """
        Fetch the JWKS now (sharing a fetch already under way). Never fails.

        :returns: fires when done.
        """
        waiter: Deferred[None] = Deferred()
        self._waiters.append(waiter)
        if self._in_flight is None:
            self._in_flight = Deferred.fromCoroutine(self._fetch())
            self._in_flight.addBoth(self._fetched)
        return waiter

    def _fetched(self, result: None) -> None:
        self._in_flight = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def refresh_for_unknown_kid(self) -> Deferred[None]:
        """
        Refresh because a token named a ``kid`` we do not know (the issuer may have rotated its
        keys), at most once per ``min_refresh_seconds``, so that garbage ``kid`` values cannot
        make us hammer the issuer.

        :returns: fires when the refresh (if any) is done.
        """
        if self._in_flight is not None:
            # Joining a fetch already under way (the one at start, say) costs the issuer
            # nothing: it does not use up the budget a rotation needs.
            return self.refresh()
        now = self._reactor.seconds()
        if self._last_forced is not None and now - self._last_forced < self._min_refresh_seconds:
            return succeed(None)
        self._last_forced = now
        return self.refresh()

    async def _fetch(self) -> None:
        try:
            request = self._agent.request(b"GET", self._url.encode("utf-8"))
            request.addTimeout(self._timeout_seconds, self._reactor)
            response = await request
            if response.code != 200:
                raise ValueError(f"HTTP {response.code}")
            if isinstance(response.length, int) and response.length > _MAX_JWKS_BYTES:
                raise ValueError("JWKS document too large")
            reading = readBody(response)
            reading.addTimeout(self._timeout_seconds, self._reactor)
            body = await reading
            keys = parse_jwks(json.loads(body), self._default_algorithm)
            if not keys:
                raise ValueError("no usable keys")
        except Exception as e:
            log.warn(
                "JWKS refresh from {url} failed, keeping {count} known key(s): {error}",
                url=self._url,
                count=len(self._keys),
                error=str(e) or type(e).__name__,
            )
            return
        self._keys = keys
        log.info("JWKS refreshed from {url}: {count} key(s)", url=self._url, count=len(keys))
