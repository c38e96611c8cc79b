"""
Every built-in provider of every interface in :mod:`yatagarasu.interfaces`, checked with
``verifyObject`` and ``verifyClass``, built on a ``MemoryReactorClock`` (the redis layer and
its purge broadcaster included: nothing connects until the first command).
"""

from __future__ import annotations

import ast
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.application.service import IService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import IPlugin
from zope.interface.interface import InterfaceClass
from zope.interface.verify import verifyClass, verifyObject

from yatagarasu import errors, interfaces, plugins, values
from yatagarasu.auth.first_applicable import FirstApplicableScheme
from yatagarasu.cache.disk.layer import DiskCacheLayer
from yatagarasu.cache.disk.writer import DiskCacheWriter
from yatagarasu.cache.memory import MemoryCacheLayer
from yatagarasu.cache.redis import RedisCacheLayer
from yatagarasu.config.schema import LoggingConfig
from yatagarasu.discovery import available
from yatagarasu.interfaces import (
    IAccessEntry,
    IAccessLog,
    IAdminAuthSource,
    IApplicableAuthScheme,
    IAuditSink,
    IAuditSinkFactory,
    IAuthorizer,
    IAuthorizerFactory,
    IAuthScheme,
    IAuthSchemeFactory,
    ICacheLayer,
    ICacheLayerFactory,
    ICacheWriter,
    ICredentialProvider,
    IDefaultTtlCacheLayer,
    IErrorCountingCacheLayer,
    IImmediateAuthorizer,
    IImmediateAuthScheme,
    IImmediateCacheLayer,
    IPurgeBroadcaster,
    IRateLimiter,
    ISiblings,
    ISpoolingAuditSink,
    ISwitchableCacheLayer,
)
from yatagarasu.limits.local import LocalLimiter
from yatagarasu.limits.redis import RedisLimiter
from yatagarasu.logs import BufferedAccessLog, LoggerAccessLog
from yatagarasu.plugins.audit_file import file
from yatagarasu.plugins.audit_s3 import s3
from yatagarasu.plugins.audit_syslog import syslog
from yatagarasu.plugins.auth_jwt import jwt
from yatagarasu.plugins.auth_signed_url import signed_url
from yatagarasu.plugins.authz_opa import opa
from yatagarasu.plugins.authz_openfga import openfga
from yatagarasu.plugins.cache_disk import disk
from yatagarasu.plugins.cache_memory import memory
from yatagarasu.plugins.cache_redis import redis
from yatagarasu.s3.credentials import Fetched, FixedCredentials, RefreshingCredentials
from yatagarasu.s3.sigv4 import Credentials
from yatagarasu.values import CacheKey
from yatagarasu.web.site import AccessEntry
from yatagarasu.workers.child import WorkerChannel

SECRET = "s" * 64
#: A port nothing listens on: the layer must not even try it while these tests run.
REDIS_URL = "redis://127.0.0.1:1/0"


def memory_layer(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return memory.build({}, "cache.memory", reactor)


def disk_layer(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return disk.build({"enabled": True, "cache_dir": str(tmp_path)}, "cache.disk", reactor)


def disk_writer(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return DiskCacheWriter(disk_layer(reactor, tmp_path), CacheKey("b", "k"))


def redis_layer(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return redis.build({"enabled": True, "redis_url": REDIS_URL}, "cache.redis", reactor)


def jwt_scheme(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return jwt.build({"secret": SECRET}, "jwt", reactor)


def jwt_admin_scheme(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    settings = {
        "secret": SECRET,
        "admin_claims": [{"claim": "role", "operator": "equals", "value": "admin"}],
    }
    return jwt.build(settings, "jwt", reactor).admin_scheme()


def signed_url_scheme(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return signed_url.build({"keys": [{"kid": "k1", "secret": SECRET}]}, "auth", reactor)


def first_applicable(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return FirstApplicableScheme(
        [jwt_scheme(reactor, tmp_path), signed_url_scheme(reactor, tmp_path)]
    )


def opa_authorizer(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    settings = {"opa_url": "http://127.0.0.1:1", "opa_policy_path": "a/allow"}
    return opa.build(settings, "buckets[0].authorization", reactor)


def openfga_authorizer(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    settings = {"openfga_endpoint": "http://127.0.0.1:1", "openfga_store_id": "S1"}
    return openfga.build(settings, "buckets[0].authorization", reactor)


def file_sink(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return file.build({"path": str(tmp_path / "audit.log")}, "audit_log.file", reactor)


def syslog_sink(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return syslog.build({"address": "127.0.0.1:1", "protocol": "tcp"}, "audit_log.syslog", reactor)


def s3_sink(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    settings = {"bucket": "audit", "spool_dir": str(tmp_path / "spool")}
    return s3.build(settings, "audit_log.s3_export", reactor)


def worker_channel(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return WorkerChannel(reactor, 0, 2)


def local_limiter(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return LocalLimiter(reactor, 10)


def logger_access_log(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return LoggerAccessLog()


def buffered_access_log(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return BufferedAccessLog(reactor, LoggingConfig(file=str(tmp_path / "access.log")))


def access_entry(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return AccessEntry(cast(Any, object()), 0.25, False)  # reads the request when asked


def redis_limiter(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    client = redis_layer(reactor, tmp_path).client
    return RedisLimiter(client, "rl:", fail_open=True)


def factory(plugin: Any) -> Callable[[MemoryReactorClock, Path], Any]:
    return lambda reactor, tmp_path: plugin


#: what every built-in auth scheme provides besides IAuthScheme
SCHEME_EXTRAS = (IImmediateAuthScheme, IApplicableAuthScheme)


def static_credentials(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    return FixedCredentials("static", Credentials("AKIDEXAMPLE", "secret"))


def refreshing_credentials(reactor: MemoryReactorClock, tmp_path: Path) -> Any:
    async def fetch() -> Fetched:
        return Fetched(Credentials("AKIDEXAMPLE", "secret"))

    return RefreshingCredentials(reactor, "env", fetch, upstream="bucket b replica primary")


#: (what, how to build it, every interface it must provide).
PROVIDERS: list[tuple[str, Callable[[MemoryReactorClock, Path], Any], set[InterfaceClass]]] = [
    ("memory factory", factory(memory), {IPlugin, ICacheLayerFactory}),
    ("disk factory", factory(disk), {IPlugin, ICacheLayerFactory}),
    ("redis factory", factory(redis), {IPlugin, ICacheLayerFactory}),
    ("jwt factory", factory(jwt), {IPlugin, IAuthSchemeFactory}),
    ("opa factory", factory(opa), {IPlugin, IAuthorizerFactory}),
    ("opa authorizer", opa_authorizer, {IAuthorizer, IImmediateAuthorizer}),
    ("openfga factory", factory(openfga), {IPlugin, IAuthorizerFactory}),
    ("openfga authorizer", openfga_authorizer, {IAuthorizer, IImmediateAuthorizer}),
    ("file sink factory", factory(file), {IPlugin, IAuditSinkFactory}),
    ("file sink", file_sink, {IAuditSink}),
    ("syslog sink factory", factory(syslog), {IPlugin, IAuditSinkFactory}),
    ("syslog sink", syslog_sink, {IAuditSink}),
    ("s3 sink factory", factory(s3), {IPlugin, IAuditSinkFactory}),
    ("s3 sink", s3_sink, {IAuditSink, ISpoolingAuditSink}),
    (
        "memory layer",
        memory_layer,
        {ICacheLayer, IImmediateCacheLayer, ISwitchableCacheLayer, IDefaultTtlCacheLayer},
    ),
    (
        "disk layer",
        disk_layer,
        {ICacheLayer, IImmediateCacheLayer, ISwitchableCacheLayer, IErrorCountingCacheLayer},
    ),
    ("disk writer", disk_writer, {ICacheWriter}),
    ("redis layer", redis_layer, {ICacheLayer, IPurgeBroadcaster, IErrorCountingCacheLayer}),
    ("jwt scheme", jwt_scheme, {IAuthScheme, *SCHEME_EXTRAS, IAdminAuthSource}),
    ("jwt admin scheme", jwt_admin_scheme, {IAuthScheme, *SCHEME_EXTRAS, IAdminAuthSource}),
    ("signed_url factory", factory(signed_url), {IPlugin, IAuthSchemeFactory}),
    ("signed_url scheme", signed_url_scheme, {IAuthScheme, *SCHEME_EXTRAS}),
    ("schemes in order", first_applicable, {IAuthScheme, *SCHEME_EXTRAS}),
    ("worker channel", worker_channel, {ISiblings}),
    ("local rate limiter", local_limiter, {IRateLimiter}),
    ("redis rate limiter", redis_limiter, {IRateLimiter}),
    ("static credentials", static_credentials, {ICredentialProvider}),
    ("refreshing credentials", refreshing_credentials, {ICredentialProvider, IService}),
    ("access log events", logger_access_log, {IAccessLog}),
    ("buffered access log", buffered_access_log, {IAccessLog, IService}),
    ("access entry", access_entry, {IAccessEntry}),
]

#: Optional interfaces: a provider that lacks one must not look as if it had it.
OPTIONAL = [
    IImmediateCacheLayer,
    ISwitchableCacheLayer,
    IDefaultTtlCacheLayer,
    IErrorCountingCacheLayer,
    IPurgeBroadcaster,
    IImmediateAuthScheme,
    IApplicableAuthScheme,
    IAdminAuthSource,
    IImmediateAuthorizer,
    ISpoolingAuditSink,
]


@pytest.mark.parametrize(("what", "build", "expected"), PROVIDERS, ids=[p[0] for p in PROVIDERS])
def test_builtin_provider_verifies(
    what: str,
    build: Callable[[MemoryReactorClock, Path], Any],
    expected: set[InterfaceClass],
    tmp_path: Path,
) -> None:
    reactor = MemoryReactorClock()
    provider = build(reactor, tmp_path)
    for interface in expected:
        assert interface.providedBy(provider), f"{what} does not provide {interface.__name__}"
        assert verifyObject(interface, provider)
        if interface.implementedBy(type(provider)):
            assert verifyClass(interface, type(provider))
    for interface in OPTIONAL:
        if interface not in expected:
            assert not interface.providedBy(provider), f"{what} provides {interface.__name__}"
    assert reactor.tcpClients == []  # built, not connected


def test_every_interface_has_a_builtin_provider_checked() -> None:
    declared = {
        value
        for value in vars(interfaces).values()
        if isinstance(value, InterfaceClass) and value.__module__ == interfaces.__name__
    }
    checked = set().union(*(expected for _, _, expected in PROVIDERS))
    assert declared - checked == set()


def test_every_installed_factory_verifies() -> None:
    for interface in (
        ICacheLayerFactory,
        IAuthSchemeFactory,
        IAuditSinkFactory,
        IAuthorizerFactory,
    ):
        found = available(interface, plugins)
        assert found, interface.__name__
        for name, plugin in found.items():
            assert plugin.name == name
            assert verifyObject(IPlugin, plugin)
            assert verifyObject(interface, plugin)


def test_redis_purge_broadcaster_builds_a_service_without_connecting(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    layer = redis_layer(reactor, tmp_path)
    assert isinstance(layer, RedisCacheLayer)
    service = IPurgeBroadcaster(layer).subscribe_purges(lambda bucket, prefix, key: None)
    assert verifyObject(IService, service)
    assert not service.running
    assert not layer.client.started
    assert reactor.tcpClients == []


def test_the_attributes_the_core_reads_have_their_documented_values(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    memory_settings = {"default_ttl_seconds": 60, "enabled": False}
    quiet = memory.build(memory_settings, "cache.memory", reactor)
    assert isinstance(quiet, MemoryCacheLayer)
    assert IDefaultTtlCacheLayer(quiet).default_ttl_seconds == 60
    assert ISwitchableCacheLayer(quiet).enabled is False
    on_disk = disk_layer(reactor, tmp_path)
    assert isinstance(on_disk, DiskCacheLayer)
    assert ISwitchableCacheLayer(on_disk).enabled is True
    assert IErrorCountingCacheLayer(on_disk).errors == 0
    assert IErrorCountingCacheLayer(redis_layer(reactor, tmp_path)).errors == 0
    assert IAdminAuthSource(jwt_scheme(reactor, tmp_path)).admin_scheme() is None


@pytest.mark.parametrize("module", [errors, values, interfaces], ids=lambda m: m.__name__)
def test_the_floor_imports_nothing_above_it(module: Any) -> None:
    """The contracts and their values sit at the bottom: only each other, stdlib, Twisted."""
    tree = ast.parse(Path(module.__file__).read_text(encoding="utf-8"))
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    ours = {name for name in imported if name and name.partition(".")[0] == "yatagarasu"}
    assert ours <= {"yatagarasu.errors", "yatagarasu.values"}
    assert module.__name__ not in ours
    allowed = {"__future__", "collections", "dataclasses", "functools", "hashlib", "typing"}
    allowed |= {"fcntl", "os"}  # the memory layer's bodies in sealed memory files
    outside = {name.partition(".")[0] for name in imported if name} - {"yatagarasu"}
    assert outside <= allowed | {"twisted", "zope"}
