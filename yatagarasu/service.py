"""
The root service: listeners and graceful shutdown.

Shutdown order (SIGTERM): ``/ready`` answers 503 ``shutting_down`` at once, idle keep-alive
connections are closed and busy ones close after their current response; the listener keeps
accepting for ``server.shutdown_delay_seconds`` so load balancers notice (those responses close
their connection too); then it stops listening. Every client connection then gets
``server.shutdown_grace_seconds`` to flush its last byte and close (long downloads included);
the rest are aborted. Only then the other services stop and the upstream pools and caches close.

systemd (``Type=notify``) hears of it through the injected :class:`SystemdNotifier`:
``READY=1`` once the listener is bound, ``STOPPING=1`` when the drain begins, a ``STATUS=`` line
at each step. ``RELOADING=1`` belongs to hot reload, which is not built yet: SIGHUP is only
logged, so nothing is sent for it.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from yatagarasu.assembly import Assembly
from yatagarasu.config.schema import ServerConfig
from yatagarasu.logs import is_default, make_observer
from yatagarasu.systemd import SystemdNotifier

log = Logger()

#: seconds the drain waits, after aborting connections, for their ``connectionLost``
ABORT_SETTLE_SECONDS = 1.0


class Reactor(IReactorTime, IReactorTCP):
    """What the proxy needs of a reactor (for type checking only)."""


def listen_endpoint(reactor: Any, server: ServerConfig) -> IStreamServerEndpoint:
    """
    :param reactor: an ``IReactorTCP``.
    :param server: the ``server`` section.
    :returns: a TCP endpoint on ``server.address`` (IPv4 or IPv6) and the listen port.
    """
    host = server.host
    if ":" in host:
        return TCP6ServerEndpoint(reactor, server.listen_port, interface=host)
    return TCP4ServerEndpoint(reactor, server.listen_port, interface=host)


class ProxyService(MultiService):
    """
    The ``twistd yatagarasu`` service.

    :param reactor: the reactor (time and TCP).
    :param assembly: everything built from the configuration (:func:`yatagarasu.assembly.assemble`).
    :param notifier: tells systemd when the proxy is ready and when it stops (default: tells
        no one).
    """

    def __init__(
        self, reactor: Any, assembly: Assembly, notifier: SystemdNotifier | None = None
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._notifier = notifier or SystemdNotifier(None)
        self.assembly = assembly
        self.config = config = assembly.config
        self.site = assembly.site
        factory: Any = self.site
        if assembly.tls is not None:
            factory = TLSMemoryBIOFactory(assembly.tls, False, self.site)
        self._listener = StreamServerEndpointService(
            listen_endpoint(reactor, config.server), factory
        )
        # Fail twistd at start-up (port in use, permission) instead of logging and running on.
        self._listener._raiseSynchronously = True
        self._listener.setServiceParent(self)
        for service in assembly.services:
            service.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        super().setServiceParent(parent)
        # twistd asks the application for a log observer just after makeService: this is how
        # logging.format/level/file take effect without extra command-line flags.
        if not is_default(self.config.logging) and hasattr(parent, "setComponent"):
            parent.setComponent(ILogObserver, make_observer(self.config.logging))

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            server = self.config.server
            log.critical(
                "cannot listen on {address}:{port}: {reason}",
                address=server.host,
                port=server.listen_port,
                reason=str(e.socketError),
            )
            raise SystemExit(1) from None

    def startService(self) -> None:
        super().startService()
        self._handle_sighup()
        server = self.config.server
        scheme = "https" if server.tls else "http"
        buckets = len(self.config.buckets)
        log.info(
            "yatagarasu serving {buckets} bucket(s) on {scheme}://{address}:{port}",
            buckets=buckets,
            scheme=scheme,
            address=server.host,
            port=server.listen_port,
        )
        # privilegedStartService has bound the port (synchronously: a failure there stops
        # twistd), so the kernel queues connections from now on and systemd may send traffic.
        self._notifier.notify(
            "READY=1",
            f"STATUS=serving {buckets} bucket(s) on {scheme}://{server.host}:{server.listen_port}",
            f"MAINPID={os.getpid()}",
        )

    def _handle_sighup(self) -> None:
        # Hot reload is not built yet. Until it is, SIGHUP (systemd's ExecReload) is logged
        # instead of killing the process, which is what an unhandled SIGHUP would do.
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sighup(signum: int, frame: object) -> None:
            self._reactor.callFromThread(
                log.warn,
                "SIGHUP received: hot reload is not supported yet; restart to apply"
                " configuration changes",
            )

        signal.signal(signal.SIGHUP, on_sighup)

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        server = self.config.server
        self.assembly.lifecycle.draining = True
        idle = self.site.close_connections()
        log.info(
            "shutting down: {active} request(s) in flight, {connections} connection(s) open,"
            " {idle} idle closed",
            active=self.site.active_count,
            connections=self.site.connection_count,
            idle=idle,
        )
        self._notifier.notify(
            "STOPPING=1",
            f"STATUS=draining {self.site.active_count} request(s),"
            f" {self.site.connection_count} connection(s)",
        )
        if server.shutdown_delay_seconds > 0:
            await deferLater(self._reactor, server.shutdown_delay_seconds)
        await self._listener.stopService()
        # Connections accepted during the delay may be idle (no request sent yet).
        self.site.close_connections()
        self._notifier.notify(
            f"STATUS=not listening; waiting up to {server.shutdown_grace_seconds:g}s for"
            f" {self.site.connection_count} connection(s) to close"
        )
        closed = self.site.wait_closed()
        closed.addTimeout(server.shutdown_grace_seconds, self._reactor)
        try:
            await closed
        except TimeoutError:
            requests = self.site.active_count
            aborted = self.site.abort_connections()
            log.warn(
                "aborted {aborted} connection(s) still open after {grace:g}s"
                " ({requests} request(s) in flight)",
                aborted=aborted,
                requests=requests,
                grace=server.shutdown_grace_seconds,
            )
            # An aborted transport reports connectionLost on the next reactor turn: let the
            # requests see it (access log, cache fills) before their services stop.
            settled = self.site.wait_closed()
            settled.addTimeout(ABORT_SETTLE_SECONDS, self._reactor)
            try:
                await settled
            except TimeoutError:
                log.warn(
                    "{left} connection(s) not closed after the abort",
                    left=self.site.connection_count,
                )
        # Only now the other services (JWKS timers, cache layers): in-flight requests may
        # still have been filling the cache during the grace period.
        await super().stopService()
        await self.assembly.close()
        log.info("shutdown complete")
        self._notifier.notify("STATUS=shutdown complete")
        self._notifier.close()


__all__ = ["IService", "ProxyService", "Reactor", "listen_endpoint"]
