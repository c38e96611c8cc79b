"""
The root service: listeners (the proxy's, and the metrics listener when ``metrics.port`` is
set) and graceful shutdown.

Shutdown order (SIGTERM): ``/ready`` answers 503 ``shutting_down`` at once, idle keep-alive
connections are closed and busy ones close after their current response; the listeners keep
accepting for ``server.shutdown_delay_seconds`` so load balancers notice (those responses close
their connection too); then they stop listening. Every client connection of either listener
then gets ``server.shutdown_grace_seconds`` to flush its last byte and close (long downloads
included); the rest are aborted. Only then the other services stop and the upstream pools and
caches close (the audit sinks flush what they still hold as they stop).

SIGUSR1 reopens the audit sinks' files and connections (for logrotate).

``SIGHUP`` reloads the configuration file (:class:`yatagarasu.reload.Reloader`, which also
runs the background services of the current generation and serves ``POST /admin/reload``); the
listeners stay, what their sites serve is swapped.

As one worker of several (``server.workers`` > 1, :class:`WorkerMode`), the listeners adopt
the sockets the parent bound, the control channel to the parent is opened, and the parent
(:mod:`yatagarasu.workers.supervisor`) is the one that talks to systemd and passes signals on.

systemd (``Type=notify``) hears of it through the injected :class:`SystemdNotifier`:
``READY=1`` once the listener is bound, ``RELOADING=1`` ... ``READY=1`` around a reload,
``STOPPING=1`` when the drain begins, a ``STATUS=`` line at each step.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService
from twisted.internet import stdio
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ServerEndpoint, TCP6ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IReactorTCP, IReactorTime, IStreamServerEndpoint
from twisted.internet.task import deferLater
from twisted.logger import ILogObserver, Logger
from twisted.protocols.tls import TLSMemoryBIOFactory

from yatagarasu.assembly import Assembly
from yatagarasu.config.schema import Config
from yatagarasu.logs import is_default, make_observer, with_fields
from yatagarasu.reload import Reloader
from yatagarasu.systemd import SystemdNotifier
from yatagarasu.tls import ReloadableServerTLS
from yatagarasu.turn_writes import TurnWrites, TurnWritesEndpoint, turn_writes_of
from yatagarasu.web.site import ProxySite
from yatagarasu.workers.child import WorkerChannel
from yatagarasu.workers.cpu_affinity import bind_to_cpu
from yatagarasu.workers.sockets import (
    AdoptedEndpoint,
    SocketActivationError,
    SystemdEndpoint,
    cannot_listen,
    family_of,
    socket_activation_failed,
)

log = Logger()

#: seconds the drain waits, after aborting connections, for their ``connectionLost``
ABORT_SETTLE_SECONDS = 1.0


class Reactor(IReactorTime, IReactorTCP):
    """What the proxy needs of a reactor (for type checking only)."""


def listen_endpoint(reactor: Any, host: str, port: int, backlog: int) -> IStreamServerEndpoint:
    """
    :param reactor: an ``IReactorTCP``.
    :param host: the interface: an IPv4 or IPv6 address, or ``localhost``.
    :param port: the TCP port.
    :param backlog: the listen queue (``server.listen_backlog``; Twisted's own default, 50,
        overflows when thousands of clients connect at once: the kernel drops their SYNs and
        handshake ACKs, and their first request waits for retransmissions, seconds).
    :returns: a TCP endpoint on that interface (IPv6 when ``host`` has a colon).
    """
    if ":" in host:
        return TCP6ServerEndpoint(reactor, port, backlog=backlog, interface=host)
    return TCP4ServerEndpoint(reactor, port, backlog=backlog, interface=host)


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


@dataclass(frozen=True)
class WorkerMode:
    """
    How a worker process (``twistd yatagarasu --worker N``) differs from a single process.

    :ivar channel: the control channel to the parent (the assembly's siblings).
    :ivar listen_fds: the inherited listening sockets: the proxy's, then the metrics
        listener's (when set).
    :ivar control_fds: the control channel's pipes: read from the parent, write to it.
    """

    channel: WorkerChannel
    listen_fds: Sequence[int]
    control_fds: tuple[int, int]


def _listener(
    reactor: Any,
    name: str,
    site: ProxySite,
    host: str,
    port: int,
    factory: Any,
    fd: int | None,
    shared: bool,
    systemd_index: int | None,
    backlog: int,
    turn_writes: TurnWrites,
) -> Listener:
    endpoint: IStreamServerEndpoint
    if systemd_index is not None:
        endpoint = SystemdEndpoint(reactor, systemd_index, name, host, port)
    elif fd is not None:
        endpoint = AdoptedEndpoint(reactor, fd, family_of(host), shared)
    else:
        endpoint = listen_endpoint(reactor, host, port, backlog)
    service = StreamServerEndpointService(TurnWritesEndpoint(endpoint, turn_writes), factory)
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
    :param worker: set when this process is one worker of several.
    """

    def __init__(
        self,
        reactor: Any,
        assembly: Assembly,
        notifier: SystemdNotifier | None = None,
        reloader: Reloader | None = None,
        worker: WorkerMode | None = None,
    ) -> None:
        super().__init__()
        self._reactor = reactor
        self._notifier = notifier or SystemdNotifier(None)
        self.reloader = reloader or Reloader.around(reactor, assembly)
        self.reloader.notifier = self._notifier
        config = assembly.config
        self.worker = worker
        self._stop_requested = False
        if worker is not None:
            worker.channel.parent_gone = self._parent_gone
        fds: list[int | None] = list(worker.listen_fds) if worker is not None else [None, None]
        # server.socket_activation (one process only): the sockets systemd passed, in order
        systemd: list[int | None] = (
            [0, 1] if assembly.config.server.socket_activation else [None, None]
        )
        shared = worker is not None
        backlog = assembly.config.server.listen_backlog
        #: the client connections' writes, sent at the end of each reactor turn
        turn_writes = turn_writes_of(reactor)
        proxy_fd = (fds[0], shared, systemd[0], backlog, turn_writes)
        self.site = assembly.site
        factory: Any = self.site
        if assembly.tls is not None:
            tls = ReloadableServerTLS(assembly.tls)
            factory = TLSMemoryBIOFactory(tls, False, self.site)
            self.reloader.on_swap.append(lambda new: setattr(tls, "options", new.tls))
        server = config.server
        #: the client-facing listeners: the proxy's, then the metrics listener (when set)
        self.listeners = [
            _listener(
                reactor, "proxy", self.site, server.host, server.listen_port, factory, *proxy_fd
            )
        ]
        metrics_listener = config.metrics.listener(server)
        if assembly.metrics_site is not None and metrics_listener is not None:
            host, port = metrics_listener
            site = assembly.metrics_site
            self.listeners.append(
                _listener(
                    reactor,
                    "metrics",
                    site,
                    host,
                    port,
                    site,
                    fds[1],
                    shared,
                    systemd[1],
                    backlog,
                    turn_writes,
                )
            )
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
        # logging.format/level/file take effect without extra command-line flags. A worker
        # always writes through ours (to the stdout the parent gave it, or logging.file), each
        # event carrying its worker number.
        if not hasattr(parent, "setComponent"):
            return
        if self.worker is not None:
            observer = make_observer(self.config.logging)
            worker_id = self.worker.channel.worker_id
            parent.setComponent(ILogObserver, with_fields(observer, worker=worker_id))
        elif not is_default(self.config.logging):
            parent.setComponent(ILogObserver, make_observer(self.config.logging))

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except SocketActivationError as e:
            raise socket_activation_failed(e) from None
        except CannotListenError as e:
            # The two listeners never share a port (the configuration check refuses it).
            name = next((lst.name for lst in self.listeners if lst.port == e.port), "proxy")
            raise cannot_listen(e, name) from None

    def startService(self) -> None:
        super().startService()
        self._handle_sighup()
        self._handle_sigusr1()
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
        if self.worker is not None:
            self._start_worker(self.worker)
        admin = self.config.metrics.admin_on_own_listener
        for listener in self.listeners[1:]:
            log.info(
                "metrics served on http://{address}:{port}/metrics{admin}",
                address=listener.host,
                port=listener.port,
                admin=f" and the admin API under {server.admin_path_prefix}" if admin else " only",
            )
        # privilegedStartService has bound the ports (synchronously: a failure there stops
        # twistd), so the kernel queues connections from now on and systemd may send traffic.
        self._notifier.notify(
            "READY=1",
            f"STATUS=serving {buckets} bucket(s) on {scheme}://{server.host}:{server.listen_port}",
            f"MAINPID={os.getpid()}",
        )

    def _start_worker(self, worker: WorkerMode) -> None:
        if self.config.server.worker_cpu_affinity:
            bind_to_cpu(worker.channel.worker_id)
        read_fd, write_fd = worker.control_fds
        standard_io: Any = stdio.StandardIO  # (typed as the Windows one, without the fds)
        standard_io(worker.channel.protocol, stdin=read_fd, stdout=write_fd, reactor=self._reactor)
        worker.channel.connected()
        worker.channel.announce_up()
        log.info(
            "worker {worker} (pid {worker_pid}) up",
            worker=worker.channel.worker_id,
            worker_pid=os.getpid(),
        )
        # after the reactor's own handlers, installed when it starts running
        self._reactor.callWhenRunning(self._worker_signals)

    def _worker_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        # The parent handles Ctrl-C (a terminal sends SIGINT to the whole process group) and
        # passes SIGTERM on; a second SIGTERM (systemd's KillMode=control-group sends one to
        # every process) changes nothing.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(
            signal.SIGTERM, lambda signum, frame: self._reactor.callFromThread(self.stop_process)
        )

    def _parent_gone(self) -> None:
        if not self._stop_requested:
            log.warn("the parent process has gone: stopping this worker")
            self.stop_process()

    def stop_process(self) -> None:
        """Stop the reactor (and so drain) once, however many times it is asked."""
        if not self._stop_requested:
            self._stop_requested = True
            log.info("worker stopping")
            self._reactor.stop()

    def _handle_sighup(self) -> None:
        # SIGHUP (systemd's ExecReload) reloads the configuration file, in the reactor thread.
        if threading.current_thread() is not threading.main_thread():
            return

        def on_sighup(signum: int, frame: object) -> None:
            self._reactor.callFromThread(self.reload)

        signal.signal(signal.SIGHUP, on_sighup)

    def _handle_sigusr1(self) -> None:
        audit = self.assembly.audit
        if audit is None or threading.current_thread() is not threading.main_thread():
            return

        def reopen() -> None:
            log.info("SIGUSR1 received: reopening the audit sinks")
            audit.reopen()

        def on_sigusr1(signum: int, frame: object) -> None:
            self._reactor.callFromThread(reopen)

        signal.signal(signal.SIGUSR1, on_sigusr1)

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
        self._stop_requested = True
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
