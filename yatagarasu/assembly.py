"""
The composition root: one function turns a validated ``Config`` into everything the process
runs — access control, caches, the audit trail, the tracer and the slow-request log, metrics,
S3 clients, the Resource tree and its
``Site`` (and the metrics listener's ``Site`` when ``metrics.port`` is set), and the background
services. Start-up, ``--check``, hot reload (:mod:`yatagarasu.reload`, which passes the running
assembly as ``previous`` so that unchanged cache layers, the audit trail and the tracer are
kept) and the
test harness all call :func:`assemble`; nothing is listened on, connected or read here.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from twisted.application.service import IService
from twisted.internet.interfaces import IReactorTime
from twisted.internet.ssl import CertificateOptions
from twisted.web.iweb import IAgent
from twisted.web.resource import IResource

from yatagarasu import plugins
from yatagarasu.audit.from_config import build_audit
from yatagarasu.audit.trail import AuditTrail
from yatagarasu.auth.from_config import AccessControl, build_access_control
from yatagarasu.cache.from_config import CacheSetup, build_cache
from yatagarasu.config.schema import BucketConfig, Config, S3Config
from yatagarasu.interfaces import (
    IAccessLog,
    ICacheLayer,
    ICredentialProvider,
    IRateLimiter,
    ISiblings,
)
from yatagarasu.limits.from_config import RateLimiting, build_rate_limiting
from yatagarasu.logs import LoggerAccessLog, build_access_log
from yatagarasu.metrics import Metrics
from yatagarasu.observability.slow_requests import SlowRequestLog
from yatagarasu.observability.tracing import Tracing, build_tracing
from yatagarasu.request_logging import RequestLogPolicy
from yatagarasu.s3.credential_sources import credential_provider
from yatagarasu.s3.replicas import ReplicaSet
from yatagarasu.tls import server_tls_options
from yatagarasu.web.admin import AdminResource
from yatagarasu.web.admin_cache import cache_admin_routes
from yatagarasu.web.admin_reload import ReloadHandler, reload_admin_routes
from yatagarasu.web.admin_sign import sign_admin_routes
from yatagarasu.web.bucket import BucketResource
from yatagarasu.web.cached import CachedObjects
from yatagarasu.web.health import HealthResource, ReadyResource
from yatagarasu.web.listing import DirectoryListing
from yatagarasu.web.metrics import metrics_resource
from yatagarasu.web.rate_limits import BucketRateLimits
from yatagarasu.web.root import NOT_FOUND, ErrorResource, RootResource
from yatagarasu.web.site import ProxySite
from yatagarasu.web.streaming import StreamTimeouts


@dataclass
class Lifecycle:
    """
    What the process is doing, as the resources that report it see it.

    :ivar draining: a graceful shutdown has begun (``/ready`` answers 503, responses close
        their connections).
    :ivar started_at: when the first generation was built (``/health`` uptime; a reload
        keeps it).
    """

    draining: bool = False
    started_at: float | None = None

    def is_draining(self) -> bool:
        """:returns: whether a graceful shutdown has begun."""
        return self.draining


@dataclass
class Assembly:
    """
    Everything built from one configuration.

    :ivar config: the validated configuration.
    :ivar access: client addresses, IP filters, auth schemes.
    :ivar caching: the tiered cache and per-bucket cache policies.
    :ivar metrics: the Prometheus metrics.
    :ivar tls: server TLS options when ``server.tls`` is set.
    :ivar clients: the replica set (S3 clients behind circuit breakers) of every bucket, by
        bucket name.
    :ivar site: the HTTP site (the Resource tree behind it), ready to be listened on.
    :ivar metrics_site: the site of the metrics listener (``/metrics``, and the admin API
        with ``metrics.serve_admin``), when ``metrics.port`` is set and metrics are enabled;
        ``None`` otherwise.
    :ivar audit: the audit trail when ``audit_log.enabled`` (``None``: no records are built).
    :ivar tracing: the process's tracer when ``observability.tracing.enabled`` (``None``: no
        span is made).
    :ivar access_log: where access lines go (the process's: a reload keeps it).
    :ivar services: background services to run beside the listener (JWKS refresh timers,
        cache maintenance, audit sinks), in start order.
    :ivar lifecycle: the shutdown state the site and ``/ready`` read.
    :ivar siblings: the other worker processes when this is one of ``server.workers`` > 1
        (``announce_reload`` tells the parent to reload them); ``None`` otherwise.
    :ivar limiter: the rate limiter when any rate limit applies (each generation has its
        own: a reload starts the local limits afresh; Redis keeps the shared ones).
    """

    config: Config
    access: AccessControl
    caching: CacheSetup
    metrics: Metrics
    tls: CertificateOptions | None
    clients: Mapping[str, ReplicaSet]
    site: ProxySite
    metrics_site: ProxySite | None = None
    audit: AuditTrail | None = None
    tracing: Tracing | None = None
    access_log: IAccessLog = field(default_factory=LoggerAccessLog)
    services: Sequence[IService] = field(default_factory=list)
    lifecycle: Lifecycle = field(default_factory=Lifecycle)
    siblings: ISiblings | None = None
    limiter: IRateLimiter | None = None

    async def close(self, keep: Collection[ICacheLayer] = ()) -> None:
        """
        Close what holds connections or files: the S3 pools, the rate limiter, the authorizers'
        pools, then the cache layers.

        :param keep: cache layers a newer generation took over (a hot reload): left open.
        """
        for client in self.clients.values():
            await client.close()
        if self.limiter is not None:
            await self.limiter.close()
        for authorizer in self.access.authorizers.values():
            await authorizer.close()
        if self.caching.cache is not None:
            await self.caching.cache.close(keep)


def assemble(
    config: Config,
    reactor: Any,
    *,
    agents: Mapping[str, IAgent] | None = None,
    lifecycle: Lifecycle | None = None,
    metrics: Metrics | None = None,
    previous: Assembly | None = None,
    reload: ReloadHandler | None = None,
    siblings: ISiblings | None = None,
    environ: Mapping[str, str] | None = None,
    credential_agent: IAgent | None = None,
    log_to_stdout: bool = False,
) -> Assembly:
    """
    Build everything the process runs from a configuration.

    :param config: the validated configuration.
    :param reactor: time, threads, TCP (stored; nothing connects yet).
    :param agents: the HTTP agent of each upstream (tests), by bucket name, or by
        ``bucket/replica`` for ``replicas`` (:func:`yatagarasu.s3.replicas.agent_key`);
        default: a persistent connection pool per upstream.
    :param lifecycle: the shutdown state to report (default: a new one, not draining).
    :param metrics: the process's metrics (a reload passes the running ones: counters never
        reset); default: new ones.
    :param previous: the running assembly (a reload): its cache layers whose configuration
        section is unchanged are reused with their contents and their services, and so are
        the circuit breakers of unchanged upstreams, with their state.
    :param reload: what ``POST /admin/reload`` calls (default: no such route).
    :param siblings: when this process is one worker of several, the channel to the others
        (``/metrics``, stats and ``/ready`` then speak for the whole instance, purges reach
        every worker, responses carry ``X-Yatagarasu-Worker``).
    :param environ: the environment the S3 credential providers read (``AWS_*``; default:
        the process's).
    :param credential_agent: the HTTP agent of the credential fetches (tests); default: one
        per provider.
    :param log_to_stdout: whether twistd's own log observer writes to standard output
        (:func:`yatagarasu.logs.build_access_log`).
    :returns: the assembly.
    :raises yatagarasu.errors.ConfigError: naming the dotted key path of what plugins, key
        files or TLS files got wrong.
    """
    metrics = metrics or Metrics()
    access = build_access_control(config, reactor, plugins)
    caching = build_cache(
        config, reactor, plugins, metrics, previous.caching if previous is not None else None
    )
    if previous is not None:
        # The audit trail belongs to the process (the listening site records through it); a
        # reload that would change audit_log is refused before this (yatagarasu.reload).
        audit = previous.audit
    else:
        audit = build_audit(config, reactor, plugins)
        if audit is not None:
            metrics.watch_audit(audit.sinks)
    # The tracer belongs to the process too (a reload that would change it is refused).
    tracing = (
        previous.tracing
        if previous is not None
        else build_tracing(config.observability.tracing, reactor)
    )
    # The access log belongs to the process too (a reload that would change logging is
    # refused); a reload writes what it holds.
    if previous is not None:
        access_log = previous.access_log
        access_log.flush()
    else:
        worker = siblings.worker_id if siblings is not None else None
        access_log = build_access_log(config.logging, reactor, worker, log_to_stdout)
    slow = config.observability.slow_query
    slow_log = SlowRequestLog(slow) if slow.enabled else None
    tls = server_tls_options(config.server.tls) if config.server.tls else None
    agents = agents or {}
    running = previous.clients if previous is not None else {}
    clients = {
        b.name: ReplicaSet(
            reactor,
            b.name,
            b.s3,
            agents=agents,
            on_failover=metrics.failover,
            observe=partial(metrics.upstream, b.name),
            previous=running.get(b.name),
            credentials=partial(
                _credentials,
                reactor,
                metrics,
                os.environ if environ is None else environ,
                credential_agent,
            ),
        )
        for b in config.buckets
    }
    metrics.watch_upstreams(clients)
    lifecycle = lifecycle or Lifecycle()
    if lifecycle.started_at is None:
        lifecycle.started_at = reactor.seconds()
    rates = build_rate_limiting(config, reactor)
    admin = _admin(config, access, caching, reload, siblings)
    on_metrics_listener = config.metrics.admin_on_own_listener
    root = _resource_tree(
        reactor,
        config,
        access,
        caching,
        metrics,
        clients,
        lifecycle,
        NOT_FOUND if on_metrics_listener else admin,
        siblings,
        rates,
    )
    extra = b"" if siblings is None else b"X-Yatagarasu-Worker: %d\r\n" % siblings.worker_id
    observers = _Observers(audit, tracing, slow_log, access_log)
    site = _site(root, reactor, config, access, metrics, lifecycle, extra, observers)
    metrics_site = None
    if config.metrics.listener(config.server) is not None:
        metrics_root = RootResource(
            {b"metrics": metrics_resource(metrics, siblings)},
            {config.server.admin_segments: admin} if on_metrics_listener else {},
            [],
            ErrorResource(
                404,
                "this listener serves /metrics and the admin API only"
                if on_metrics_listener
                else "this listener serves /metrics only",
            ),
        )
        metrics_site = _site(
            metrics_root, reactor, config, access, metrics, lifecycle, extra, observers
        )
    # First: the credentials' first fetches start before anything else
    services = [*_credential_services(clients), *access.services, *caching.services()]
    if IService.providedBy(access_log):  # held lines are written after the drain
        services.append(access_log)
    # Last: stopped after the drain, they flush every record and every span.
    if audit is not None:
        services.extend(audit.services())
    if tracing is not None:
        services.extend(tracing.services())
    # Last, once nothing can fail any more: a refused reload keeps exporting the old tables.
    metrics.watch_rate_limiter(rates.limiter if rates is not None else None)
    return Assembly(
        config=config,
        access=access,
        caching=caching,
        metrics=metrics,
        tls=tls,
        clients=clients,
        site=site,
        metrics_site=metrics_site,
        audit=audit,
        tracing=tracing,
        access_log=access_log,
        services=services,
        lifecycle=lifecycle,
        siblings=siblings,
        limiter=rates.limiter if rates is not None else None,
    )


def _credentials(
    reactor: Any,
    metrics: Metrics,
    environ: Mapping[str, str],
    agent: IAgent | None,
    bucket: str,
    replica: str,
    section: S3Config,
) -> ICredentialProvider:
    return credential_provider(
        reactor,
        section,
        environ,
        upstream=f"bucket {bucket} replica {replica}",
        observe=partial(metrics.credentials_fetched, bucket, replica),
        agent=agent,
    )


def _credential_services(clients: Mapping[str, ReplicaSet]) -> list[IService]:
    """The credential providers that fetch (and refresh) in the background."""
    return [
        IService(r.credentials)
        for replicas in clients.values()
        for r in replicas.replicas
        if IService.providedBy(r.credentials)
    ]


@dataclass(frozen=True)
class _Observers:
    """What a site reports each ended request to, besides metrics."""

    audit: AuditTrail | None
    tracing: Tracing | None
    slow_log: SlowRequestLog | None
    access_log: IAccessLog


def _site(
    root: IResource,
    clock: IReactorTime,
    config: Config,
    access: AccessControl,
    metrics: Metrics,
    lifecycle: Lifecycle,
    extra_headers: bytes,
    observers: _Observers,
) -> ProxySite:
    access_log_enabled = config.logging.level in ("debug", "info")
    # the request_logging events are info events too: below that level, nothing to filter
    logged = config.observability.request_logging
    return ProxySite(
        root,
        clock=clock,
        limits=config.server.security_limits,
        max_concurrent_requests=config.server.max_concurrent_requests,
        addresses=access.addresses,
        metrics=metrics,
        access_log_enabled=access_log_enabled,
        access_log=observers.access_log,
        send_buffer_bytes=config.server.socket_send_buffer_bytes or None,  # 0: the kernel's
        draining=lifecycle.is_draining,
        extra_headers=extra_headers,
        audit=observers.audit,
        tracing=observers.tracing,
        slow_log=observers.slow_log,
        request_logging=RequestLogPolicy.build(logged) if access_log_enabled else None,
    )


def _resource_tree(
    clock: IReactorTime,
    config: Config,
    access: AccessControl,
    caching: CacheSetup,
    metrics: Metrics,
    clients: Mapping[str, ReplicaSet],
    lifecycle: Lifecycle,
    admin: IResource,
    siblings: ISiblings | None,
    rates: RateLimiting | None,
) -> IResource:
    # /metrics stays reserved on the main listener when it is served elsewhere or nowhere: a
    # bucket at "/" must not receive it.
    exact: dict[bytes, IResource] = {
        b"metrics": (
            metrics_resource(metrics, siblings) if config.metrics.on_main_listener else NOT_FOUND
        ),
        b"health": HealthResource(clock, _started(lifecycle, clock)),
        b"ready": ReadyResource(
            clients,
            lifecycle.is_draining,
            siblings.all_up if siblings is not None else None,
        ),
    }
    # the admin prefix stays reserved too (a 404 when the metrics listener serves the API)
    subtrees = {config.server.admin_segments: admin}
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
                rate_limits=_rate_limits(bucket, rates, metrics),
                authorizer=access.authorizers.get(bucket.name),
                metrics=metrics,
                listing=_listing(bucket, caching, clients[bucket.name], clock),
            ),
        )
        for bucket in config.buckets
    ]
    return RootResource(exact, subtrees, buckets)


def _rate_limits(
    bucket: BucketConfig, rates: RateLimiting | None, metrics: Metrics
) -> BucketRateLimits | None:
    limits = rates.buckets.get(bucket.name) if rates is not None else None
    if rates is None or limits is None:
        return None
    return BucketRateLimits(
        bucket.name, limits, rates.limiter, metrics, headers_on_allowed=rates.headers_on_allowed
    )


def _admin(
    config: Config,
    access: AccessControl,
    caching: CacheSetup,
    reload: ReloadHandler | None,
    siblings: ISiblings | None,
) -> IResource:
    routes = cache_admin_routes(caching, config, siblings) if caching.cache is not None else {}
    if reload is not None:
        routes.update(reload_admin_routes(reload))
    if access.signers:
        routes.update(sign_admin_routes(config.buckets, access.signers))
    return AdminResource(access.admin, routes)


def _started(lifecycle: Lifecycle, clock: IReactorTime) -> float:
    return clock.seconds() if lifecycle.started_at is None else lifecycle.started_at


def _timeouts(config: Config, bucket: BucketConfig) -> StreamTimeouts:
    server = config.server
    return StreamTimeouts(
        bucket.s3.idle_seconds, server.send_timeout_seconds, server.stream_buffer_bytes
    )


def _cached_objects(
    bucket: BucketConfig,
    config: Config,
    caching: CacheSetup,
    client: ReplicaSet,
    clock: IReactorTime,
) -> CachedObjects | None:
    policy = caching.policies.get(bucket.name)
    if caching.cache is None or policy is None:
        return None
    return CachedObjects(
        bucket.name, caching.cache, policy, client, clock, _timeouts(config, bucket)
    )


def _listing(
    bucket: BucketConfig, caching: CacheSetup, client: ReplicaSet, clock: IReactorTime
) -> DirectoryListing | None:
    if not bucket.listing.enabled:
        return None
    caches = caching.cache is not None and bucket.name in caching.policies
    return DirectoryListing(
        bucket, client, clock, bucket.s3.idle_seconds, caching.cache if caches else None
    )
