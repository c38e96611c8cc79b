"""An in-memory S3 origin for the connection pool's tests: connections on StringTransports."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionAborted, ConnectionDone
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from zope.interface import implementer


class Wire(StringTransport):
    """One connection's transport; closing or aborting it is seen by the protocol at once."""

    def __init__(self) -> None:
        super().__init__()
        self.protocol: Any = None
        self.aborted = False

    def loseConnection(self) -> None:
        if self.connected:
            self.connected = False
            super().loseConnection()
            self.protocol.connectionLost(Failure(ConnectionDone()))

    def abortConnection(self) -> None:
        if self.connected:
            self.aborted = True
            self.connected = False
            self.disconnecting = True
            self.protocol.connectionLost(Failure(ConnectionAborted()))

    def closed_by_peer(self) -> None:
        """S3 closed the connection."""
        self.connected = False
        self.protocol.connectionLost(Failure(ConnectionDone()))

    def answer(self, data: bytes) -> None:
        """S3 sends ``data``."""
        self.protocol.dataReceived(data)


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    Connects at once (``immediate``) or when the test calls :meth:`complete`.

    :ivar wires: every connection's transport, in the order they were opened.
    """

    def __init__(self, immediate: bool = True) -> None:
        self.immediate = immediate
        self.wires: list[Wire] = []
        self.pending: list[tuple[IProtocolFactory, Deferred[Any]]] = []
        self.cancelled = 0

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[Any]:
        def cancel(d: Deferred[Any]) -> None:
            self.cancelled += 1

        d: Deferred[Any] = Deferred(cancel)
        self.pending.append((protocolFactory, d))
        if self.immediate:
            self.complete()
        return d

    def complete(self) -> Wire:
        """Finish the oldest pending connection attempt."""
        factory, d = self.pending.pop(0)
        protocol = factory.buildProtocol(None)
        assert protocol is not None
        wire = Wire()
        wire.protocol = protocol
        protocol.makeConnection(wire)
        self.wires.append(wire)
        d.callback(protocol)
        return wire
