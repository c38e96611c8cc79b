"""
The configuration schema: frozen dataclasses built by :func:`yatagarasu.config.typed.build`.

Field names are the YAML keys (compatible with Yatagarasu v1.x); ``aliases`` metadata gives
other accepted spellings. ``UNSUPPORTED`` lists keys that are recognised but belong to features
this version does not have yet: they are rejected rather than silently ignored.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal
from urllib.parse import urlsplit

from yatagarasu.config.networks import parse_networks
from yatagarasu.config.typed import join
from yatagarasu.errors import ConfigError
from yatagarasu.values import MIB

RESERVED_PREFIXES = ("/health", "/ready", "/metrics")
DEFAULT_ADMIN_PREFIX = "/admin"
_BUCKET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_ORIGIN = re.compile(r"^https?://[^/\s]+$")

_NO_BODIES = "bodies are never logged: objects are streamed, not held for a log line"
_PER_BUCKET_AUTHORIZATION = (
    "as a default for every bucket; set buckets[].authorization on each bucket, where the Rust"
    " version read it"
)


def _positive(value: float, path: str, *, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(path, f"must be {'>= 0' if allow_zero else '> 0'}, got {value:g}")


@dataclass(frozen=True)
class TLSConfig:
    """Serve HTTPS with this certificate chain and private key (PEM files)."""

    cert_path: str
    key_path: str


@dataclass(frozen=True)
class SecurityLimits:
    """Limits checked on the raw request before anything else happens."""

    max_body_size: int = 10 * MIB
    max_header_size: int = 64 * 1024
    max_uri_length: int = 8 * 1024

    def check(self, path: str) -> None:
        _positive(self.max_body_size, join(path, "max_body_size"), allow_zero=True)
        _positive(self.max_header_size, join(path, "max_header_size"))
        _positive(self.max_uri_length, join(path, "max_uri_length"))


@dataclass(frozen=True)
class RateRule:
    """
    One rate limit: ``requests_per_second`` on average, bursts of up to ``burst``.

    With ``token_bucket`` the bucket holds ``burst`` tokens and refills at
    ``requests_per_second``; with ``sliding_window`` at most ``burst`` requests are allowed in
    any window of ``burst / requests_per_second`` seconds.

    :ivar requests_per_second: the sustained rate (> 0).
    :ivar burst: the most requests at once (default: one second's worth, at least 1).
    """

    requests_per_second: float
    burst: int | None = None

    @property
    def capacity(self) -> int:
        """:returns: ``burst``, else ``requests_per_second`` rounded up (at least 1)."""
        if self.burst is not None:
            return self.burst
        return max(1, math.ceil(self.requests_per_second))

    def check(self, path: str) -> None:
        _positive(self.requests_per_second, join(path, "requests_per_second"))
        if self.burst is not None and self.burst < 1:
            raise ConfigError(join(path, "burst"), f"must be >= 1, got {self.burst}")


@dataclass(frozen=True)
class RateLimitRedisConfig:
    """
    ``server.rate_limit.redis``: where the cluster-wide counters live (``backend: redis``).

    :ivar redis_url: ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://`` (TLS);
        not Sentinel yet.
    :ivar redis_password: password (overrides none in the URL; both given must agree).
    :ivar redis_db: database number (default: the URL's, else 0).
    :ivar tls_ca_file: with ``rediss://``: PEM file of the CA certificates to trust.
    :ivar key_prefix: prefix of every counter key.
    :ivar timeout_ms: bound of every call; past it the ``fail_mode`` decides.
    :ivar pool_size: connections in the pool.
    """

    redis_url: str = field(default="", repr=False)  # may hold a password
    redis_password: str | None = field(default=None, repr=False)
    redis_db: int | None = None
    tls_ca_file: str | None = None
    key_prefix: str = "yatagarasu:rl:"
    timeout_ms: int = 100
    pool_size: int = 4

    def check(self, path: str) -> None:
        if not self.redis_url:
            raise ConfigError(join(path, "redis_url"), "is required with backend: redis")
        if self.redis_url.startswith("redis+sentinel:"):
            raise ConfigError(
                join(path, "redis_url"),
                "not supported yet for rate limits (redis:// or rediss://)",
            )
        if not 1 <= self.timeout_ms <= 60_000:
            raise ConfigError(join(path, "timeout_ms"), "must be between 1 and 60000")
        if not 1 <= self.pool_size <= 256:
            raise ConfigError(join(path, "pool_size"), "must be between 1 and 256")


@dataclass(frozen=True)
class RateLimitConfig:
    """
    ``server.rate_limit`` (the Rust keys ``enabled``, ``global``, ``per_ip``, plus ours).

    :ivar enabled: whether any limit is applied (per-bucket limits too).
    :ivar algorithm: ``token_bucket`` or ``sliding_window``.
    :ivar backend: ``local`` (this process's memory) or ``redis`` (shared by every instance).
    :ivar global_: every bucket request together (YAML key ``global``).
    :ivar per_ip: each client address (after ``trusted_proxies``).
    :ivar per_user: each authenticated user (the JWT subject), checked after authentication.
    :ivar max_keys: the most client addresses (and users) tracked at once by the local
        backend; past it the least recently seen is forgotten (one at a time).
    :ivar headers_on_allowed: send ``RateLimit-*`` on allowed responses too (429 always).
    :ivar fail_mode: with ``backend: redis``, what a request gets when Redis cannot answer:
        ``fail_open`` (allowed) or ``fail_closed`` (503).
    :ivar redis: the Redis of ``backend: redis``.
    """

    enabled: bool = True
    algorithm: Literal["token_bucket", "sliding_window"] = "token_bucket"
    backend: Literal["local", "redis"] = "local"
    global_: RateRule | None = field(default=None, metadata={"key": "global"})
    per_ip: RateRule | None = None
    per_user: RateRule | None = None
    max_keys: int = 100_000
    headers_on_allowed: bool = False
    fail_mode: Literal["fail_open", "fail_closed"] = "fail_open"
    redis: RateLimitRedisConfig | None = None

    def check(self, path: str) -> None:
        if not 1 <= self.max_keys <= 10_000_000:
            raise ConfigError(join(path, "max_keys"), "must be between 1 and 10000000")
        if self.backend == "redis" and self.redis is None:
            raise ConfigError(join(path, "redis"), "is required with backend: redis")
        if self.backend == "local" and self.redis is not None:
            raise ConfigError(join(path, "redis"), "only applies to backend: redis")


#: the most worker processes ``server.workers`` accepts (metrics label them, so they are bounded)
MAX_WORKERS = 64

#: ``server.listen_backlog``: connections the kernel queues before the proxy accepts them
#: (Linux caps it at ``net.core.somaxconn``, 4096 by default)
DEFAULT_LISTEN_BACKLOG = 4096


@dataclass(frozen=True)
class ServerConfig:
    """Where and how the proxy listens."""

    UNSUPPORTED: ClassVar[dict[str, str]] = {
        "request_timeout": "use buckets[].s3.timeout",
    }

    address: str = "127.0.0.1"
    port: int | None = None
    trusted_proxies: tuple[str, ...] = ()
    tls: TLSConfig | None = None
    workers: int = 1
    #: bind each worker process to its own CPU (``server.workers`` > 1)
    worker_cpu_affinity: bool = False
    listen_backlog: int = DEFAULT_LISTEN_BACKLOG
    max_concurrent_requests: int = 1024
    rate_limit: RateLimitConfig | None = None
    security_limits: SecurityLimits = field(default_factory=SecurityLimits)
    shutdown_delay_seconds: float = 0.0
    shutdown_grace_seconds: float = 30.0
    send_timeout_seconds: float = 60.0
    #: ``SO_SNDBUF`` of client sockets; 0: the kernel's autotuning (up to ``tcp_wmem`` max)
    socket_send_buffer_bytes: int = 1048576
    stream_buffer_bytes: int = 65536
    admin_path_prefix: str = DEFAULT_ADMIN_PREFIX

    @property
    def admin_segments(self) -> tuple[str, ...]:
        """The admin API's prefix as path segments: ``/ops/admin`` → ``("ops", "admin")``."""
        return _segments(self.admin_path_prefix)

    socket_activation: bool = False

    @property
    def host(self) -> str:
        """The interface to listen on (``host`` of ``address``, brackets removed)."""
        return _split_address(self.address)[0]

    @property
    def listen_port(self) -> int:
        """The port to listen on: ``port``, else the one in ``address``, else 8080."""
        if self.port is not None:
            return self.port
        return _split_address(self.address)[1] or 8080

    def check(self, path: str) -> None:
        _check_address(self.address, self.port, path)
        _positive(self.send_timeout_seconds, join(path, "send_timeout_seconds"))
        if 0 < self.socket_send_buffer_bytes < 4096 or self.socket_send_buffer_bytes < 0:
            raise ConfigError(
                join(path, "socket_send_buffer_bytes"), "must be 0 (kernel autotuning) or >= 4096"
            )
        if self.stream_buffer_bytes < 4096:
            raise ConfigError(join(path, "stream_buffer_bytes"), "must be >= 4096")
        if not 0 <= self.listen_port <= 65535:
            raise ConfigError(join(path, "port"), f"must be 0..65535, got {self.listen_port}")
        parse_networks(self.trusted_proxies, join(path, "trusted_proxies"))
        admin_path = join(path, "admin_path_prefix")
        _check_plain_prefix(self.admin_path_prefix, admin_path)
        if not self.admin_segments:
            raise ConfigError(
                admin_path, "must not be '/' (the admin API needs a prefix of its own)"
            )
        reserved = _reserved_by(self.admin_segments)
        if reserved is not None:
            raise ConfigError(admin_path, f"{reserved} is reserved for the proxy")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ConfigError(
                join(path, "workers"), f"must be 1..{MAX_WORKERS}, got {self.workers}"
            )
        if self.worker_cpu_affinity and self.workers == 1:
            raise ConfigError(
                join(path, "worker_cpu_affinity"),
                "needs server.workers > 1 (it binds each worker process to a CPU)",
            )
        if self.worker_cpu_affinity and not hasattr(os, "sched_setaffinity"):
            raise ConfigError(
                join(path, "worker_cpu_affinity"),
                "needs Linux (this platform cannot bind a process to a CPU)",
            )
        if self.socket_activation and self.workers > 1:
            raise ConfigError(
                join(path, "socket_activation"),
                "not supported yet with server.workers > 1 (the parent binds the port itself)",
            )
        if not 1 <= self.listen_backlog <= 65535:
            raise ConfigError(
                join(path, "listen_backlog"), f"must be 1..65535, got {self.listen_backlog}"
            )
        _positive(self.max_concurrent_requests, join(path, "max_concurrent_requests"))
        _positive(
            self.shutdown_delay_seconds, join(path, "shutdown_delay_seconds"), allow_zero=True
        )
        _positive(
            self.shutdown_grace_seconds, join(path, "shutdown_grace_seconds"), allow_zero=True
        )


def _check_address(address: str, port: int | None, path: str) -> None:
    """
    Check a listener's ``address`` (IP address or ``localhost``, maybe with a port) and that
    ``port``, when given, agrees with a port in the address.
    """
    host, port_in_address = _split_address(address)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ConfigError(
                join(path, "address"), f"expected an IP address (or localhost), got {host!r}"
            ) from None
    if port_in_address is not None and port is not None and port_in_address != port:
        raise ConfigError(
            join(path, "port"), f"conflicts with the port in address ({port_in_address})"
        )


@dataclass(frozen=True)
class MetricsConfig:
    """
    Where ``GET /metrics`` is served (the v1.x ``metrics`` section).

    Without a port of its own, ``/metrics`` is served on the main listener. With one, it is
    served on a listener of its own (plain HTTP, ``/metrics`` only) and not on the main one.
    ``enabled: false`` serves it nowhere. ``serve_admin: true`` (with a port) moves the admin
    API to that listener too: then neither faces the clients of the main one.
    """

    enabled: bool = True
    address: str | None = None
    port: int | None = None
    serve_admin: bool = False

    @property
    def listen_port(self) -> int | None:
        """The port of the metrics listener: ``port``, else the one in ``address``, else none."""
        if self.port is not None or self.address is None:
            return self.port
        return _split_address(self.address)[1]

    @property
    def on_main_listener(self) -> bool:
        """Whether ``/metrics`` is served on the main listener (enabled, no port of its own)."""
        return self.enabled and self.listen_port is None

    @property
    def admin_on_own_listener(self) -> bool:
        """Whether the admin API is served on the metrics listener (and not the main one)."""
        return self.serve_admin and self.enabled and self.listen_port is not None

    def listener(self, server: ServerConfig) -> tuple[str, int] | None:
        """
        :param server: the ``server`` section (its interface is the default one).
        :returns: ``(host, port)`` of the metrics listener, or ``None`` when ``/metrics`` is
            disabled or served on the main listener.
        """
        port = self.listen_port
        if not self.enabled or port is None:
            return None
        host = _split_address(self.address)[0] if self.address is not None else server.host
        return host, port

    def check(self, path: str) -> None:
        if self.address is not None:
            _check_address(self.address, self.port, path)
        port = self.listen_port
        if self.serve_admin and (port is None or not self.enabled):
            raise ConfigError(
                join(path, "serve_admin"),
                "needs metrics.port and metrics.enabled (the admin API moves to the metrics"
                " listener)",
            )
        if port is None:
            if self.address is not None:
                raise ConfigError(
                    join(path, "address"),
                    "needs metrics.port (without a port of their own, metrics are served on"
                    " the main listener)",
                )
            return
        if not 1 <= port <= 65535:
            key = "port" if self.port is not None else "address"
            raise ConfigError(join(path, key), f"port must be 1..65535, got {port}")


def _split_address(address: str) -> tuple[str, int | None]:
    """Split ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if address.count(":") == 1:
        host, _, port = address.partition(":")
        if port.isdigit():
            return host, int(port)
    return address, None


@dataclass(frozen=True)
class RetryConfig:
    """Retries of one upstream request, with exponential backoff and full jitter."""

    max_attempts: int = 3
    initial_backoff_ms: int = 100
    max_backoff_ms: int = 1000

    def check(self, path: str) -> None:
        if self.max_attempts < 1:
            raise ConfigError(
                join(path, "max_attempts"), "must be >= 1 (it counts the first attempt)"
            )
        _positive(self.initial_backoff_ms, join(path, "initial_backoff_ms"), allow_zero=True)
        if self.max_backoff_ms < self.initial_backoff_ms:
            raise ConfigError(join(path, "max_backoff_ms"), "must be >= initial_backoff_ms")


@dataclass(frozen=True)
class CircuitBreakerConfig:
    """
    When to stop sending requests to an upstream (one breaker per replica), and when to try
    it again. The defaults are the Rust Yatagarasu's.
    """

    failure_threshold: int = 5
    success_threshold: int = 2
    timeout_seconds: float = 60.0
    half_open_max_requests: int = 3

    def check(self, path: str) -> None:
        for key in ("failure_threshold", "success_threshold", "half_open_max_requests"):
            if getattr(self, key) < 1:
                raise ConfigError(join(path, key), f"must be >= 1, got {getattr(self, key)}")
        _positive(self.timeout_seconds, join(path, "timeout_seconds"))


#: where a bucket's (or replica's) S3 credentials come from
CredentialSource = Literal[
    "static", "env", "profile", "instance", "ecs", "web_identity", "anonymous"
]
#: the keys of ``credentials`` that only one source reads
_SOURCE_KEYS = {
    "profile": ("profile",),
    "metadata_endpoint": ("instance",),
    "sts_endpoint": ("web_identity",),
    "role_arn": ("web_identity",),
    "role_session_name": ("web_identity",),
    "web_identity_token_file": ("web_identity",),
}


@dataclass(frozen=True)
class CredentialsConfig:
    """
    Where the S3 credentials come from (``s3.credentials``, ``s3.replicas[].credentials``).
    Without ``source``: ``static`` when ``access_key``/``secret_key`` are given, else the
    standard chain (env, web identity, profile, ECS, instance metadata). The other keys
    override the AWS SDKs' environment variables of their source.
    """

    source: CredentialSource | None = None
    profile: str | None = None
    metadata_endpoint: str | None = None
    sts_endpoint: str | None = None
    role_arn: str | None = None
    role_session_name: str | None = None
    web_identity_token_file: str | None = None

    def check(self, path: str) -> None:
        for key in ("metadata_endpoint", "sts_endpoint"):
            url = getattr(self, key)
            if url is not None:
                parts = urlsplit(url)
                if parts.scheme not in ("http", "https") or not parts.hostname:
                    raise ConfigError(
                        join(path, key), f"expected http(s)://host[:port], got {url!r}"
                    )
        if self.source is None:
            return
        for key, sources in _SOURCE_KEYS.items():
            if getattr(self, key) is not None and self.source not in sources:
                raise ConfigError(
                    join(path, key), f"is read by source {sources[0]}, not {self.source}"
                )


@dataclass(frozen=True)
class ReplicaConfig:
    """
    One copy of the bucket's objects (``s3.replicas[]``, the Rust schema): its own bucket,
    region, endpoint and credentials. The lowest ``priority`` number is tried first.
    """

    name: str
    bucket: str
    priority: int
    region: str | None = None
    endpoint: str | None = None
    access_key: str = ""
    secret_key: str = ""
    session_token: str | None = None
    #: its own credentials source (default: the bucket's ``s3.credentials``)
    credentials: CredentialsConfig | None = None
    timeout: float | None = None

    def check(self, path: str) -> None:
        if not _BUCKET_NAME.match(self.name):
            raise ConfigError(
                join(path, "name"), "must be 1-63 characters of letters, digits, '.', '_' or '-'"
            )
        if not 0 <= self.priority <= 255:
            raise ConfigError(join(path, "priority"), f"must be 0..255, got {self.priority}")


@dataclass(frozen=True)
class Upstream:
    """
    One replica as the S3 client sees it.

    :ivar name: the replica's name (``primary`` for a bucket without ``replicas``).
    :ivar priority: lower is tried first.
    :ivar s3: the bucket's ``s3`` section with this replica's bucket, region, endpoint,
        credentials and timeout (no ``replicas``).
    """

    name: str
    priority: int
    s3: S3Config


#: the name of a bucket's one upstream when it has no ``replicas`` (``/ready``, metrics)
PRIMARY = "primary"

# s3 keys that name one upstream: given per replica when there are replicas (as in Rust).
_PER_REPLICA = ("bucket", "endpoint", "access_key", "secret_key", "session_token")


@dataclass(frozen=True)
class S3Config:
    """
    The S3 bucket behind one URL prefix, and how to reach it: either one upstream
    (``bucket``, ``endpoint``, credentials) or ``replicas``, which then share ``region`` (as
    their default), the timeouts, ``retry``, ``connection_pool_size`` and ``circuit_breaker``.
    """

    bucket: str = ""
    region: str = "us-east-1"
    endpoint: str | None = None
    access_key: str = ""
    secret_key: str = ""
    session_token: str | None = None
    credentials: CredentialsConfig = field(default_factory=CredentialsConfig)
    timeout: float = 20.0
    connect_timeout: float | None = None
    first_byte_timeout: float | None = None
    idle_timeout: float | None = None
    connection_pool_size: int = 50
    retry: RetryConfig = field(default_factory=RetryConfig)
    #: the bucket's rate limit (also accepted as ``buckets[].rate_limit``)
    rate_limit: RateRule | None = None
    circuit_breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    replicas: tuple[ReplicaConfig, ...] = ()

    def upstreams(self) -> tuple[Upstream, ...]:
        """
        :returns: the upstreams to use, highest priority first (lowest ``priority`` number;
            ties in configuration order): the replicas, or this section as ``primary``.
        """
        if not self.replicas:
            return (Upstream(PRIMARY, 0, self),)
        ordered = sorted(self.replicas, key=lambda r: r.priority)
        return tuple(Upstream(r.name, r.priority, self._replica_section(r)) for r in ordered)

    def _replica_section(self, replica: ReplicaConfig) -> S3Config:
        return replace(
            self,
            bucket=replica.bucket,
            region=replica.region if replica.region is not None else self.region,
            endpoint=replica.endpoint,
            access_key=replica.access_key,
            secret_key=replica.secret_key,
            session_token=replica.session_token,
            credentials=(
                replica.credentials if replica.credentials is not None else self.credentials
            ),
            timeout=replica.timeout if replica.timeout is not None else self.timeout,
            replicas=(),
        )

    @property
    def connect_seconds(self) -> float:
        """Seconds allowed to open a connection (default: ``timeout``, at most 10)."""
        return self.connect_timeout if self.connect_timeout is not None else min(self.timeout, 10.0)

    @property
    def first_byte_seconds(self) -> float:
        """Seconds allowed from sending the request to the response headers."""
        return self.first_byte_timeout if self.first_byte_timeout is not None else self.timeout

    @property
    def idle_seconds(self) -> float:
        """Seconds the body may stall (while the client is keeping up) before we give up."""
        return self.idle_timeout if self.idle_timeout is not None else self.timeout

    def check(self, path: str) -> None:
        self._check_shared(path)
        if self.replicas:
            self._check_replicas(path)
        else:
            self._check_own(path)

    def _check_replicas(self, path: str) -> None:
        for key in _PER_REPLICA:
            if getattr(self, key):
                raise ConfigError(
                    join(path, key),
                    "cannot be combined with replicas (give each replica its own)",
                )
        names: dict[str, int] = {}
        for i, replica in enumerate(self.replicas):
            where = f"{join(path, 'replicas')}[{i}]"
            if replica.name in names:
                raise ConfigError(
                    join(where, "name"),
                    f"{replica.name!r} is already used by replicas[{names[replica.name]}]",
                )
            names[replica.name] = i
            self._replica_section(replica)._check_own(where)

    def _check_own(self, path: str) -> None:
        if not self.bucket:
            raise ConfigError(join(path, "bucket"), "must not be empty (or give replicas instead)")
        if bool(self.access_key) != bool(self.secret_key):
            raise ConfigError(
                join(path, "secret_key" if self.access_key else "access_key"),
                "access_key and secret_key go together",
            )
        self._check_credentials(path)
        if self.endpoint is not None:
            parts = urlsplit(self.endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    join(path, "endpoint"), f"expected http(s)://host[:port], got {self.endpoint!r}"
                )
            if parts.path not in ("", "/") or parts.query or parts.fragment:
                raise ConfigError(join(path, "endpoint"), "must not have a path or query")
        if self.timeout <= 0:  # a replica's own timeout
            _positive(self.timeout, join(path, "timeout"))

    @property
    def credential_source(self) -> str:
        """
        :returns: the credentials source this upstream uses: ``credentials.source``, else
            ``static`` with keys, else ``chain`` (the standard chain).
        """
        if self.credentials.source is not None:
            return self.credentials.source
        return "static" if self.access_key else "chain"

    def _check_credentials(self, path: str) -> None:
        source = self.credentials.source
        if source == "static" and not self.access_key:
            raise ConfigError(
                join(path, "access_key"),
                "credentials.source static needs access_key and secret_key",
            )
        if source not in (None, "static") and (self.access_key or self.session_token):
            raise ConfigError(
                join(path, "access_key" if self.access_key else "session_token"),
                f"is for credentials.source static, not {source}",
            )

    def _check_shared(self, path: str) -> None:
        for key in ("timeout", "connect_timeout", "first_byte_timeout", "idle_timeout"):
            value = getattr(self, key)
            if value is not None:
                _positive(value, join(path, key))
        _positive(self.connection_pool_size, join(path, "connection_pool_size"))


@dataclass(frozen=True)
class AuthConfig:
    """
    Client authentication for a bucket.

    ``scheme`` names an auth scheme plugin (built-in: ``jwt``, ``signed_url``), or
    ``schemes`` lists several (the first that applies to a request decides). JWT settings
    come from ``auth.jwt``, else ``buckets[].jwt``, each merged over the top-level ``jwt``;
    ``signed_url`` takes its settings from ``auth.signed_url``, any other scheme from
    ``auth.settings``.
    """

    enabled: bool = False
    scheme: str | None = None
    schemes: tuple[str, ...] | None = None
    jwt: Mapping[str, Any] | None = None
    signed_url: Mapping[str, Any] | None = None
    settings: Mapping[str, Any] | None = None

    @property
    def scheme_names(self) -> tuple[str, ...]:
        """The schemes in order: ``schemes``, else ``(scheme,)``, else ``("jwt",)``."""
        return self.schemes if self.schemes is not None else (self.scheme or "jwt",)

    def check(self, path: str) -> None:
        if self.schemes is None:
            return self._check_settings(path)
        if self.scheme is not None:
            raise ConfigError(join(path, "schemes"), "give auth.scheme or auth.schemes, not both")
        if not self.schemes:
            raise ConfigError(join(path, "schemes"), "list at least one scheme")
        for i, name in enumerate(self.schemes):
            if name in self.schemes[:i]:
                raise ConfigError(f"{join(path, 'schemes')}[{i}]", f"{name!r} is listed twice")
        return self._check_settings(path)

    def _check_settings(self, path: str) -> None:
        names = self.scheme_names
        if self.signed_url is not None and "signed_url" not in names:
            raise ConfigError(
                join(path, "signed_url"), "set, but signed_url is not among the bucket's schemes"
            )
        others = [n for n in names if n not in ("jwt", "signed_url")]
        if self.settings is not None and not others:
            raise ConfigError(
                join(path, "settings"),
                "set, but no plugin scheme reads it (jwt reads auth.jwt, signed_url reads "
                "auth.signed_url)",
            )
        if len(others) > 1:
            raise ConfigError(
                join(path, "schemes"),
                f"{others[0]!r} and {others[1]!r} would both read auth.settings: "
                "list at most one scheme besides jwt and signed_url",
            )


@dataclass(frozen=True)
class IpFilterConfig:
    """Per-bucket client address filter, checked before authentication."""

    allowlist: tuple[str, ...] = ()
    blocklist: tuple[str, ...] = ()

    def check(self, path: str) -> None:
        parse_networks(self.allowlist, join(path, "allowlist"))
        parse_networks(self.blocklist, join(path, "blocklist"))


@dataclass(frozen=True)
class CorsConfig:
    """Cross-origin access for browsers."""

    allowed_origins: tuple[str, ...] = ()
    allowed_headers: tuple[str, ...] = ()
    max_age: int = 600

    def check(self, path: str) -> None:
        for i, origin in enumerate(self.allowed_origins):
            if origin != "*" and not _ORIGIN.match(origin):
                raise ConfigError(
                    f"{join(path, 'allowed_origins')}[{i}]",
                    f"expected scheme://host[:port] or '*', got {origin!r}",
                )
        _positive(self.max_age, join(path, "max_age"), allow_zero=True)


@dataclass(frozen=True)
class BucketCacheConfig:
    """A bucket's ``cache`` overrides of the top-level ``cache`` section."""

    enabled: bool | None = None
    ttl_seconds: float | None = None
    max_item_size_mb: float | None = None
    slice_size_mb: float | None = None
    slice_threshold_mb: float | None = None

    def check(self, path: str) -> None:
        if self.ttl_seconds is not None:
            _positive(self.ttl_seconds, join(path, "ttl_seconds"), allow_zero=True)
        if self.max_item_size_mb is not None:
            _positive(self.max_item_size_mb, join(path, "max_item_size_mb"))
        if self.slice_size_mb is not None:
            _positive(self.slice_size_mb, join(path, "slice_size_mb"), allow_zero=True)
        if self.slice_threshold_mb is not None:
            _positive(self.slice_threshold_mb, join(path, "slice_threshold_mb"))


#: ListObjectsV2 returns at most this many keys per page
S3_MAX_KEYS = 1000


@dataclass(frozen=True)
class ListingConfig:
    """A bucket's directory listing: ``GET /prefix/dir/`` answered from ListObjectsV2."""

    enabled: bool = False
    format: Literal["html", "json"] = "html"
    max_keys: int = S3_MAX_KEYS
    cache_ttl_seconds: float = 10.0

    def check(self, path: str) -> None:
        if not 1 <= self.max_keys <= S3_MAX_KEYS:
            raise ConfigError(
                join(path, "max_keys"),
                f"must be 1-{S3_MAX_KEYS} (S3's page limit), got {self.max_keys}",
            )
        _positive(self.cache_ttl_seconds, join(path, "cache_ttl_seconds"), allow_zero=True)


def _check_document(name: str | None, path: str) -> None:
    """Check an ``index_document`` / ``not_found_document``: a relative key, no ``..``."""
    if name is None:
        return
    if not name or name.startswith("/") or "\\" in name or "\0" in name:
        raise ConfigError(path, f"must be an object key relative to the bucket, got {name!r}")
    if ".." in name.split("/") or name.endswith("/"):
        raise ConfigError(
            path, f"must name an object (no '..' segment, no trailing '/'), got {name!r}"
        )


def _segments(prefix: str) -> tuple[str, ...]:
    return tuple(s for s in prefix.split("/") if s)


def _check_plain_prefix(prefix: str, path: str) -> None:
    """Check a URL prefix: starts with ``/``, no ``?#%\\``, NUL or ``..`` segment."""
    if not prefix.startswith("/"):
        raise ConfigError(path, f"must start with '/', got {prefix!r}")
    if any(c in prefix for c in "?#%\\\0") or ".." in _segments(prefix):
        raise ConfigError(path, "must be a plain path ('?#%\\' and '..' not allowed)")


def _reserved_by(segments: tuple[str, ...]) -> str | None:
    """:returns: the proxy route (``/health``...) that ``segments`` is or is under, if any."""
    for reserved in RESERVED_PREFIXES:
        if segments[:1] == (reserved[1:],):
            return reserved
    return None


def _under(segments: tuple[str, ...], prefix: tuple[str, ...]) -> bool:
    return segments[: len(prefix)] == prefix


@dataclass(frozen=True)
class BucketConfig:
    """One URL prefix served from one S3 bucket."""

    name: str
    path_prefix: str
    s3: S3Config
    auth: AuthConfig = field(default_factory=AuthConfig)
    jwt: Mapping[str, Any] | None = None
    ip_filter: IpFilterConfig | None = None
    cors: CorsConfig | None = None
    cache: BucketCacheConfig | None = None
    #: every request to this bucket together (the same as ``s3.rate_limit``)
    rate_limit: RateRule | None = None

    @property
    def bucket_rate(self) -> RateRule | None:
        """:returns: the bucket's rate limit, from ``rate_limit`` or ``s3.rate_limit``."""
        return self.rate_limit or self.s3.rate_limit

    #: ``{type: opa|openfga|<plugin>, ...}``: validated by the authorizer plugin's factory
    authorization: Mapping[str, Any] | None = None
    listing: ListingConfig = field(default_factory=ListingConfig)
    #: served for ``dir/`` as ``dir/<index_document>`` when that object exists
    index_document: str | None = None
    #: served when S3 has no object for a path (single-page applications)
    not_found_document: str | None = None
    not_found_status: Literal[200, 404] = 404

    @property
    def prefix_segments(self) -> tuple[str, ...]:
        """The prefix as path segments: ``/a/b/`` → ``("a", "b")``."""
        return _segments(self.path_prefix)

    def check(self, path: str) -> None:
        if not _BUCKET_NAME.match(self.name):
            raise ConfigError(
                join(path, "name"), "must be 1-63 characters of letters, digits, '.', '_' or '-'"
            )
        _check_plain_prefix(self.path_prefix, join(path, "path_prefix"))
        if self.rate_limit is not None and self.s3.rate_limit is not None:
            raise ConfigError(
                join(path, "rate_limit"), "given twice (also as s3.rate_limit): keep one"
            )
        reserved = _reserved_by(self.prefix_segments)
        if reserved is not None:
            raise ConfigError(join(path, "path_prefix"), f"{reserved} is reserved for the proxy")
        _check_document(self.index_document, join(path, "index_document"))
        _check_document(self.not_found_document, join(path, "not_found_document"))


@dataclass(frozen=True)
class LoggingConfig:
    """Log level and format (twisted.logger events)."""

    level: Literal["debug", "info", "warn", "warning", "error", "critical"] = "info"
    format: Literal["text", "json"] = "text"
    file: str | None = None


#: headers ``request_logging.redact_headers`` lists by default (the Rust version's list)
DEFAULT_REDACTED_HEADERS = (
    "authorization",
    "x-api-key",
    "cookie",
    "set-cookie",
    "x-amz-security-token",
)


@dataclass(frozen=True)
class RequestLoggingConfig:
    """
    ``observability.request_logging`` (the Rust keys): which requests the access log shows
    and what it adds to them.

    Paths are shell-style patterns (``*`` matches anything, ``/`` included; ``?`` one
    character) matched against the whole request path, query string left out.
    """

    UNSUPPORTED: ClassVar[dict[str, str]] = {
        "log_request_body": _NO_BODIES,
        "log_response_body": _NO_BODIES,
        "max_body_size": _NO_BODIES,
    }

    log_requests: bool = False
    log_responses: bool = False
    include_paths: tuple[str, ...] = ()
    exclude_paths: tuple[str, ...] = ()
    status_codes: tuple[int, ...] = ()
    redact_headers: tuple[str, ...] = DEFAULT_REDACTED_HEADERS

    def check(self, path: str) -> None:
        for key, patterns in (
            ("include_paths", self.include_paths),
            ("exclude_paths", self.exclude_paths),
        ):
            for i, pattern in enumerate(patterns):
                if not pattern.startswith(("/", "*")):
                    raise ConfigError(
                        f"{join(path, key)}[{i}]",
                        f"a path pattern starts with '/' (or '*'), got {pattern!r}",
                    )
        for i, code in enumerate(self.status_codes):
            if not 100 <= code <= 599:
                raise ConfigError(
                    f"{join(path, 'status_codes')}[{i}]", f"must be 100..599, got {code}"
                )


#: where the OTLP/HTTP exporter sends spans when ``otlp_endpoint`` is not given
DEFAULT_OTLP_ENDPOINT = "http://127.0.0.1:4318"


@dataclass(frozen=True)
class TracingConfig:
    """
    OpenTelemetry tracing (``observability.tracing``, the v1.x keys): a server span per
    request with child spans for its stages, exported over OTLP/HTTP (protobuf).

    ``otlp_endpoint`` is the collector's base URL (``/v1/traces`` is added) or the full URL
    of its traces resource (a path ending in ``/v1/traces``).
    """

    enabled: bool = False
    exporter: Literal["otlp", "console", "none"] = "otlp"
    otlp_endpoint: str = DEFAULT_OTLP_ENDPOINT
    service_name: str = "yatagarasu"
    sampling_ratio: float = 1.0
    propagate_context: bool = True

    @property
    def traces_url(self) -> str:
        """The URL spans are POSTed to: ``otlp_endpoint``, with ``/v1/traces`` unless given."""
        base = self.otlp_endpoint.rstrip("/")
        return base if base.endswith("/v1/traces") else base + "/v1/traces"

    def check(self, path: str) -> None:
        if not 0.0 <= self.sampling_ratio <= 1.0:
            raise ConfigError(
                join(path, "sampling_ratio"),
                f"must be between 0 and 1, got {self.sampling_ratio:g}",
            )
        parts = urlsplit(self.otlp_endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                join(path, "otlp_endpoint"),
                f"expected http(s)://host[:port][/v1/traces], got {self.otlp_endpoint!r}",
            )
        if not self.service_name:
            raise ConfigError(join(path, "service_name"), "must not be empty")


@dataclass(frozen=True)
class SlowQueryConfig:
    """
    The slow-request log (``observability.slow_query``): a request that took longer than
    ``threshold_ms`` (arrival to the end of the response) is logged at warn, with its
    request id and, with ``include_breakdown``, the milliseconds spent in auth, the cache
    lookup, waiting for S3's first byte and the transfer.
    """

    enabled: bool = False
    threshold_ms: float = 1000.0
    include_breakdown: bool = True

    def check(self, path: str) -> None:
        _positive(self.threshold_ms, join(path, "threshold_ms"), allow_zero=True)


@dataclass(frozen=True)
class ObservabilityConfig:
    """The ``observability`` section: tracing, the slow-request log, request logging."""

    tracing: TracingConfig = field(default_factory=TracingConfig)
    slow_query: SlowQueryConfig = field(default_factory=SlowQueryConfig)
    request_logging: RequestLoggingConfig = field(default_factory=RequestLoggingConfig)


@dataclass(frozen=True)
class Config:
    """The whole configuration document."""

    UNSUPPORTED: ClassVar[dict[str, str]] = {
        "authorization": _PER_BUCKET_AUTHORIZATION,
    }

    buckets: tuple[BucketConfig, ...]
    server: ServerConfig = field(default_factory=ServerConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    jwt: Mapping[str, Any] | None = None
    cache: Mapping[str, Any] | None = None
    audit_log: Mapping[str, Any] | None = None
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    #: the seed's spelling of ``server.rate_limit`` (use one of them)
    rate_limiting: RateLimitConfig | None = None
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)
    #: Rust Yatagarasu spellings accepted with a warning (not a YAML key: see
    #: :func:`yatagarasu.config.migrate.accept_synonyms`), logged at start-up, shown by --check.
    deprecations: tuple[str, ...] = field(default=(), metadata={"internal": True})

    @property
    def rate_limit(self) -> RateLimitConfig | None:
        """
        :returns: ``server.rate_limit`` or ``rate_limiting`` (the defaults when neither is
            given), or ``None`` when ``enabled: false``.
        """
        limits = self.server.rate_limit or self.rate_limiting or RateLimitConfig()
        return limits if limits.enabled else None

    def check(self, path: str) -> None:
        if not self.buckets:
            raise ConfigError("buckets", "at least one bucket is required")
        if self.server.rate_limit is not None and self.rate_limiting is not None:
            raise ConfigError("rate_limiting", "given twice (also as server.rate_limit): keep one")
        if self.metrics.listen_port == self.server.listen_port:
            key = "port" if self.metrics.port is not None else "address"
            raise ConfigError(
                f"metrics.{key}",
                f"{self.server.listen_port} is the main listener's port (server.port): choose"
                " another one, or leave metrics.port out to serve /metrics on the main port",
            )
        names: dict[str, int] = {}
        prefixes: dict[tuple[str, ...], int] = {}
        for i, bucket in enumerate(self.buckets):
            if bucket.name in names:
                raise ConfigError(
                    f"buckets[{i}].name",
                    f"{bucket.name!r} is already used by buckets[{names[bucket.name]}]",
                )
            names[bucket.name] = i
            segments = bucket.prefix_segments
            admin = self.server.admin_segments
            if _under(segments, admin):
                raise ConfigError(
                    f"buckets[{i}].path_prefix",
                    f"{bucket.path_prefix!r} is {'under ' if segments != admin else ''}"
                    f"{self.server.admin_path_prefix}, reserved for the admin API: move the"
                    " admin API with server.admin_path_prefix (e.g. /_admin) or choose another"
                    " path_prefix",
                )
            if segments in prefixes:
                raise ConfigError(
                    f"buckets[{i}].path_prefix",
                    f"{bucket.path_prefix!r} is already used by buckets[{prefixes[segments]}]",
                )
            prefixes[segments] = i
