"""
Persistent connections to one S3 endpoint, and the ``IAgent`` the S3 client sends through.

:class:`ConnectionPool` keeps up to ``max_idle`` idle connections (the most recently used
first), closes one that stayed idle for ``idle_seconds``, and opens a new connection when
none is idle (there is no bound on connections in use, as with twisted.web's pool). A
connection goes back only after a response read to its end that allowed it to persist. A
GET or HEAD sent on a reused connection that S3 had closed meanwhile is sent once more on a
new connection.

:class:`PooledAgent` is the ``IAgent`` on top: it writes the request's fields as they are
(the S3 client signs them) and answers with :class:`yatagarasu.s3.connection.S3Response`.
"""

from __future__ import annotations

import ipaddress
from typing import Any, cast
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
    wrapClientTLS,
)
from twisted.internet.interfaces import IAddress, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure
from twisted.web.client import BrowserLikePolicyForHTTPS
from twisted.web.http_headers import Headers
from twisted.web.iweb import IAgent, IBodyProducer, IResponse
from zope.interface import implementer

from yatagarasu.s3.connection import S3Connection, StaleConnection
from yatagarasu.turn_writes import connecting_reactor

#: what a request may be sent twice for, when a reused connection turned out closed
_IDEMPOTENT = frozenset((b"GET", b"HEAD"))


def s3_endpoint(
    reactor: Any, scheme: str, netloc: str, connect_timeout: float
) -> IStreamClientEndpoint:
    """
    The endpoint of an S3 origin, built once per pool (building one per request would
    IDNA-encode the host name every time). HTTPS is verified like twisted.web's ``Agent``
    (``BrowserLikePolicyForHTTPS``: the system's CAs and service-identity).

    :param reactor: TCP (and TLS) connections.
    :param scheme: ``http`` or ``https``.
    :param netloc: ``host[:port]``; an address literal is connected to directly.
    :param connect_timeout: seconds a connection may take.
    """
    reactor = connecting_reactor(reactor)  # requests sent at the end of the reactor's turn
    parts = urlsplit(f"{scheme}://{netloc}")
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    endpoint: Any
    try:
        literal = ipaddress.ip_address(host)
    except ValueError:
        endpoint = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
    else:
        # An address needs no resolution, and HostnameEndpoint would report a refused
        # connection only after its 0.3 s attempt delay (a slower failover).
        tcp = TCP4ClientEndpoint if literal.version == 4 else TCP6ClientEndpoint
        endpoint = tcp(reactor, host, port, timeout=connect_timeout)
    if scheme == "https":
        creator = BrowserLikePolicyForHTTPS().creatorForNetloc(host.encode("idna"), port)
        endpoint = wrapClientTLS(creator, endpoint)
    return cast(IStreamClientEndpoint, endpoint)


class _Connections(Factory):
    """Builds the pool's connections (quietly: no log line per connection)."""

    noisy = False

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def buildProtocol(self, addr: IAddress | None) -> S3Connection:
        return S3Connection(self._pool._released, self._pool._closed)


class ConnectionPool:
    """
    Connections to one endpoint.

    :param clock: the idle timers.
    :param endpoint: where the connections go.
    :param max_idle: idle connections kept at most.
    :param idle_seconds: how long an idle connection is kept.
    """

    def __init__(
        self,
        clock: IReactorTime,
        endpoint: IStreamClientEndpoint,
        max_idle: int,
        idle_seconds: float = 30.0,
    ) -> None:
        self._clock = clock
        self._endpoint = endpoint
        self._max_idle = max_idle
        self._idle_seconds = idle_seconds
        self._factory = _Connections(self)
        self._idle: list[S3Connection] = []
        self._closing = False
        #: one timer for every idle connection (none per request)
        self._sweep: Any = None

    @property
    def idle(self) -> int:
        """Idle connections kept now."""
        return len(self._idle)

    def request(
        self, method: bytes, target: bytes, fields: bytes, body: IBodyProducer | None = None
    ) -> Deferred[IResponse]:
        """
        Send one request on an idle connection, or a new one.

        :returns: fires with the response head (see :meth:`S3Connection.send`); cancelling
            it cancels the connection attempt or aborts the connection.
        """
        idle = self._idle
        if not idle:
            return self._on_new(method, target, fields, body)
        connection = idle.pop()
        sent = connection.send(method, target, fields, body)
        if body is None and method in _IDEMPOTENT:
            sent.addErrback(self._again, method, target, fields)
        return sent

    def _again(
        self, failure: Failure, method: bytes, target: bytes, fields: bytes
    ) -> Deferred[IResponse] | Failure:
        if failure.check(StaleConnection) is None:
            return failure
        return self._on_new(method, target, fields, None)

    def _on_new(
        self, method: bytes, target: bytes, fields: bytes, body: IBodyProducer | None
    ) -> Deferred[IResponse]:
        connecting: Deferred[Any] = self._endpoint.connect(self._factory)
        return connecting.addCallback(lambda c: c.send(method, target, fields, body))

    def _released(self, connection: S3Connection) -> None:
        idle = self._idle
        if self._closing or len(idle) >= self._max_idle:
            connection.close()
            return
        connection.idle_since = self._clock.seconds()
        idle.append(connection)
        if self._sweep is None:
            self._sweep = self._clock.callLater(self._idle_seconds, self._expire)

    def _expire(self) -> None:
        """Close the connections idle for ``idle_seconds``; come back for the next one."""
        self._sweep = None
        idle = self._idle
        deadline = self._clock.seconds() - self._idle_seconds
        # Released connections are appended: the front of the list waited longest.
        while idle and idle[0].idle_since <= deadline:
            idle.pop(0).close()
        if idle:
            self._sweep = self._clock.callLater(idle[0].idle_since - deadline, self._expire)

    def _closed(self, connection: S3Connection) -> None:
        idle = self._idle
        if connection in idle:
            idle.remove(connection)
            if not idle and self._sweep is not None:
                self._sweep.cancel()
                self._sweep = None

    async def close(self) -> None:
        """Close the idle connections (and every other one once its exchange ends)."""
        self._closing = True
        idle, self._idle = self._idle, []
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        closing = [connection.close() for connection in idle]
        for closed in closing:
            await closed


@implementer(IAgent)
class PooledAgent:
    """
    The S3 client's ``IAgent``: every request goes to the one origin of its pool.

    :param origin: ``scheme://host[:port]``, the prefix of every URI requested.
    :param pool: the origin's connections.
    """

    def __init__(self, origin: bytes, pool: ConnectionPool) -> None:
        self._origin = origin
        self._skip = len(origin)
        self._pool = pool

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Headers | None = None,
        bodyProducer: IBodyProducer | None = None,
    ) -> Deferred[IResponse]:
        if not uri.startswith(self._origin):
            raise ValueError(f"{uri!r} is not on {self._origin!r}")
        fields = (
            b"".join(
                [
                    b"%s: %s\r\n" % (name, value)
                    for name, values in headers.getAllRawHeaders()
                    for value in values
                ]
            )
            if headers is not None
            else b""
        )
        return self._pool.request(method, uri[self._skip :], fields, bodyProducer)
