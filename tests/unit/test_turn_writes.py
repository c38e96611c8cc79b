"""
``yatagarasu.turn_writes``: a connection's writes of a reactor turn leave in one system call at
the turn's end, on real sockets; whatever the kernel does not take, and every connection that
is not in the plain state (closing, aborted, a client still connecting), goes Twisted's way
(registered for writability, sent by doWrite).
"""

from __future__ import annotations

import select
import socket
import struct
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.defer import succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import (
    IPushProducer,
    IReactorTCP,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from yatagarasu.turn_writes import (
    ConnectingReactor,
    TurnWrites,
    TurnWritesClient,
    TurnWritesConnector,
    TurnWritesEndpoint,
    TurnWritesServer,
    connecting_reactor,
    sending_at_turn_end,
    turn_writes_of,
)
from yatagarasu.values import MappedBody


class FakePort:
    """What ``tcp.Server`` asks of its port."""

    _realPortNumber = 8080


class Connection:
    """A ``TurnWritesServer`` on one end of a socket pair, the other end read by the test."""

    def __init__(self, turn_writes: TurnWrites, memory_reactor: MemoryReactorClock) -> None:
        ours, self.peer = self.sockets()
        ours.setblocking(False)
        self.peer.settimeout(5)
        self.protocol = Protocol()
        self.transport = turn_writes.transport(
            ours,
            self.protocol,
            ("127.0.0.1", 40000),
            FakePort(),
            1,
            memory_reactor,  # type: ignore[arg-type]
        )
        self.protocol.makeConnection(self.transport)
        self._reactor = memory_reactor

    @staticmethod
    def sockets() -> tuple[socket.socket, socket.socket]:
        """:returns: the transport's socket and the test's end."""
        return socket.socketpair()

    def received(self, size: int) -> bytes:
        """Read exactly ``size`` bytes from the peer's end (bounded: 5 s per read)."""
        got = b""
        for _ in range(100_000):
            if len(got) >= size:
                break
            chunk = self.peer.recv(size - len(got))
            assert chunk, "the connection closed early"
            got += chunk
        return got

    def leave_unsent(self, size: int) -> bytes:
        """
        Shrink the send buffer, write ``size`` bytes and end the turn: more than the kernel
        takes, so that some of them are left to ``doWrite``.

        :returns: the bytes written.
        """
        self.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        first = b"a" * size
        self.transport.write(first)
        self._reactor.advance(0)
        return first

    def close(self) -> None:
        self.peer.close()
        ours = getattr(self.transport, "socket", None)  # gone once the connection is lost
        if ours is not None:
            ours.close()

    def pending(self) -> bytes:
        """What the peer can read right now, without waiting."""
        self.peer.setblocking(False)
        try:
            return self.peer.recv(1 << 20)
        except BlockingIOError:
            return b""
        finally:
            self.peer.settimeout(5)


@pytest.fixture
def memory_reactor() -> MemoryReactorClock:
    return MemoryReactorClock()


@pytest.fixture
def turn_writes(memory_reactor: MemoryReactorClock) -> TurnWrites:
    return TurnWrites(memory_reactor)


@pytest.fixture
def connection(turn_writes: TurnWrites, memory_reactor: MemoryReactorClock) -> Iterator[Connection]:
    made = Connection(turn_writes, memory_reactor)
    yield made
    made.close()


def test_writes_of_a_turn_leave_together_at_its_end(
    connection: Connection, memory_reactor: MemoryReactorClock
) -> None:
    connection.transport.write(b"HTTP/1.1 200 OK\r\n\r\n")
    connection.transport.writeSequence([b"body ", b"and more"])
    assert connection.pending() == b""  # nothing before the turn ends
    assert len(memory_reactor.getDelayedCalls()) == 1
    memory_reactor.advance(0)
    assert connection.received(32) == b"HTTP/1.1 200 OK\r\n\r\nbody and more"
    assert connection.transport not in memory_reactor.writers  # never registered for writability
    assert connection.transport.dataBuffer == b""
    assert connection.transport._tempDataBuffer == []
    assert connection.transport._tempDataLen == 0


def test_one_call_at_the_turns_end_serves_every_connection(
    turn_writes: TurnWrites, memory_reactor: MemoryReactorClock
) -> None:
    connections = [Connection(turn_writes, memory_reactor) for _ in range(3)]
    for number, each in enumerate(connections):
        each.transport.write(b"answer %d" % number)
        each.transport.write(b"!")
    assert len(memory_reactor.getDelayedCalls()) == 1
    memory_reactor.advance(0)
    assert [each.received(9) for each in connections] == [b"answer 0!", b"answer 1!", b"answer 2!"]
    assert memory_reactor.getDelayedCalls() == []
    for each in connections:
        each.close()


def test_what_the_kernel_does_not_take_is_left_to_do_write(
    connection: Connection, memory_reactor: MemoryReactorClock
) -> None:
    transport = connection.transport
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    pieces = [bytes([65 + n]) * 300_000 for n in range(4)]  # far more than the buffers hold
    transport.writeSequence(pieces)
    memory_reactor.advance(0)
    assert transport in memory_reactor.writers  # Twisted's way for the rest
    left = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    expected = b"".join(pieces)
    assert 0 < left < len(expected)
    got = connection.pending()
    for _ in range(10_000):  # the reactor would call doWrite as the socket drains
        if len(got) == len(expected):
            break
        transport.doWrite()
        got += connection.pending()
    assert got == expected
    assert transport not in memory_reactor.writers  # drained: unregistered by doWrite


def test_a_write_behind_unsent_bytes_waits_for_do_write(
    connection: Connection, memory_reactor: MemoryReactorClock
) -> None:
    transport = connection.transport
    connection.leave_unsent(1_000_000)
    assert transport in memory_reactor.writers
    before = transport.dataBuffer, transport.offset
    transport.write(b"tail")
    memory_reactor.advance(0)
    assert (transport.dataBuffer, transport.offset) == before  # nothing sent around doWrite
    assert transport._tempDataBuffer == [b"tail"]
    got = connection.pending()
    for _ in range(10_000):
        if len(got) == 1_000_004:
            break
        transport.doWrite()
        got += connection.pending()
    assert got == b"a" * 1_000_000 + b"tail"


def test_closing_after_a_write_sends_it_then_closes(
    connection: Connection, memory_reactor: MemoryReactorClock
) -> None:
    transport = connection.transport
    transport.write(b"last words")
    transport.loseConnection()
    memory_reactor.advance(0)
    assert transport in memory_reactor.writers  # a closing connection goes Twisted's way
    assert connection.pending() == b""
    why = transport.doWrite()  # what the reactor does next: send, then tell it to close
    assert isinstance(why, ConnectionDone)
    transport.connectionLost(Failure(why))  # as the reactor does with that answer
    assert connection.received(10) == b"last words"
    assert connection.peer.recv(10) == b""  # closed after the last byte


def test_an_aborted_connection_sends_nothing(
    connection: Connection, memory_reactor: MemoryReactorClock
) -> None:
    transport = connection.transport
    transport.write(b"never")
    transport.abortConnection()
    memory_reactor.advance(0)
    assert connection.peer.recv(10) == b""  # closed, and the write dropped


def test_a_connection_lost_before_the_turns_end_sends_nothing(
    connection: Connection, memory_reactor: MemoryReactorClock
) -> None:
    transport = connection.transport
    transport.write(b"never")
    transport.connectionLost(Failure(ConnectionDone()))
    memory_reactor.advance(0)  # no error, no send on a closed socket
    assert transport not in memory_reactor.writers
    assert connection.peer.recv(10) == b""


def test_a_connection_the_peer_reset_is_left_to_do_write(
    connection: Connection, memory_reactor: MemoryReactorClock
) -> None:
    connection.peer.close()
    transport = connection.transport
    transport.write(b"to nobody")
    memory_reactor.advance(0)
    assert transport in memory_reactor.writers  # doWrite tears it down


@implementer(IPushProducer)
class Producer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


def test_a_producer_paused_by_a_full_buffer_resumes_once_it_is_sent(
    connection: Connection, memory_reactor: MemoryReactorClock
) -> None:
    transport = connection.transport
    producer = Producer()
    transport.registerProducer(producer, True)
    transport.write(b"x" * (transport.bufferSize + 1))  # over the buffer: paused
    assert producer.events == ["pause"]
    memory_reactor.advance(0)
    assert connection.received(transport.bufferSize + 1) == b"x" * (transport.bufferSize + 1)
    assert producer.events == ["pause", "resume"]
    assert not transport.producerPaused


def test_the_endpoint_gives_tcp_ports_the_transport(turn_writes: TurnWrites) -> None:
    @implementer(IStreamServerEndpoint)
    class Listening:
        def __init__(self, port: object) -> None:
            self.port = port

        def listen(self, factory: object) -> object:
            return succeed(self.port)

    port = tcp.Port(0, Factory.forProtocol(Protocol))
    endpoint = TurnWritesEndpoint(Listening(port), turn_writes)  # type: ignore[arg-type]
    assert verifyObject(IStreamServerEndpoint, endpoint)
    got: list[object] = []
    endpoint.listen(Factory.forProtocol(Protocol)).addCallback(got.append)
    assert got == [port]
    assert port.transport == turn_writes.transport
    other = object()  # not a TCP port (a UNIX socket's, a test's): left as it is
    TurnWritesEndpoint(Listening(other), turn_writes).listen(Factory()).addCallback(got.append)  # type: ignore[arg-type]
    assert got == [port, other]


def test_the_transport_is_a_tcp_server(connection: Connection) -> None:
    assert isinstance(connection.transport, TurnWritesServer)
    assert isinstance(connection.transport, tcp.Server)
    assert connection.transport.getPeer().port == 40000


class Greeter(Protocol):
    """Writes a greeting as soon as it is connected."""

    def connectionMade(self) -> None:
        self.transport.write(b"PING\r\n")  # type: ignore[union-attr]


def test_a_client_connects_the_twisted_way_then_sends_at_the_turns_end(
    turn_writes: TurnWrites, memory_reactor: MemoryReactorClock
) -> None:
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(1)
    listening.settimeout(5)
    factory = ClientFactory.forProtocol(Greeter)
    connector = TurnWritesConnector(
        turn_writes, "127.0.0.1", listening.getsockname()[1], factory, 5, None, memory_reactor
    )
    connector.connect()
    memory_reactor.advance(0)  # the address is resolved and connect() called
    transport = connector.transport
    assert isinstance(transport, TurnWritesClient)
    for _ in range(100):  # connecting waits for writability, as Twisted's does
        if transport.connected:
            break
        assert transport in memory_reactor.writers
        transport.doWrite()  # the connection is ready: doConnect
    assert transport.connected
    accepted, _ = listening.accept()
    accepted.setblocking(False)
    with pytest.raises(BlockingIOError):  # the greeting waits for the end of the turn
        accepted.recv(10)
    assert transport not in memory_reactor.writers
    memory_reactor.advance(0)
    accepted.settimeout(5)
    assert accepted.recv(10) == b"PING\r\n"
    transport.connectionLost(Failure(ConnectionDone()))  # closes its socket
    accepted.close()
    listening.close()


def test_pools_connect_through_a_connecting_reactor_around_a_real_one() -> None:
    memory = MemoryReactorClock()
    assert connecting_reactor(memory) is memory  # tests' reactors record connections
    real = SelectReactor()  # never run
    wrapped = connecting_reactor(real)
    assert isinstance(wrapped, ConnectingReactor)
    assert connecting_reactor(real) is wrapped  # one per reactor: one queue, one call a turn
    assert IReactorTCP.providedBy(wrapped)
    assert IReactorTime.providedBy(wrapped)
    assert wrapped.seconds == real.seconds  # everything else is the reactor's
    connector = wrapped.connectTCP("127.0.0.1", 9, ClientFactory.forProtocol(Protocol), 1)
    assert isinstance(connector, TurnWritesConnector)
    assert connector.reactor is real
    connector.stopConnecting()
    real.waker.connectionLost(None)  # type: ignore[attr-defined]  # its pipe (never run)


@implementer(IPushProducer)
class BrokenProducer(Producer):
    def resumeProducing(self) -> None:
        raise RuntimeError("the producer broke")


def test_an_error_while_sending_tears_that_connection_down_and_the_others_are_sent(
    turn_writes: TurnWrites, memory_reactor: MemoryReactorClock
) -> None:
    broken, fine = Connection(turn_writes, memory_reactor), Connection(turn_writes, memory_reactor)
    transport = broken.transport
    transport.registerProducer(BrokenProducer(), True)
    transport.write(b"x" * (transport.bufferSize + 1))  # paused: resumed once it is sent
    fine.transport.write(b"still sent")
    seen: list[LogEvent] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        memory_reactor.advance(0)
    finally:
        globalLogPublisher.removeObserver(seen.append)
    assert fine.received(10) == b"still sent"
    assert transport.disconnected  # torn down, as the reactor does when doWrite raises
    failures = [event for event in seen if "log_failure" in event]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError)
    broken.close()
    fine.close()


def test_listeners_and_pools_of_one_reactor_share_one_queue() -> None:
    memory = MemoryReactorClock()
    assert turn_writes_of(memory) is turn_writes_of(memory)
    assert turn_writes_of(memory) is not turn_writes_of(MemoryReactorClock())
    real = SelectReactor()  # never run
    assert connecting_reactor(real)._turn_writes is turn_writes_of(real)
    real.waker.connectionLost(None)  # type: ignore[attr-defined]  # its pipe (never run)


# -- file pieces (a memory layer's body sent with sendfile) ---------------------------------


class Body:
    """A body in a sealed memory file, as the memory layer keeps large ones."""

    def __init__(self, data: bytes) -> None:
        self.mapped = MappedBody(data)
        self.reads: list[tuple[int, int]] = []

    def fileno(self) -> int:
        return self.mapped.fileno()

    def read(self, offset: int, size: int) -> bytes:
        self.reads.append((offset, size))  # a copy: what write_file avoids
        return self.mapped.read(offset, size)


class TCPConnection(Connection):
    """A ``TurnWritesServer`` on a loopback TCP connection (``sendfile``, ``MSG_MORE``)."""

    @staticmethod
    def sockets() -> tuple[socket.socket, socket.socket]:
        listening = socket.socket()
        listening.bind(("127.0.0.1", 0))
        listening.listen(1)
        peer = socket.socket()
        # A small window from the start, so that the kernel takes only part of a large write.
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        peer.settimeout(5)
        peer.connect(listening.getsockname())
        ours, _ = listening.accept()
        listening.close()
        return ours, peer

    def drain(self, transport: TurnWritesServer, size: int) -> bytes:
        """
        Read ``size`` bytes, calling ``doWrite`` whenever the socket is writable, as the
        reactor would (bounded: 100,000 rounds of at most 50 ms).
        """
        got = self.pending()
        for _ in range(100_000):
            if len(got) >= size:
                break
            _, writable, _ = select.select([], [transport.socket], [], 0.05)
            if writable:
                transport.doWrite()
            got += self.pending()
        return got


@pytest.fixture
def over_tcp(
    turn_writes: TurnWrites, memory_reactor: MemoryReactorClock
) -> Iterator[TCPConnection]:
    made = TCPConnection(turn_writes, memory_reactor)
    yield made
    made.close()


DATA = bytes(range(256)) * 400  # 100 KiB, every offset distinguishable


def test_a_file_piece_is_sent_between_the_writes_around_it_without_a_copy(
    over_tcp: TCPConnection, memory_reactor: MemoryReactorClock
) -> None:
    transport = over_tcp.transport
    body = Body(DATA)
    transport.write(b"HEAD\r\n")
    transport.write_file(body, 0, len(DATA))
    transport.write(b"NEXT")  # a pipelined response behind it
    assert over_tcp.pending() == b""
    memory_reactor.advance(0)
    assert over_tcp.received(len(DATA) + 10) == b"HEAD\r\n" + DATA + b"NEXT"
    assert body.reads == []  # sent from the file
    assert transport not in memory_reactor.writers
    assert (transport._file, transport._unsent_file, transport._tempDataLen) == (None, None, 0)


def test_a_file_piece_sends_just_its_range(
    over_tcp: TCPConnection, memory_reactor: MemoryReactorClock
) -> None:
    body = Body(DATA)
    over_tcp.transport.write_file(body, 1000, 300)
    memory_reactor.advance(0)
    assert over_tcp.received(300) == DATA[1000:1300]
    assert over_tcp.pending() == b""


def test_what_the_kernel_does_not_take_of_a_file_waits_as_a_file_piece(
    over_tcp: TCPConnection, memory_reactor: MemoryReactorClock
) -> None:
    transport = over_tcp.transport
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    producer = Producer()
    transport.registerProducer(producer, True)
    big = DATA * 4  # 400 KB: far more than the buffers hold
    body = Body(big)
    transport.write(b"HEAD")
    transport.write_file(body, 0, len(big))
    transport.write(b"TAIL")
    memory_reactor.advance(0)
    assert transport._unsent_file is not None  # kept as a file piece, not read into memory
    assert transport in memory_reactor.writers
    assert producer.events == ["pause"]  # the buffer is full: the channel stops reading
    transport.write(b"MORE")  # written while the file waits: after it
    memory_reactor.advance(0)
    got = over_tcp.drain(transport, len(big) + 12)
    assert got == b"HEAD" + big + b"TAILMORE"
    assert body.reads == []
    assert transport._unsent_file is None
    assert transport not in memory_reactor.writers
    assert producer.events == ["pause", "resume"]


def test_a_file_piece_behind_unsent_bytes_keeps_its_place(
    over_tcp: TCPConnection, memory_reactor: MemoryReactorClock
) -> None:
    transport = over_tcp.transport
    first = over_tcp.leave_unsent(1_000_000)
    assert transport.offset < len(transport.dataBuffer)  # left for doWrite
    body = Body(DATA)
    transport.write(b"HEAD")
    transport.write_file(body, 0, len(DATA))
    transport.write(b"TAIL")
    memory_reactor.advance(0)
    assert over_tcp.drain(transport, len(first) + len(DATA) + 8) == first + b"HEAD" + DATA + b"TAIL"
    assert body.reads == []


def test_a_file_piece_keeps_its_place_when_do_write_comes_before_the_turns_end(
    over_tcp: TCPConnection, memory_reactor: MemoryReactorClock
) -> None:
    """The socket drained and became writable in the turn the file piece was written."""
    transport = over_tcp.transport
    first = over_tcp.leave_unsent(100_000)
    assert transport in memory_reactor.writers  # bytes left: waiting for writability
    body = Body(DATA)
    transport.write(b"HEAD")
    transport.write_file(body, 0, len(DATA))
    transport.write(b"NEXT")  # a pipelined response after it
    got = over_tcp.pending()
    transport.doWrite()  # the reactor's writability event, before the turn's end
    memory_reactor.advance(0)
    got += over_tcp.drain(transport, len(first) + len(DATA) + 8 - len(got))
    assert got == first + b"HEAD" + DATA + b"NEXT"
    assert body.reads == []


def test_a_second_file_piece_while_one_waits_is_written_as_a_copy(
    over_tcp: TCPConnection, memory_reactor: MemoryReactorClock
) -> None:
    transport = over_tcp.transport
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big, small = Body(DATA * 4), Body(DATA)
    transport.write_file(big, 0, len(DATA) * 4)
    transport.write_file(small, 5, 10)  # the same turn: one file piece a turn
    memory_reactor.advance(0)
    transport.write_file(small, 20, 10)  # while the first waits
    got = over_tcp.drain(transport, len(DATA) * 4 + 20)
    assert got == DATA * 4 + DATA[5:15] + DATA[20:30]
    assert big.reads == [] and small.reads == [(5, 10), (20, 10)]


def test_closing_after_a_file_piece_sends_it_then_closes(
    over_tcp: TCPConnection, memory_reactor: MemoryReactorClock
) -> None:
    transport = over_tcp.transport
    body = Body(DATA)
    transport.write(b"HEAD")
    transport.write_file(body, 0, len(DATA))
    transport.loseConnection()
    memory_reactor.advance(0)
    assert transport in memory_reactor.writers  # a closing connection goes Twisted's way
    assert transport._unsent_file is not None
    why = None
    for _ in range(1000):
        why = transport.doWrite()
        if why is not None:
            break
    assert isinstance(why, ConnectionDone)
    transport.connectionLost(Failure(why))
    assert over_tcp.received(len(DATA) + 4) == b"HEAD" + DATA
    assert over_tcp.peer.recv(10) == b""
    assert body.reads == []


def test_a_lost_connection_lets_go_of_its_file_pieces(
    over_tcp: TCPConnection, memory_reactor: MemoryReactorClock
) -> None:
    transport = over_tcp.transport
    transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    body = Body(DATA * 4)
    transport.write_file(body, 0, len(DATA) * 4)
    memory_reactor.advance(0)
    assert transport._unsent_file is not None
    transport.connectionLost(Failure(ConnectionDone()))
    assert transport._unsent_file is None and transport._file is None


def test_an_aborted_connection_sends_no_file_piece(
    over_tcp: TCPConnection, memory_reactor: MemoryReactorClock
) -> None:
    transport = over_tcp.transport
    transport.write_file(Body(DATA), 0, len(DATA))
    transport.abortConnection()
    memory_reactor.advance(0)
    assert transport._file is None
    with pytest.raises(ConnectionResetError):  # reset, with nothing sent ahead of it
        over_tcp.peer.recv(10)


def test_a_file_piece_to_a_reset_peer_is_left_to_do_write(
    over_tcp: TCPConnection, memory_reactor: MemoryReactorClock
) -> None:
    over_tcp.peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    over_tcp.peer.close()  # a reset
    transport = over_tcp.transport
    for _ in range(100):  # until the reset has arrived: a send fails
        try:
            transport.socket.send(b"probe")
        except OSError:
            break
    transport.write_file(Body(DATA), 0, len(DATA))
    memory_reactor.advance(0)
    assert transport in memory_reactor.writers
    assert isinstance(transport.doWrite(), ConnectionLost)  # torn down as Twisted would


def test_a_transport_written_to_this_turn_says_it_sends_at_the_turns_end(
    connection: Connection, memory_reactor: MemoryReactorClock
) -> None:
    assert not sending_at_turn_end(connection.transport)
    connection.transport.write(b"ping")
    assert sending_at_turn_end(connection.transport)
    memory_reactor.advance(0)
    assert not sending_at_turn_end(connection.transport)
    assert connection.received(4) == b"ping"
    assert not sending_at_turn_end(StringTransport())
    assert not sending_at_turn_end(None)
