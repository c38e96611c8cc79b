"""
The rate-limit step of a bucket's pipeline (DESIGN.md §2, step 7): ``per_ip``, ``bucket`` and
``global`` before authentication, ``per_user`` after it.

A refused request is answered 429 (:class:`yatagarasu.errors.RateLimited`) with
``Retry-After`` and ``RateLimit-Limit``, ``RateLimit-Remaining``, ``RateLimit-Reset`` (whole
seconds, rounded up); allowed responses carry the ``RateLimit-*`` fields too when
``headers_on_allowed`` is set. With a local limiter the step answers within the call (a memory
hit stays synchronous); with Redis it returns a Deferred.
"""

from __future__ import annotations

import math

from twisted.internet.defer import Deferred

from yatagarasu.errors import HTTPError, RateLimited
from yatagarasu.interfaces import IRateLimiter
from yatagarasu.limits.from_config import BucketRates
from yatagarasu.metrics import Metrics
from yatagarasu.values import RateDecision, RateLimit
from yatagarasu.web.site import ProxyRequest


def _whole_seconds(seconds: float) -> int:
    return max(0, math.ceil(seconds - 1e-9))


def rate_headers(decision: RateDecision) -> list[tuple[str, str]]:
    """
    :param decision: a limiter's decision.
    :returns: the ``RateLimit-*`` fields describing it (and ``Retry-After`` when refused).
    """
    headers = [
        ("RateLimit-Limit", str(decision.limit)),
        ("RateLimit-Remaining", str(decision.remaining)),
        ("RateLimit-Reset", str(_whole_seconds(decision.reset))),
    ]
    if not decision.allowed:
        headers.append(("Retry-After", str(max(1, _whole_seconds(decision.retry_after)))))
    return headers


class BucketRateLimits:
    """
    Counts one bucket's requests against its limits.

    :param bucket: the bucket's name.
    :param rates: its limits.
    :param limiter: where they are counted.
    :param metrics: where refusals (and fail-mode decisions) are counted.
    :param headers_on_allowed: send ``RateLimit-*`` on allowed responses too.
    """

    def __init__(
        self,
        bucket: str,
        rates: BucketRates,
        limiter: IRateLimiter,
        metrics: Metrics,
        *,
        headers_on_allowed: bool,
    ) -> None:
        self._bucket = bucket
        self._limiter = limiter
        self._metrics = metrics
        self._headers = headers_on_allowed
        self._per_ip = rates.per_ip
        self._fixed: list[tuple[RateLimit, str]] = []
        if rates.bucket is not None:
            self._fixed.append((rates.bucket, bucket))
        if rates.global_ is not None:
            self._fixed.append((rates.global_, ""))
        self._per_user = rates.per_user

    def before_auth(self, request: ProxyRequest) -> Deferred[None] | None:
        """
        Count ``request`` against the ``per_ip``, ``bucket`` and ``global`` limits.

        :returns: ``None`` when it passed at once, or a Deferred that fires when it passed.
        :raises RateLimited: when refused at once (a Deferred fails with it when later).
        """
        checks = self._fixed
        if self._per_ip is not None:
            checks = [(self._per_ip, request.client_address), *checks]
        if not checks:
            return None
        return self._check(checks, request)

    def after_auth(self, request: ProxyRequest) -> Deferred[None] | None:
        """
        Count an authenticated ``request`` against the ``per_user`` limit (anonymous requests
        are not counted: ``per_ip`` covers them).

        :returns: as :meth:`before_auth`.
        :raises RateLimited: as :meth:`before_auth`.
        """
        if self._per_user is None or request.subject is None:
            return None
        return self._check([(self._per_user, request.subject)], request)

    def _check(
        self, checks: list[tuple[RateLimit, str]], request: ProxyRequest
    ) -> Deferred[None] | None:
        decided = self._limiter.acquire(checks)
        # (not isinstance(decided, Deferred): Deferred is an Awaitable, an ABC, a slow check)
        if isinstance(decided, RateDecision):
            self._apply(decided, request)
            return None
        return decided.addCallback(self._apply, request)

    def _apply(self, decision: RateDecision, request: ProxyRequest) -> None:
        if decision.degraded:
            self._metrics.rate_limit_unavailable(decision.allowed)
            if not decision.allowed:
                raise HTTPError(
                    503, "rate limits cannot be checked", headers=[("Retry-After", "1")]
                )
            return
        if not decision.allowed:
            self._metrics.rate_limited(self._bucket, decision.scope)
            raise RateLimited(decision.scope, rate_headers(decision))
        if self._headers:
            for name, value in rate_headers(decision):
                request.setHeader(name, value)
