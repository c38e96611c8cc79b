"""
The root service: listeners (the proxy's, and the metrics listener when ``metrics.port`` is
set) and graceful shutdown.

Shutdown order (SIGTERM): ``/ready`` answers 503 ``shutting_down`` at once, idle keep-alive
connections are closed and busy ones close after their current response; the listeners keep
accepting for ``server.shutdown_delay_seconds`` so load balancers notice (those responses close
their connection too); then they stop listening. Every client connection of either listener
then gets ``server.shutdown_grace_seconds`` to flush its last byte and close (long downloads
included); the rest are aborted. Only then the other services stop and the upstream pools and
caches close.

``SIGHUP`` reloads the configuration file (:class:`yatagarasu.reload.Reloader`, which also
runs the background services of the current generation and serves ``POST /admin/reload``); the
listeners stay, what their sites serve is swapped.

systemd (``Type=notify``) hears of it through the injected :class:`SystemdNotifier`:
``READY=1`` once the listener is bound, ``RELOADING=1`` ... ``READY=1`` around a reload,
``STOPPING=1`` when the drain begins, a ``STATUS=`` line at each step.
"""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass
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
from yatagarasu.config.schema import Config
from yatagarasu.logs import is_default, make_observer
from yatagarasu.reload import Reloader
from yatagarasu.systemd import SystemdNotifier
from yatagarasu.tls import ReloadableServerTLS
from yatagarasu.web.site import ProxySite

log = Logger()

#: seconds the drain waits, after aborting connections, for their ``connectionLost``
ABORT_SETTLE_SECONDS = 1.0


class Reactor(IReactorTime, IReactorTCP):
    """What the proxy needs of a reactor (for type checking only)."""


def listen_endpoint(reactor: Any, host: str, port: int) -> IStreamServerEndpoint:
    """
    :param reactor: an ``IReactorTCP``.
    :param host: the interface: an IPv4 or IPv6 address, or ``localhost``.
    :param port: the TCP port.
    :returns: a TCP endpoint on that interface (IPv6 when ``host`` has a colon).
    """
    if ":" in host:
        return TCP6ServerEndpoint(reactor, port, interface=host)
    return TCP4ServerEndpoint(reactor, port, interface=host)


@dataclass(frozen=True)
class Listener:
    """
    One client-facing listener: what it serves and where.

    :ivar name: ``proxy`` (buckets and the proxy's routes) or ``metrics``.
    :ivar site: the site its connections belong to (tracked for the drain).
    :ivar service: the listening service.
    :ivar host: the interface.
    :ivar port: the TCP port.
    """

    name: str
    site: ProxySite
    service: StreamServerEndpointService
    host: str
    port: int


def _listener(
    reactor: Any, name: str, site: ProxySite, host: str, port: int, factory: Any
) -> Listener:
    service = StreamServerEndpointService(listen_endpoint(reactor, host, port), factory)
    # Fail twistd at start-up (port in use, permission) instead of logging and running on.
    service._raiseSynchronously = True
    return Listener(name, site, service, host, port)


class ProxyService(MultiService):
    """
    The ``twistd yatagarasu`` service.

    :param reactor: the reactor (time and TCP).
    :param assembly: everything built from the configuration (:func:`yatagarasu.assembly.assemble`).
    :param notifier: tells systemd when the proxy is ready, reloads and stops (default: tells
        no one).
    :param reloader: the reloader that built ``assembly`` (``Reloader.first``); default: one
        that reloads ``assembly.config`` again (embedding, tests).
    """

    def __init__(
        self,
        reactor: Any,
        assembly: Assembly,
        notifier: SystemdNotifier | None = None,
        reloader: Reloader | None = None,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._notifier = notifier or SystemdNotifier(None)
        self.reloader = reloader or Reloader.around(reactor, assembly)
        self.reloader.notifier = self._notifier
        config = assembly.config
        self.site = assembly.site
        factory: Any = self.site
        if assembly.tls is not None:
            tls = ReloadableServerTLS(assembly.tls)
            factory = TLSMemoryBIOFactory(tls, False, self.site)
            self.reloader.on_swap.append(lambda new: setattr(tls, "options", new.tls))
        server = config.server
        #: the client-facing listeners: the proxy's, then the metrics listener (when set)
        self.listeners = [
            _listener(reactor, "proxy", self.site, server.host, server.listen_port, factory)
        ]
        metrics_listener = config.metrics.listener(server)
        if assembly.metrics_site is not None and metrics_listener is not None:
            host, port = metrics_listener
            site = assembly.metrics_site
            self.listeners.append(_listener(reactor, "metrics", site, host, port, site))
        for listener in self.listeners:
            listener.service.setServiceParent(self)
        self.reloader.setServiceParent(self)

    @property
    def assembly(self) -> Assembly:
        """The current generation's assembly (a reload replaces it)."""
        return self.reloader.current

    @property
    def config(self) -> Config:
        """The current generation's configuration."""
        return self.reloader.current.config

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
            # The two listeners never share a port (the configuration check refuses it).
            name = next((lst.name for lst in self.listeners if lst.port == e.port), "proxy")
            log.critical(
                "cannot listen on {address}:{port} ({listener}): {reason}",
                address=e.interface,
                port=e.port,
                listener=name,
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
        for listener in self.listeners[1:]:
            log.info(
                "metrics served on http://{address}:{port}/metrics only",
                address=listener.host,
                port=listener.port,
            )
        # privilegedStartService has bound the ports (synchronously: a failure there stops
        # twistd), so the kernel queues connections from now on and systemd may send traffic.
        self._notifier.notify(
            "READY=1",
            f"STATUS=serving {buckets} bucket(s) on {scheme}://{server.host}:{server.listen_port}",
            f"MAINPID={os.getpid()}",
        )

    def _handle_sighup(self) -> None:
        # SIGHUP (systemd's ExecReload) reloads the configuration file, in the reactor thread.
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sighup(signum: int, frame: object) -> None:
            self._reactor.callFromThread(self.reload)

        signal.signal(signal.SIGHUP, on_sighup)

    def reload(self) -> Deferred[None]:
        """
        Reload the configuration file (what SIGHUP does); the outcome is logged.

        :returns: fires when the reload is over (applied or refused).
        """
        log.info("SIGHUP received: reloading the configuration")
        done = Deferred.fromCoroutine(self.reloader.reload())
        done.addErrback(lambda f: log.failure("configuration reload crashed", f))
        return done.addCallback(lambda _: None)

    def stopService(self) -> Deferred[None]:
        return Deferred.fromCoroutine(self._drain())

    async def _drain(self) -> None:
        server = self.assembly.config.server
        sites = [listener.site for listener in self.listeners]
        self.assembly.lifecycle.draining = True
        idle = sum(site.close_connections() for site in sites)
        log.info(
            "shutting down: {active} request(s) in flight, {connections} connection(s) open,"
            " {idle} idle closed",
            active=sum(site.active_count for site in sites),
            connections=sum(site.connection_count for site in sites),
            idle=idle,
        )
        self._notifier.notify(
            "STOPPING=1",
            f"STATUS=draining {sum(site.active_count for site in sites)} request(s),"
            f" {sum(site.connection_count for site in sites)} connection(s)",
        )
        if server.shutdown_delay_seconds > 0:
            await deferLater(self._reactor, server.shutdown_delay_seconds)
        for listener in self.listeners:
            await listener.service.stopService()
        # Connections accepted during the delay may be idle (no request sent yet).
        for site in sites:
            site.close_connections()
        self._notifier.notify(
            f"STATUS=not listening; waiting up to {server.shutdown_grace_seconds:g}s for"
            f" {sum(site.connection_count for site in sites)} connection(s) to close"
        )
        if not await self._all_closed(sites, server.shutdown_grace_seconds):
            requests = sum(site.active_count for site in sites)
            aborted = sum(site.abort_connections() for site in sites)
            log.warn(
                "aborted {aborted} connection(s) still open after {grace:g}s"
                " ({requests} request(s) in flight)",
                aborted=aborted,
                requests=requests,
                grace=server.shutdown_grace_seconds,
            )
            # An aborted transport reports connectionLost on the next reactor turn: let the
            # requests see it (access log, cache fills) before their services stop.
            if not await self._all_closed(sites, ABORT_SETTLE_SECONDS):
                log.warn(
                    "{left} connection(s) not closed after the abort",
                    left=sum(site.connection_count for site in sites),
                )
        # Only now the other services (JWKS timers, cache layers): in-flight requests may
        # still have been filling the cache during the grace period.
        await super().stopService()
        await self.reloader.close()
        log.info("shutdown complete")
        self._notifier.notify("STATUS=shutdown complete")
        self._notifier.close()

    async def _all_closed(self, sites: list[ProxySite], seconds: float) -> bool:
        """
        Wait until every connection of ``sites`` has flushed and closed, for at most
        ``seconds`` in all.

        :param sites: the sites whose connections to wait for.
        :param seconds: how long to wait.
        :returns: whether they all closed in time.
        """
        deadline = self._reactor.seconds() + seconds
        for site in sites:
            closed = site.wait_closed()
            closed.addTimeout(max(0.0, deadline - self._reactor.seconds()), self._reactor)
            try:
                await closed
            except TimeoutError:
                return False
        return True


__all__ = ["IService", "Listener", "ProxyService", "Reactor", "listen_endpoint"]
