"""
TCP connections whose writes are sent at the end of the reactor's turn.

A Twisted TCP transport sends what its protocol writes once the reactor finds the socket
writable: each response registers the socket for writability (an ``epoll_ctl``), is sent by
``doWrite`` in the reactor's next turn (one more event, dispatched through Twisted's logging
context), and the socket is unregistered again (a second ``epoll_ctl``). Most responses fit
in the kernel's send buffer, so that round trip through the reactor buys nothing.

:class:`TurnWrites` sends each connection's writes of a turn itself, once the reactor has
handled every event of the turn (a ``callLater(0)``, one per turn), in one ``send`` or
``sendmsg`` (no join of the pieces). Responses made in one turn still leave together, after
the turn, as Twisted's would: only the registration and the extra event are saved. Only the
plain case takes this path; a connection that is closing, half-closed, aborted or has
unsent bytes left goes Twisted's way, and so do the bytes the kernel did not take (they wait
in the transport's buffer, and the socket is registered for writability as before).

A body kept in a file (the memory layer's large bodies, :class:`BodyFile`) can be written as
a file piece (:meth:`SentAtTurnEnd.write_file`): at the turn's end the bytes ahead of it go with
``MSG_MORE`` and the body with ``sendfile``, so the kernel takes references to the file's pages
instead of a copy; what the kernel does not take stays a file piece that ``doWrite`` sends.

``ProxyService`` gives every listener's port this transport (:class:`TurnWritesEndpoint`);
the S3 and Redis connection pools connect through :func:`connecting_reactor`, whose
``connectTCP`` makes :class:`TurnWritesClient` connections (a client that is still connecting
waits for writability as before).
"""

from __future__ import annotations

import os
import socket
import weakref
from dataclasses import dataclass
from errno import EAGAIN, ENOBUFS, EWOULDBLOCK
from typing import Any, Protocol

from twisted.internet import main, tcp
from twisted.internet.base import ReactorBase
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IReactorFDSet,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.util import untilConcludes
from zope.interface import directlyProvides, implementer, providedBy

log = Logger()

#: the most pieces one ``sendmsg`` takes (Linux's ``IOV_MAX``); the rest waits for ``doWrite``
MAX_PIECES = 1024
#: ``send`` errors that mean "the kernel's buffer is full", not "the connection is gone"
_FULL = (EAGAIN, EWOULDBLOCK, ENOBUFS)


class BodyFile(Protocol):
    """A body in a file (:class:`yatagarasu.values.MappedBody`): what ``write_file`` sends."""

    def fileno(self) -> int:
        """:returns: the file's descriptor, open while the object is alive."""

    def read(self, offset: int, size: int) -> bytes:
        """:returns: a copy of ``size`` bytes from ``offset``."""


#: A file piece: the body, where its unsent bytes start, how many there are.
_FilePiece = tuple[BodyFile, int, int]


class TurnWrites:
    """
    The connections of one reactor with writes to send at the end of its current turn.

    :param reactor: the reactor whose turns these are.
    """

    def __init__(self, reactor: IReactorTime) -> None:
        self._reactor = reactor
        self._queued: list[SentAtTurnEnd] = []
        self._call: IDelayedCall | None = None

    def transport(
        self,
        skt: socket.socket,
        protocol: IProtocol,
        client: tuple[object, ...],
        server: tcp.Port,
        sessionno: int,
        reactor: IReactorFDSet,
    ) -> TurnWritesServer:
        """
        Make the transport of an accepted connection (a ``tcp.Port``'s ``transport``).

        The arguments are those ``tcp.Port`` gives ``tcp.Server``.
        """
        return TurnWritesServer(self, skt, protocol, client, server, sessionno, reactor)

    def queue(self, transport: SentAtTurnEnd) -> None:
        """
        Send ``transport``'s writes at the end of this turn.

        :param transport: a connection that was written to, not queued yet.
        """
        self._queued.append(transport)
        if self._call is None:
            self._call = self._reactor.callLater(0, self._send)

    def _send(self) -> None:
        self._call = None
        queued, self._queued = self._queued, []
        for transport in queued:  # a write while sending (a producer resumed) waits a turn
            try:
                transport.send_queued()
            except Exception:
                # What the reactor does when a doWrite raises (a producer's resumeProducing,
                # say): the error is logged and that connection is torn down; the others
                # queued behind it are still sent.
                log.failure("sending a connection's writes", peer=str(transport.getPeer()))
                transport.connectionLost(Failure())


def sending_at_turn_end(transport: object) -> bool:
    """
    :returns: whether ``transport`` was written to this turn and sends it at the turn's end
        (a :class:`SentAtTurnEnd` queued for it); ``False`` for any other transport. A TLS
        connection's wrapper passes the question on to the TCP transport under it
        (``ProtocolWrapper`` forwards unknown attributes), which is where its writes go.
    """
    return getattr(transport, "_queued", False) is True


class SentAtTurnEnd(tcp.Connection):
    """
    What a TCP transport does to have :class:`TurnWrites` send its writes (the server's and
    the client's classes below).

    :ivar _turn_writes: the queue of its reactor.
    """

    _turn_writes: TurnWrites
    _queued = False
    #: a file piece written this turn, sent after the first ``_file_after`` pieces of
    #: ``_tempDataBuffer``
    _file: _FilePiece | None = None
    _file_after = 0
    #: a file piece the kernel has not taken yet: it goes after ``dataBuffer[offset:]`` and
    #: before ``_tempDataBuffer`` (sent by :meth:`doWrite`)
    _unsent_file: _FilePiece | None = None

    def startWriting(self) -> None:
        """Something was written (or the connection is closing): send it at the turn's end."""
        if not self.connected:  # a client waiting for its connection: Twisted's way
            self._start_writing()
        elif not self._queued:
            self._queued = True
            self._turn_writes.queue(self)

    def _start_writing(self) -> None:
        """Twisted's way: wait for the socket to be writable, then ``doWrite``."""
        super().startWriting()

    def write_file(self, body: BodyFile, offset: int, size: int) -> None:
        """
        Write ``size`` bytes of ``body`` from ``offset``, after what was written so far: they
        are sent with ``sendfile`` at the turn's end (the kernel takes references to the
        file's pages instead of copying them), and kept as a file piece while the kernel's
        buffer is full. ``body`` is held until they are sent.

        A connection that is not in the plain state, or has a file piece already, is written
        a copy instead.

        :param body: the file.
        :param offset: where the bytes start.
        :param size: how many (more than zero).
        """
        if (
            not self.connected
            or self.disconnecting
            or self._writeDisconnected
            or self._file is not None
            or self._unsent_file is not None
        ):
            self.write(body.read(offset, size))
            return
        self._file = (body, offset, size)
        self._file_after = len(self._tempDataBuffer)
        self.startWriting()

    def send_queued(self) -> None:
        """
        Send what was written this turn, or leave it to ``doWrite`` when the connection is
        not in the plain state (closing, half-closed, bytes left from an earlier write).
        """
        self._queued = False
        if self.disconnected or self._aborting:
            self._file = self._unsent_file = None
            return
        if (
            self.disconnecting
            or self._writeDisconnecting
            or self.offset != len(self.dataBuffer)
            or self._unsent_file is not None
        ):
            self._keep_file(0)
            self._start_writing()
            return
        sent_file = self._file is not None
        if sent_file and not self._send_file():
            return
        pieces = self._tempDataBuffer
        if not pieces:
            if sent_file:
                self.dataBuffer, self.offset = b"", 0
                self._drained()
            else:
                self._start_writing()
            return
        try:
            if len(pieces) == 1:
                sent = untilConcludes(self.socket.send, pieces[0])
            else:
                sent = untilConcludes(self.socket.sendmsg, pieces[:MAX_PIECES])
        except OSError as error:
            if error.errno not in _FULL:  # gone: doWrite finds out and tears it down
                self._start_writing()
                return
            sent = 0
        if sent == self._tempDataLen:
            self._tempDataBuffer = []
            self._tempDataLen = 0
            self.dataBuffer, self.offset = b"", 0  # what doWrite had sent, if anything
            self._drained()
            return
        self._keep_unsent(pieces, sent)
        self._start_writing()

    def _send_file(self) -> bool:
        """
        Send the pieces written before this turn's file piece (with ``MSG_MORE``), then the
        file piece with ``sendfile``.

        :returns: whether the kernel took both; if not, what it did not take waits for
            ``doWrite`` (the socket registered for writability), and the producer is paused.
        """
        assert self._file is not None
        body, offset, size = self._file
        pieces = self._tempDataBuffer
        before = pieces[: self._file_after]
        if len(before) > MAX_PIECES:  # pragma: no cover - a thousand writes ahead of a body
            self._keep_file(0)
            self._start_writing()
            return False
        ahead = sum(map(len, before))
        sent = 0
        try:
            if before:
                sent = untilConcludes(self.socket.sendmsg, before, (), socket.MSG_MORE)
            if sent == ahead:
                fd = self.socket.fileno()
                sent += untilConcludes(os.sendfile, fd, body.fileno(), offset, size)
        except OSError as error:
            if error.errno not in _FULL:  # gone: doWrite finds out and tears it down
                self._keep_file(0)
                self._start_writing()
                return False
        if sent == ahead + size:  # the pieces after the file are sent as usual
            self._file = None
            self._tempDataBuffer = pieces[self._file_after :]
            self._tempDataLen -= ahead
            return True
        self._keep_file(sent)
        self._start_writing()
        producer: Any = self.producer
        if producer is not None and self.streamingProducer and not self.producerPaused:
            self.producerPaused = True
            producer.pauseProducing()
        return False

    def _keep_file(self, sent: int) -> None:
        """
        Turn this turn's file piece (if any) into the unsent state that :meth:`doWrite`
        sends from: the bytes ahead of it in ``dataBuffer``, the file piece, then the pieces
        written after it.

        :param sent: how many bytes of the pieces ahead of the file, and then of the file,
            the kernel took already.
        """
        if self._file is None:
            return
        body, offset, size = self._file
        self._file = None
        pieces = self._tempDataBuffer
        ahead: list[bytes | memoryview] = list(pieces[: self._file_after])
        if self.offset < len(self.dataBuffer):  # bytes left from an earlier turn go first
            ahead.insert(0, memoryview(self.dataBuffer)[self.offset :])
        length = sum(map(len, ahead))
        taken = min(sent, length)
        self.dataBuffer, self.offset = b"".join(ahead), taken
        into_file = sent - taken
        self._unsent_file = (body, offset + into_file, size - into_file)
        self._tempDataBuffer = after = pieces[self._file_after :]
        self._tempDataLen = sum(map(len, after))

    def doWrite(self) -> Any:
        """
        Twisted's ``doWrite``, after a file piece the kernel had not taken: first the bytes
        ahead of it, then the file with ``sendfile``, then the rest the usual way.

        A file piece written this turn (the connection was waiting for writability, and it
        came before the turn's end) is put in its place first, so that the bytes written
        after it do not overtake it.
        """
        self._keep_file(0)
        unsent = self._unsent_file
        if unsent is None:
            return super().doWrite()
        if self.offset < len(self.dataBuffer):
            sent = self.writeSomeData(memoryview(self.dataBuffer)[self.offset :])  # type: ignore[arg-type]
            if isinstance(sent, Exception):
                return sent
            self.offset += sent
            if self.offset < len(self.dataBuffer):
                return None
        body, offset, size = unsent
        try:
            sent = untilConcludes(os.sendfile, self.socket.fileno(), body.fileno(), offset, size)
        except OSError as error:
            return None if error.errno in _FULL else main.CONNECTION_LOST
        if sent == 0:  # pragma: no cover - the file is sealed: it cannot end early
            return main.CONNECTION_LOST
        if sent < size:
            self._unsent_file = (body, offset + sent, size - sent)
            return None
        self._unsent_file = None
        self.dataBuffer, self.offset = b"", 0
        return super().doWrite()  # the pieces written after it; then producers, closing

    def connectionLost(self, reason: Failure) -> None:
        """Let go of file pieces not sent (the cache may have dropped their bodies)."""
        self._file = self._unsent_file = None
        super().connectionLost(reason)

    def _keep_unsent(self, pieces: list[bytes], sent: int) -> None:
        """Leave what the kernel did not take where ``doWrite`` sends from (no copy)."""
        index = 0
        while sent >= len(pieces[index]):  # ends within the list: not everything was sent
            sent -= len(pieces[index])
            index += 1
        self.dataBuffer, self.offset = pieces[index], sent
        self._tempDataBuffer = rest = pieces[index + 1 :]
        self._tempDataLen = sum(map(len, rest))

    def _drained(self) -> None:
        """Everything written was sent: a producer waiting for that goes on (as in doWrite)."""
        producer: Any = self.producer  # IPushProducer or IPullProducer: both resume
        if producer is not None and ((not self.streamingProducer) or self.producerPaused):
            self.producerPaused = False
            producer.resumeProducing()


class TurnWritesServer(SentAtTurnEnd, tcp.Server):
    """
    An accepted TCP connection whose writes :class:`TurnWrites` sends at the end of the turn.

    :param turn_writes: the queue of its reactor.

    The other arguments are ``tcp.Server``'s.
    """

    def __init__(
        self,
        turn_writes: TurnWrites,
        skt: socket.socket,
        protocol: IProtocol,
        client: tuple[object, ...],
        server: tcp.Port,
        sessionno: int,
        reactor: IReactorFDSet,
    ) -> None:
        self._turn_writes = turn_writes
        super().__init__(skt, protocol, client, server, sessionno, reactor)


class TurnWritesClient(SentAtTurnEnd, tcp.Client):
    """
    An outgoing TCP connection whose writes :class:`TurnWrites` sends at the end of the turn,
    once it is connected.

    :param turn_writes: the queue of its reactor.

    The other arguments are ``tcp.Client``'s.
    """

    def __init__(
        self,
        turn_writes: TurnWrites,
        host: str,
        port: int,
        bindAddress: Any,
        connector: tcp.Connector,
        reactor: Any,
    ) -> None:
        self._turn_writes = turn_writes
        super().__init__(host, port, bindAddress, connector, reactor)


class TurnWritesConnector(tcp.Connector):
    """
    ``reactor.connectTCP``'s connector, making :class:`TurnWritesClient` transports.

    :param turn_writes: the queue of its reactor.

    The other arguments are ``tcp.Connector``'s.
    """

    def __init__(
        self,
        turn_writes: TurnWrites,
        host: str,
        port: int,
        factory: Any,
        timeout: float,
        bindAddress: Any,
        reactor: Any,
    ) -> None:
        self._turn_writes = turn_writes
        super().__init__(host, port, factory, timeout, bindAddress, reactor)

    def _makeTransport(self) -> TurnWritesClient:
        return TurnWritesClient(
            self._turn_writes, self.host, self.port, self.bindAddress, self, self.reactor
        )


class ConnectingReactor:
    """
    A reactor whose ``connectTCP`` makes :class:`TurnWritesClient` connections; everything
    else (time, name resolution, TLS) is the reactor's own. It provides what the reactor
    provides, so endpoints (``HostnameEndpoint``) take it for the reactor.

    :param reactor: a real reactor (``ReactorBase``).
    """

    def __init__(self, reactor: ReactorBase) -> None:
        self._reactor = reactor
        self._turn_writes = turn_writes_of(reactor)
        directlyProvides(self, providedBy(reactor))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._reactor, name)

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30.0,
        bindAddress: Any = None,
    ) -> TurnWritesConnector:
        """``IReactorTCP.connectTCP``, with a :class:`TurnWritesClient` transport."""
        connector = TurnWritesConnector(
            self._turn_writes, host, port, factory, timeout, bindAddress, self._reactor
        )
        connector.connect()
        return connector


_QUEUES: weakref.WeakKeyDictionary[Any, TurnWrites] = weakref.WeakKeyDictionary()
_CONNECTING: weakref.WeakKeyDictionary[ReactorBase, ConnectingReactor] = weakref.WeakKeyDictionary()


def turn_writes_of(reactor: Any) -> TurnWrites:
    """
    :param reactor: a reactor.
    :returns: its one :class:`TurnWrites`, shared by the listeners and the pools, so that a
        turn's writes of every connection are sent by one call at its end.
    """
    found = _QUEUES.get(reactor)
    if found is None:
        found = _QUEUES[reactor] = TurnWrites(reactor)
    return found


def connecting_reactor(reactor: Any) -> Any:
    """
    :param reactor: the reactor a connection pool was given.
    :returns: for a real reactor, the one :class:`ConnectingReactor` around it; any other
        (a test's ``MemoryReactor``, which records connections instead of making them) as it is.
    """
    if not isinstance(reactor, ReactorBase):
        return reactor
    found = _CONNECTING.get(reactor)
    if found is None:
        found = _CONNECTING[reactor] = ConnectingReactor(reactor)
    return found


@implementer(IStreamServerEndpoint)
@dataclass(frozen=True)
class TurnWritesEndpoint:
    """
    A server endpoint whose TCP connections are :class:`TurnWritesServer`\\ s.

    :ivar endpoint: the endpoint that listens (TCP, an adopted socket, systemd's).
    :ivar turn_writes: the queue of the reactor it listens with.
    """

    endpoint: IStreamServerEndpoint
    turn_writes: TurnWrites

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        listening: Deferred[IListeningPort] = self.endpoint.listen(protocolFactory)
        return listening.addCallback(self._use)

    def _use(self, port: IListeningPort) -> IListeningPort:
        if isinstance(port, tcp.Port):
            port.transport = self.turn_writes.transport  # type: ignore[assignment]
        return port
