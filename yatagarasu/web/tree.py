"""Assemble the Resource tree and the Site from a configuration."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource

from yatagarasu.cache.setup import CacheSetup
from yatagarasu.components import Components
from yatagarasu.config.schema import BucketConfig, Config
from yatagarasu.metrics import MetricsResource
from yatagarasu.s3.client import S3Client
from yatagarasu.web.admin import AdminResource
from yatagarasu.web.admin_cache import cache_admin_routes
from yatagarasu.web.bucket import BucketResource
from yatagarasu.web.cached import CachedObjects
from yatagarasu.web.health import HealthResource, ReadyResource
from yatagarasu.web.root import RootResource
from yatagarasu.web.site import ProxySite
from yatagarasu.web.streaming import StreamTimeouts


def build_site(
    clock: IReactorTime,
    components: Components,
    clients: Mapping[str, S3Client],
    *,
    started: float,
    draining: Callable[[], bool],
) -> ProxySite:
    """
    Build the proxy's ``Site``.

    :param clock: time source.
    :param components: what was built from the configuration.
    :param clients: the S3 client of every bucket, by bucket name.
    :param started: process start time, for ``/health``.
    :param draining: tells ``/ready`` whether a graceful shutdown has begun.
    :returns: the site, ready to be listened on.
    """
    config, access, caching = components.config, components.access, components.caching
    exact: dict[bytes, IResource] = {
        b"metrics": MetricsResource(components.metrics),
        b"health": HealthResource(clock, started),
        b"ready": ReadyResource({name: c.health for name, c in clients.items()}, draining),
    }
    routes = cache_admin_routes(caching, config) if caching.cache is not None else {}
    subtrees: dict[bytes, IResource] = {b"admin": AdminResource(access.admin, routes)}
    buckets = [
        (
            bucket.prefix_segments,
            BucketResource(
                bucket,
                clients[bucket.name],
                clock,
                _timeouts(config, bucket),
                ip_filter=access.ip_filters.get(bucket.name),
                scheme=access.schemes.get(bucket.name),
                cached=_cached_objects(bucket, config, caching, clients[bucket.name], clock),
            ),
        )
        for bucket in config.buckets
    ]
    return ProxySite(
        RootResource(exact, subtrees, buckets),
        clock=clock,
        limits=config.server.security_limits,
        max_concurrent_requests=config.server.max_concurrent_requests,
        addresses=access.addresses,
        metrics=components.metrics,
        access_log_enabled=config.logging.level in ("debug", "info"),
        send_buffer_bytes=config.server.socket_send_buffer_bytes,
        draining=draining,
    )


def _timeouts(config: Config, bucket: BucketConfig) -> StreamTimeouts:
    server = config.server
    return StreamTimeouts(
        bucket.s3.idle_seconds, server.send_timeout_seconds, server.stream_buffer_bytes
    )


def _cached_objects(
    bucket: BucketConfig,
    config: Config,
    caching: CacheSetup,
    client: S3Client,
    clock: IReactorTime,
) -> CachedObjects | None:
    policy = caching.policies.get(bucket.name)
    if caching.cache is None or policy is None:
        return None
    timeouts = _timeouts(config, bucket)
    return CachedObjects(bucket.name, caching.cache, policy, client, clock, timeouts)
