"""Assemble the Resource tree and the Site from a configuration."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from twisted.internet.interfaces import IReactorTime
from twisted.web.resource import IResource

from yatagarasu.auth.setup import AccessControl
from yatagarasu.config.schema import Config
from yatagarasu.s3.client import S3Client
from yatagarasu.web.admin import AdminResource
from yatagarasu.web.bucket import BucketResource
from yatagarasu.web.health import HealthResource, ReadyResource
from yatagarasu.web.root import RootResource
from yatagarasu.web.site import ProxySite


def build_site(
    clock: IReactorTime,
    config: Config,
    clients: Mapping[str, S3Client],
    access: AccessControl,
    *,
    started: float,
    draining: Callable[[], bool],
) -> ProxySite:
    """
    Build the proxy's ``Site``.

    :param clock: time source.
    :param config: the configuration.
    :param clients: the S3 client of every bucket, by bucket name.
    :param access: client addresses, IP filters and auth schemes.
    :param started: process start time, for ``/health``.
    :param draining: tells ``/ready`` whether a graceful shutdown has begun.
    :returns: the site, ready to be listened on.
    """
    exact: dict[bytes, IResource] = {
        b"health": HealthResource(clock, started),
        b"ready": ReadyResource({name: c.health for name, c in clients.items()}, draining),
    }
    subtrees: dict[bytes, IResource] = {b"admin": AdminResource(access.admin, {})}
    buckets = [
        (
            bucket.prefix_segments,
            BucketResource(
                bucket,
                clients[bucket.name],
                clock,
                ip_filter=access.ip_filters.get(bucket.name),
                scheme=access.schemes.get(bucket.name),
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
    )
