"""
Listening sockets handed from the parent to its workers: the parent binds them (so "port in
use" is reported once, before any worker starts), each worker adopts its copy of the file
descriptor with ``adoptStreamPort``. With ``server.socket_activation``, the sockets come from
systemd instead (:class:`SystemdEndpoint`, one process only).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.logger import Logger
from zope.interface import implementer

log = Logger()


def bind(host: str, port: int, backlog: int) -> socket.socket:
    """
    Bind and listen as ``listenTCP`` does (``SO_REUSEADDR``, non-blocking), without accepting.

    :param host: an IPv4 or IPv6 address, or ``localhost``.
    :param port: the TCP port (0: any free one).
    :param backlog: the listen queue (``server.listen_backlog``).
    :returns: the listening socket, inheritable by child processes.
    :raises CannotListenError: when the address cannot be bound (port in use, permission).
    """
    sock = socket.socket(family_of(host), socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as e:
        sock.close()
        raise CannotListenError(host, port, e) from None
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


@implementer(IStreamServerEndpoint)
@dataclass(frozen=True)
class AdoptedEndpoint:
    """
    A server endpoint on a listening socket this process inherited.

    :ivar reactor: an ``IReactorSocket``.
    :ivar fd: the inherited file descriptor (closed once adopted: the port holds a copy).
    :ivar family: ``AF_INET`` or ``AF_INET6``.

    :ivar shared: other processes accept on the same socket (the workers): accept one
        connection per wake-up (:func:`accept_one_at_a_time`).
    """

    reactor: Any
    fd: int
    family: socket.AddressFamily
    shared: bool = True

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        port = self.reactor.adoptStreamPort(self.fd, self.family, protocolFactory)
        os.close(self.fd)
        if self.shared:
            accept_one_at_a_time(port)
        return succeed(port)


def accept_one_at_a_time(port: Any) -> None:
    """
    Make a listening port accept one connection per readiness event.

    Every worker waits on the same socket and the kernel wakes them all; Twisted's port
    accepts up to ``numberAccepts`` connections per wake-up (it grows to the size of the last
    burst), so one worker would take a whole burst — wrk's 50 connections, a load balancer's
    pool — and the others none. One at a time, a burst is spread over the workers that are
    free, and a busy worker leaves new connections to the others.

    :param port: a ``twisted.internet.tcp.Port`` (what ``adoptStreamPort`` returns).
    """
    read = port.doRead

    def do_read() -> Any:
        port.numberAccepts = 1
        return read()

    port.doRead = do_read


def family_of(host: str) -> socket.AddressFamily:
    """:returns: the address family of a listener's interface."""
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def cannot_listen(error: CannotListenError, listener: str) -> SystemExit:
    """
    Log why a listener could not be bound, once, as the one line operators look for.

    :param error: what binding raised.
    :param listener: ``proxy`` or ``metrics``.
    :returns: the exit to raise (status 1).
    """
    log.critical(
        "cannot listen on {address}:{port} ({listener}): {reason}",
        address=error.interface,
        port=error.port,
        listener=listener,
        reason=str(error.socketError),
    )
    return SystemExit(1)


class SocketActivationError(Exception):
    """systemd did not pass the socket ``server.socket_activation`` expects."""


@implementer(IStreamServerEndpoint)
@dataclass(frozen=True)
class SystemdEndpoint:
    """
    A listener on a socket systemd passed (Twisted's ``systemd:`` endpoint: ``$LISTEN_FDS``,
    ``$LISTEN_PID``, ``$LISTEN_FDNAMES``), checked to be bound where the configuration says.

    :ivar reactor: an ``IReactorSocket``.
    :ivar index: which passed socket (0: the first, fd 3).
    :ivar name: the listener (``proxy``, ``metrics``), for messages.
    :ivar host: the configured interface.
    :ivar port: the configured port (0: any).
    """

    reactor: Any
    index: int
    name: str
    host: str
    port: int

    def listen(self, protocolFactory: Any) -> Deferred[IListeningPort]:
        domain = "INET6" if family_of(self.host) == socket.AF_INET6 else "INET"
        description = f"systemd:domain={domain}:index={self.index}"
        try:
            endpoint = serverFromString(self.reactor, description)
        except IndexError:
            return fail(
                SocketActivationError(
                    f"systemd passed no socket for the {self.name} listener (socket"
                    f" {self.index} of $LISTEN_FDS, for this process: $LISTEN_PID)"
                )
            )
        listening: Deferred[IListeningPort] = endpoint.listen(protocolFactory)
        return listening.addCallback(self._check)

    def _check(self, port: IListeningPort) -> IListeningPort:
        bound: Any = port.getHost()
        same_port = not self.port or bound.port == self.port
        same_host = self.host == "localhost" or ipaddress.ip_address(
            bound.host
        ) == ipaddress.ip_address(self.host)
        if not (same_port and same_host):
            port.stopListening()
            raise SocketActivationError(
                f"the {self.name} socket from systemd is bound to {bound.host}:{bound.port};"
                f" the configuration says {self.host}:{self.port}"
            )
        return port


def socket_activation_failed(error: SocketActivationError) -> SystemExit:
    """:returns: the exit (status 1) after logging why the sockets could not be taken."""
    log.critical("server.socket_activation: {reason}", reason=str(error))
    return SystemExit(1)
