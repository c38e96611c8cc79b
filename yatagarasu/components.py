"""Everything built from a configuration before anything listens or connects."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from twisted.internet.ssl import CertificateOptions

from yatagarasu.auth.setup import AccessControl, build_access_control
from yatagarasu.cache.setup import CacheSetup, build_cache
from yatagarasu.config.schema import Config
from yatagarasu.metrics import Metrics
from yatagarasu.tls import server_tls_options


@dataclass
class Components:
    """
    :ivar config: the validated configuration.
    :ivar access: client addresses, IP filters, auth schemes.
    :ivar caching: the tiered cache and per-bucket cache policies.
    :ivar metrics: the Prometheus metrics.
    :ivar tls: server TLS options when ``server.tls`` is set.
    """

    config: Config
    access: AccessControl
    caching: CacheSetup
    metrics: Metrics
    tls: CertificateOptions | None


def build_components(config: Config, reactor: Any) -> Components:
    """
    Validate everything plugins and files can get wrong; used at start-up and by ``--check``.

    :param config: the validated configuration.
    :param reactor: time, threads, TCP (stored; nothing connects yet).
    :returns: the components.
    :raises yatagarasu.errors.ConfigError: naming the dotted key path of the problem.
    """
    metrics = Metrics()
    return Components(
        config=config,
        access=build_access_control(config, reactor),
        caching=build_cache(config, reactor, metrics),
        metrics=metrics,
        tls=server_tls_options(config.server.tls) if config.server.tls else None,
    )
