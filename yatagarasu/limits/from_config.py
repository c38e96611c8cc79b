"""
The rate limits a configuration asks for: the limiter (local or Redis) and, per bucket, the
limits its requests are counted against.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from yatagarasu.cache.redis import RedisSettings
from yatagarasu.cache.redis_client import RedisClient
from yatagarasu.config.schema import Config, RateLimitConfig, RateRule
from yatagarasu.interfaces import IRateLimiter
from yatagarasu.limits.local import LocalLimiter
from yatagarasu.limits.redis import RedisLimiter
from yatagarasu.values import RateLimit


@dataclass(frozen=True)
class BucketRates:
    """
    The limits one bucket's requests are counted against (``None``: that scope has none).

    :ivar before_auth: ``per_ip``, ``bucket``, ``global`` (in that order), checked together
        before authentication.
    :ivar per_user: checked after authentication, for authenticated requests.
    """

    per_ip: RateLimit | None
    bucket: RateLimit | None
    global_: RateLimit | None
    per_user: RateLimit | None


@dataclass(frozen=True)
class RateLimiting:
    """
    :ivar limiter: the limiter every bucket shares.
    :ivar buckets: the limits of each bucket that has any, by bucket name.
    :ivar headers_on_allowed: send ``RateLimit-*`` on allowed responses too.
    """

    limiter: IRateLimiter
    buckets: Mapping[str, BucketRates]
    headers_on_allowed: bool


def _limit(scope: str, rule: RateRule | None, algorithm: str) -> RateLimit | None:
    if rule is None:
        return None
    return RateLimit(scope, rule.requests_per_second, rule.capacity, algorithm)


def build_rate_limiting(config: Config, reactor: Any) -> RateLimiting | None:
    """
    :param config: the validated configuration.
    :param reactor: time, and TCP for Redis (nothing connects here).
    :returns: the limiter and the per-bucket limits, or ``None`` when no limit applies.
    :raises yatagarasu.errors.ConfigError: for a Redis URL or CA file that cannot be used.
    """
    settings = config.rate_limit
    if settings is None:
        return None
    algorithm = settings.algorithm
    shared = {
        "per_ip": _limit("per_ip", settings.per_ip, algorithm),
        "global": _limit("global", settings.global_, algorithm),
        "per_user": _limit("per_user", settings.per_user, algorithm),
    }
    buckets = {}
    for bucket in config.buckets:
        rates = BucketRates(
            shared["per_ip"],
            _limit("bucket", bucket.bucket_rate, algorithm),
            shared["global"],
            shared["per_user"],
        )
        if any((rates.per_ip, rates.bucket, rates.global_, rates.per_user)):
            buckets[bucket.name] = rates
    if not buckets:
        return None
    return RateLimiting(_limiter(settings, config, reactor), buckets, settings.headers_on_allowed)


def _limiter(settings: RateLimitConfig, config: Config, reactor: Any) -> IRateLimiter:
    if settings.redis is None:
        return LocalLimiter(reactor, settings.max_keys)
    redis = settings.redis
    path = f"{'server.rate_limit' if config.server.rate_limit else 'rate_limiting'}.redis"
    target = RedisSettings(
        enabled=True,
        redis_url=redis.redis_url,
        redis_password=redis.redis_password,
        redis_db=redis.redis_db,
        tls_ca_file=redis.tls_ca_file,
        timeout_ms=redis.timeout_ms,
        pool_size=redis.pool_size,
    ).target(path)
    client = RedisClient(
        target, reactor, timeout=redis.timeout_ms / 1000.0, pool_size=redis.pool_size
    )
    return RedisLimiter(client, redis.key_prefix, fail_open=settings.fail_mode == "fail_open")
