"""
The built-in ``syslog`` audit sink: RFC 5424 messages (:mod:`.syslog_format`) over UDP, TCP
or TLS (octet-counting framing, RFC 6587).

Records are queued on the reactor thread and sent every ``flush_interval_seconds`` (one write
per batch on TCP/TLS, one datagram per record on UDP) and when the sink stops. TCP and TLS
connections are kept by a ``ClientService``, which reconnects with exponential backoff; while
disconnected, records wait in a queue of at most ``max_queue_records`` and those beyond are
dropped and counted (``yatagarasu_audit_records_total{sink="syslog",result="dropped"}``).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from typing import Protocol as TypingProtocol

from twisted.application.internet import ClientService
from twisted.application.service import IService
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import DatagramProtocol, Factory, Protocol, connectionDone
from twisted.internet.ssl import Certificate, optionsForClientTLS, platformTrust
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.python.failure import Failure
from zope.interface import implementer

from yatagarasu.audit.flushing import FlushingService
from yatagarasu.audit.syslog_format import FACILITIES, SyslogFormatter, octet_counted
from yatagarasu.config.typed import from_raw, join
from yatagarasu.errors import ConfigError
from yatagarasu.interfaces import IAuditSink, IAuditSinkFactory
from yatagarasu.values import AuditRecord

log = Logger()

_DEFAULT_PORTS = {"udp": 514, "tcp": 514, "tls": 6514}


def parse_address(text: str, default_port: int, path: str) -> tuple[str, int]:
    """
    :param text: ``host:port``, ``[v6]:port``, or a host alone.
    :param default_port: the port when none is given.
    :param path: the dotted key path, for errors.
    :returns: the host and the port.
    :raises ConfigError: when the port is not a number in 1-65535.
    """
    host, port = text, str(default_port)
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, port = text.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(path, f"expected host:port, got {text!r}")
    return host, int(port)


@dataclass(frozen=True)
class SyslogTlsSettings:
    """``audit_log.syslog.tls``: how the receiver's certificate is checked."""

    ca_cert_path: str | None = None
    server_name: str | None = None


@dataclass(frozen=True)
class SyslogSinkSettings:
    """The ``audit_log.syslog`` keys (the seed's ``syslog_*`` spellings are accepted too)."""

    address: str = field(metadata={"aliases": ("syslog_address",)})
    protocol: Literal["udp", "tcp", "tls"] = field(
        default="udp", metadata={"aliases": ("syslog_protocol",)}
    )
    facility: str = field(default="local0", metadata={"aliases": ("syslog_facility",)})
    app_name: str = "yatagarasu"
    hostname: str | None = None
    tls: SyslogTlsSettings | None = None
    flush_interval_seconds: float = 0.2
    max_queue_records: int = 10_000

    @property
    def facility_code(self) -> int:
        """The facility as its number."""
        return int(self.facility) if self.facility.isdigit() else FACILITIES[self.facility]

    def check(self, path: str) -> None:
        parse_address(self.address, _DEFAULT_PORTS[self.protocol], join(path, "address"))
        if not (self.facility.isdigit() and int(self.facility) < 24) and (
            self.facility not in FACILITIES
        ):
            names = ", ".join(FACILITIES)
            raise ConfigError(join(path, "facility"), f"must be 0-23 or one of {names}")
        if self.tls is not None and self.protocol != "tls":
            raise ConfigError(join(path, "tls"), "only with protocol: tls")
        if self.flush_interval_seconds <= 0:
            raise ConfigError(join(path, "flush_interval_seconds"), "must be > 0")
        if self.max_queue_records < 1:
            raise ConfigError(join(path, "max_queue_records"), "must be >= 1")


class _Connection(TypingProtocol):
    def ready(self) -> bool: ...
    def send(self, messages: list[bytes]) -> None: ...
    def start(self) -> None: ...
    def stop(self) -> Deferred[None]: ...


class _Datagrams(DatagramProtocol):
    """One UDP socket, connected to the receiver once its address is resolved."""

    def __init__(self, reactor: Any, host: str, port: int) -> None:
        self._reactor = reactor
        self._host = host
        self._port = port
        self._connected = False
        self._listening: Any = None

    def start(self) -> None:
        interface = "::" if isIPv6Address(self._host) else ""
        self._listening = self._reactor.listenUDP(0, self, interface=interface)
        if isIPAddress(self._host) or isIPv6Address(self._host):
            self._connect(self._host)
        else:
            resolving = self._reactor.resolve(self._host)
            resolving.addCallbacks(self._connect, self._unresolved)

    def _connect(self, ip: str) -> None:
        assert self.transport is not None
        self.transport.connect(ip, self._port)
        self._connected = True

    def _unresolved(self, failure: Failure) -> None:
        log.error(
            "syslog audit sink: cannot resolve {host}: {error}",
            host=self._host,
            error=failure.getErrorMessage(),
        )

    def ready(self) -> bool:
        return self._connected

    def send(self, messages: list[bytes]) -> None:
        transport: Any = self.transport  # connected: write(packet) without an address
        for message in messages:
            transport.write(message)

    def connectionRefused(self) -> None:
        log.warn("syslog audit sink: udp {host}:{port} refused", host=self._host, port=self._port)

    def stop(self) -> Deferred[None]:
        self._connected = False
        if self._listening is None:
            return succeed(None)
        listening, self._listening = self._listening, None
        stopped: Deferred[None] = maybeDeferred(listening.stopListening)
        return stopped


class _Stream(Protocol):
    def __init__(self, owner: _StreamConnection) -> None:
        self._owner = owner

    def connectionMade(self) -> None:
        self._owner.protocol = self
        log.info("syslog audit sink: connected to {address}", address=self._owner.address)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._owner.protocol is self:
            self._owner.protocol = None
            log.warn(
                "syslog audit sink: connection to {address} lost ({reason})",
                address=self._owner.address,
                reason=reason.getErrorMessage(),
            )


class _StreamConnection:
    """A TCP or TLS connection kept up by a ``ClientService`` (reconnecting with backoff)."""

    def __init__(self, reactor: Any, endpoint: IStreamClientEndpoint, address: str) -> None:
        self.address = address
        self.protocol: _Stream | None = None
        factory = Factory.forProtocol(lambda: _Stream(self))
        self.service = ClientService(endpoint, factory, clock=reactor)

    def start(self) -> None:
        self.service.startService()

    def ready(self) -> bool:
        return self.protocol is not None

    def send(self, messages: list[bytes]) -> None:
        assert self.protocol is not None and self.protocol.transport is not None
        self.protocol.transport.write(b"".join(octet_counted(m) for m in messages))

    def stop(self) -> Deferred[None]:
        stopped: Deferred[None] = self.service.stopService()
        return stopped


@implementer(IAuditSink)
class SyslogSink:
    """
    :param settings: the validated ``audit_log.syslog`` section.
    :param reactor: time (the flush timer), UDP, TCP.
    :param connection: where messages go (a UDP socket or a kept TCP/TLS connection).
    """

    name = "syslog"

    def __init__(self, settings: SyslogSinkSettings, reactor: Any, connection: _Connection) -> None:
        self.settings = settings
        self.counts = {"written": 0, "failed": 0, "dropped": 0}
        self.connection = connection
        hostname = settings.hostname or socket.gethostname()
        self._formatter = SyslogFormatter(
            settings.facility_code, hostname, settings.app_name, str(os.getpid())
        )
        self._queue: list[AuditRecord] = []
        self._service = FlushingService(
            reactor, settings.flush_interval_seconds, self.flush, self._stop, connection.start
        )

    def write(self, record: AuditRecord) -> None:
        if len(self._queue) >= self.settings.max_queue_records:
            self.counts["dropped"] += 1
            return
        self._queue.append(record)

    def reopen(self) -> None:
        """Nothing to reopen: connections are kept (and re-made) by their service."""

    def services(self) -> list[IService]:
        return [self._service]

    @property
    def queued(self) -> int:
        """Records waiting to be sent."""
        return len(self._queue)

    def flush(self) -> None:
        """Send what is queued when connected; keep it queued otherwise."""
        if not self._queue or not self.connection.ready():
            return
        batch, self._queue = self._queue, []
        try:
            self.connection.send([self._formatter.message(record) for record in batch])
        except OSError as e:
            self.counts["failed"] += len(batch)
            log.error(
                "syslog audit sink: send failed ({error}); {count} record(s) lost",
                error=str(e),
                count=len(batch),
            )
        else:
            self.counts["written"] += len(batch)

    def _stop(self) -> Deferred[None]:
        # At shutdown: send what can be sent, count the rest as dropped, disconnect.
        self.flush()
        if self._queue:
            log.warn(
                "syslog audit sink: not connected at shutdown; {count} record(s) dropped",
                count=len(self._queue),
            )
            self.counts["dropped"] += len(self._queue)
            self._queue = []
        return self.connection.stop()


def _stream_endpoint(reactor: Any, host: str, port: int) -> IStreamClientEndpoint:
    if isIPv6Address(host):
        return TCP6ClientEndpoint(reactor, host, port)
    if isIPAddress(host):
        return TCP4ClientEndpoint(reactor, host, port)
    return HostnameEndpoint(reactor, host, port)


def _tls_options(settings: SyslogSinkSettings, host: str, path: str) -> Any:
    tls = settings.tls or SyslogTlsSettings()
    trust: Any = platformTrust()
    if tls.ca_cert_path is not None:
        try:
            with open(tls.ca_cert_path, "rb") as f:
                trust = Certificate.loadPEM(f.read())
        except Exception as e:
            raise ConfigError(
                join(path, "tls.ca_cert_path"), f"cannot load the CA certificate: {e}"
            ) from None
    return optionsForClientTLS(tls.server_name or host, trustRoot=trust)


@implementer(IPlugin, IAuditSinkFactory)
class SyslogSinkFactory:
    """The ``syslog`` sink's plugin factory."""

    name = "syslog"

    def build(self, settings: Mapping[str, Any], path: str, reactor: Any) -> SyslogSink:
        parsed = from_raw(SyslogSinkSettings, settings, path)
        default_port = _DEFAULT_PORTS[parsed.protocol]
        host, port = parse_address(parsed.address, default_port, join(path, "address"))
        connection: _Connection
        if parsed.protocol == "udp":
            connection = _Datagrams(reactor, host, port)
        else:
            endpoint = _stream_endpoint(reactor, host, port)
            if parsed.protocol == "tls":
                endpoint = wrapClientTLS(_tls_options(parsed, host, path), endpoint)
            connection = _StreamConnection(reactor, endpoint, f"{parsed.protocol}://{host}:{port}")
        return SyslogSink(parsed, reactor, connection)
